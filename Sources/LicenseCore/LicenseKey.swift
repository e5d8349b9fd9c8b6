import SimpleJSON

/// The licensing scheme a key counts by (contract §1, `scheme`).
public enum Scheme: String, Sendable, Codable, CaseIterable {
  case vmCount = "vm-count"
  case processors
  case cores
}

/// The guest OS type of a `vm-count` key (`os_type`).
public enum OSType: String, Sendable, Codable, CaseIterable {
  case server
  case workstation
}

/// `standard` or `enterprise`.
public enum Edition: String, Sendable, Codable, CaseIterable {
  case standard
  case enterprise
}

/// `commercial`, `trial` or `subscription`.
public enum LicenseType: String, Sendable, Codable, CaseIterable {
  case commercial
  case trial
  case subscription
}

/// Where a key lives on the SVM: the OS type for `vm-count` keys, else the scheme.
/// Each slot holds at most one active and one reserve key.
public enum Slot: String, Sendable, Codable, CaseIterable, Comparable {
  case server
  case workstation
  case processors
  case cores

  public var scheme: Scheme {
    switch self {
    case .server, .workstation: return .vmCount
    case .processors: return .processors
    case .cores: return .cores
    }
  }

  /// The slot's place in the fixed order (`server`, `workstation`, `processors`, `cores`).
  var ordinal: Int {
    switch self {
    case .server: return 0
    case .workstation: return 1
    case .processors: return 2
    case .cores: return 3
    }
  }

  public static func < (lhs: Slot, rhs: Slot) -> Bool { lhs.ordinal < rhs.ordinal }

  /// Hashed by its place, not by its raw string (the state's slot dictionary is read on
  /// every decision).
  public func hash(into hasher: inout Hasher) { hasher.combine(ordinal) }
}

/// Whether a key is added as the slot's active key or as its reserve.
public enum Role: String, Sendable, Codable, CaseIterable {
  case active
  case reserve
}

/// The claims of a licence key, decoded and checked for shape (contract §1).
public struct LicenseClaims: Sendable, Equatable {
  public var issuer: String
  /// `jti`: the serial number, unique per issuer.
  public var serial: String
  public var issuedAt: Timestamp
  public var notBefore: Timestamp
  public var expiresAt: Timestamp
  public var product: String
  public var edition: Edition
  public var scheme: Scheme
  /// Present exactly when `scheme` is `vm-count`.
  public var osType: OSType?
  public var licenseType: LicenseType
  public var units: Int

  public init(
    issuer: String, serial: String, issuedAt: Timestamp, notBefore: Timestamp, expiresAt: Timestamp,
    product: String, edition: Edition, scheme: Scheme, osType: OSType?, licenseType: LicenseType,
    units: Int
  ) {
    self.issuer = issuer
    self.serial = serial
    self.issuedAt = issuedAt
    self.notBefore = notBefore
    self.expiresAt = expiresAt
    self.product = product
    self.edition = edition
    self.scheme = scheme
    self.osType = osType
    self.licenseType = licenseType
    self.units = units
  }

  /// The slot this key belongs in.
  public var slot: Slot {
    switch scheme {
    case .vmCount: return osType == .workstation ? .workstation : .server
    case .processors: return .processors
    case .cores: return .cores
    }
  }

  /// `vm-count/server`, `processors`: the type as R2 compares it.
  public var typeDescription: String {
    osType.map { "\(scheme.rawValue)/\($0.rawValue)" } ?? scheme.rawValue
  }

  /// The claims as a JSON object with a stable key order (for signing and for `--json`).
  public var json: String {
    var fields: [(String, String)] = [
      ("iss", jsonString(issuer)), ("jti", jsonString(serial)), ("iat", issuedAt.jsonSeconds),
      ("nbf", notBefore.jsonSeconds), ("exp", expiresAt.jsonSeconds), ("product", jsonString(product)),
      ("edition", jsonString(edition.rawValue)), ("scheme", jsonString(scheme.rawValue)),
    ]
    if let osType { fields.append(("os_type", jsonString(osType.rawValue))) }
    fields.append(("license_type", jsonString(licenseType.rawValue)))
    fields.append(("units", String(units)))
    return "{" + fields.map { "\(jsonString($0.0)):\($0.1)" }.joined(separator: ",") + "}"
  }
}

/// A licence key: the compact JWS as received, its header's `kid` and `alg`, and its claims.
///
/// A `LicenseKey` value has always passed the shape checks of ``KeyParser``; whether its
/// signature was verified depends on how it was made (``KeyParser/verify(_:trust:)``).
///
/// Immutable, and held by reference inside: the state holds several keys per slot and the
/// engine copies slots on every decision, so a key copies as one pointer, not as its text
/// and claims (measured with the fleet simulation: `license-agent-bench fleet`).
public struct LicenseKey: Sendable, Equatable {
  private final class Storage: Sendable {
    let compact: String
    let kid: String
    let alg: String
    let claims: LicenseClaims
    init(compact: String, kid: String, alg: String, claims: LicenseClaims) {
      self.compact = compact
      self.kid = kid
      self.alg = alg
      self.claims = claims
    }
  }
  private let storage: Storage

  public init(compact: String, kid: String, alg: String, claims: LicenseClaims) {
    storage = Storage(compact: compact, kid: kid, alg: alg, claims: claims)
  }

  /// The key exactly as issued (one line, no white space).
  public var compact: String { storage.compact }
  public var kid: String { storage.kid }
  public var alg: String { storage.alg }
  public var claims: LicenseClaims { storage.claims }

  public static func == (lhs: LicenseKey, rhs: LicenseKey) -> Bool {
    lhs.storage === rhs.storage
      || (lhs.compact == rhs.compact && lhs.kid == rhs.kid && lhs.alg == rhs.alg && lhs.claims == rhs.claims)
  }

  public var serial: String { claims.serial }
  public var slot: Slot { claims.slot }

  /// Two keys are the same key when one issuer gave them the same serial.
  public func isSameKey(as other: LicenseKey) -> Bool {
    claims.issuer == other.claims.issuer && claims.serial == other.claims.serial
  }
}
