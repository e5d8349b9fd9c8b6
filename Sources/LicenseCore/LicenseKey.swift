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

  public static func < (lhs: Slot, rhs: Slot) -> Bool {
    allCases.firstIndex(of: lhs)! < allCases.firstIndex(of: rhs)!
  }
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
public struct LicenseKey: Sendable, Equatable {
  /// The key exactly as issued (one line, no white space).
  public var compact: String
  public var kid: String
  public var alg: String
  public var claims: LicenseClaims

  public var serial: String { claims.serial }
  public var slot: Slot { claims.slot }

  /// Two keys are the same key when one issuer gave them the same serial.
  public func isSameKey(as other: LicenseKey) -> Bool {
    claims.issuer == other.claims.issuer && claims.serial == other.claims.serial
  }
}
