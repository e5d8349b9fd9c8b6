import SimpleJSON

/// Why a key could not be read or verified. Each case has a stable reason string,
/// documented in the README ("Key check reasons"); all but ``untrustedIssuer`` are reported
/// under the error code `invalid_key`.
public enum KeyDefect: Error, Equatable, Sendable, CustomStringConvertible {
  /// Not three base64url parts, or a header or payload that is not a JSON object.
  case malformed(String)
  /// `alg` other than `EdDSA` or `Ed25519` (`none`, `HS256`, ...).
  case unsupportedAlg(String)
  /// The header's `kid` names no key of the trust directory.
  case untrustedIssuer(kid: String)
  /// The signature does not verify with the issuer's key (tampered or re-signed).
  case badSignature
  case missingClaim(String)
  case illTypedClaim(String, expected: String)
  case unknownEnumValue(claim: String, value: String)
  /// `os_type` present on a `processors`/`cores` key.
  case osTypeUnexpected(scheme: String)
  /// `os_type` absent on a `vm-count` key.
  case osTypeMissing
  case nonPositiveUnits(Int)
  case expiryNotAfterNotBefore
  /// A string claim (or the header's `kid`) longer than ``KeyParser/maximumClaimLength``:
  /// it would be stored, shown and logged with every status.
  case claimTooLong(String, limit: Int)

  /// The machine-readable reason, stable across versions.
  public var reason: String {
    switch self {
    case .malformed: return "malformed"
    case .unsupportedAlg: return "unsupported_alg"
    case .untrustedIssuer: return "untrusted_issuer"
    case .badSignature: return "bad_signature"
    case .missingClaim: return "missing_claim"
    case .illTypedClaim: return "ill_typed_claim"
    case .unknownEnumValue: return "unknown_enum_value"
    case .osTypeUnexpected: return "os_type_unexpected"
    case .osTypeMissing: return "os_type_missing"
    case .nonPositiveUnits: return "non_positive_units"
    case .expiryNotAfterNotBefore: return "exp_not_after_nbf"
    case .claimTooLong: return "claim_too_long"
    }
  }

  /// The public error code: `untrusted_issuer`, or `invalid_key` for every other defect.
  public var code: String {
    if case .untrustedIssuer = self { return "untrusted_issuer" }
    return "invalid_key"
  }

  public var description: String {
    switch self {
    case .malformed(let detail):
      return "the key is not a well-formed JWS (\(detail)); copy the whole one-line key again"
    case .unsupportedAlg(let alg):
      return
        "the key is signed with alg \"\(ExternalText.bounded(alg, limit: 32))\"; only EdDSA/Ed25519 keys are accepted"
    case .untrustedIssuer(let kid):
      return
        "the key was signed by issuer key \"\(ExternalText.bounded(kid, limit: 64))\", which is not in the trust directory; install that issuer's public JWK in trusted-issuers/ if you trust it"
    case .badSignature:
      return
        "the signature does not match the key's content; the key was altered or re-signed, ask the vendor for an intact copy"
    case .missingClaim(let name):
      return "the claim \"\(name)\" is missing; the issuer produced an incomplete key"
    case .illTypedClaim(let name, let expected):
      return "the claim \"\(name)\" must be \(expected)"
    case .unknownEnumValue(let claim, let value):
      return "the claim \"\(claim)\" has the unknown value \"\(value)\""
    case .osTypeUnexpected(let scheme):
      return "a \(scheme) key must not carry \"os_type\""
    case .osTypeMissing:
      return "a vm-count key must carry \"os_type\" (server or workstation)"
    case .nonPositiveUnits(let units):
      return "\"units\" is \(units); it must be at least 1"
    case .expiryNotAfterNotBefore:
      return "\"exp\" is not after \"nbf\"; the key is never valid"
    case .claimTooLong(let name, let limit):
      return "the claim \"\(name)\" is longer than \(limit) bytes; no real key has one that long"
    }
  }
}

/// The issuers whose keys the agent accepts: public JWKs by `kid`.
public struct TrustStore: Sendable, Equatable {
  public var keys: [String: JWK]

  public init(_ keys: [JWK] = []) {
    self.keys = Dictionary(keys.map { ($0.kid, $0) }, uniquingKeysWith: { first, _ in first })
  }
}

/// Reads and verifies licence keys (contract §1): compact JWS, EdDSA/Ed25519.
public enum KeyParser {
  /// The signature algorithms that mean Ed25519 (RFC 8037 and its successor RFC 9864).
  public static let acceptedAlgorithms: Set<String> = ["EdDSA", "Ed25519"]

  /// The longest key text read (a real one is under a kilobyte): a longer one is malformed
  /// before anything in it is decoded.
  public static let maximumKeyLength = 16 << 10

  /// The longest string claim kept (`iss`, `jti`, `product`) and the longest `kid`: text
  /// from outside is bounded where it enters, since the state keeps it and every status
  /// shows it.
  public static let maximumClaimLength = 256

  /// Reads a key and checks its signature against `trust`, then its claims.
  /// The signature is checked before any claim is believed.
  ///
  /// This is where keys enter (an operator's, a server's): text from outside is bounded
  /// here. A key text over ``maximumKeyLength`` is malformed before anything in it is
  /// decoded, and a string claim or `kid` over ``maximumClaimLength`` is `claim_too_long`.
  /// (Keys already accepted, read back from the state, are not refused by these bounds.)
  public static func verify(_ text: String, trust: TrustStore) throws(KeyDefect) -> LicenseKey {
    guard text.utf8.count <= maximumKeyLength + 4096 else {
      throw .malformed("the key is longer than \(maximumKeyLength) bytes")
    }
    let parts = try split(text)
    guard parts.compact.utf8.count <= maximumKeyLength else {
      throw .malformed("the key is longer than \(maximumKeyLength) bytes")
    }
    guard parts.kid.utf8.count <= maximumClaimLength else {
      throw .claimTooLong("kid", limit: maximumClaimLength)
    }
    guard let issuerKey = trust.keys[parts.kid] else { throw .untrustedIssuer(kid: parts.kid) }
    guard
      Ed25519.verify(signature: parts.signature, message: parts.signingInput, publicKey: issuerKey.publicKey)
    else { throw .badSignature }
    let claims = try claims(parts.payload)
    for (name, value) in [("iss", claims.issuer), ("jti", claims.serial), ("product", claims.product)]
    where value.utf8.count > maximumClaimLength {
      throw .claimTooLong(name, limit: maximumClaimLength)
    }
    return LicenseKey(compact: parts.compact, kid: parts.kid, alg: parts.alg, claims: claims)
  }

  /// Reads a key and checks its shape and claims without checking the signature: for keys
  /// already accepted (reloaded from the state file) and for `license-keytool inspect`
  /// without a trust directory.
  public static func parseUnverified(_ text: String) throws(KeyDefect) -> LicenseKey {
    let parts = try split(text)
    return LicenseKey(
      compact: parts.compact, kid: parts.kid, alg: parts.alg, claims: try claims(parts.payload))
  }

  /// The serial (`jti`) of a key that may be invalid, when it can be read at all: for the
  /// `LICENSE_SERIAL` field of a rejection.
  public static func bestEffortSerial(_ text: String) -> String? {
    let pieces = text.trimmingWhitespace().split(separator: ".", omittingEmptySubsequences: false)
    guard pieces.count == 3, let bytes = Base64URL.decode(pieces[1]),
      case .object(let payload)? = JSONValue.parse(bytes), case .string(let serial)? = payload["jti"]
    else { return nil }
    return serial
  }

  struct Parts {
    var compact: String
    var alg: String
    var kid: String
    /// The header's `typ`, when it has one (a blocklist's is `license-blocklist+jwt`).
    var typ: String?
    var payload: [String: JSONValue]
    var signingInput: [UInt8]
    var signature: [UInt8]
  }

  static func split(_ text: String) throws(KeyDefect) -> Parts {
    let compact = text.trimmingWhitespace()
    guard !compact.isEmpty else { throw .malformed("the key is empty") }
    let pieces = compact.split(separator: ".", omittingEmptySubsequences: false)
    guard pieces.count == 3 else {
      throw .malformed("expected 3 dot-separated parts, found \(pieces.count)")
    }
    guard let headerBytes = Base64URL.decode(pieces[0]) else {
      throw .malformed("the header is not base64url")
    }
    guard case .object(let header)? = JSONValue.parse(headerBytes) else {
      throw .malformed("the header is not a JSON object")
    }
    guard case .string(let alg)? = header["alg"] else { throw .malformed("the header has no \"alg\"") }
    guard acceptedAlgorithms.contains(alg) else { throw .unsupportedAlg(alg) }
    if header["crit"] != nil { throw .malformed("the header lists critical extensions (\"crit\")") }
    guard case .string(let kid)? = header["kid"], !kid.isEmpty else {
      throw .malformed("the header has no \"kid\" naming the issuer key")
    }
    guard let payloadBytes = Base64URL.decode(pieces[1]) else {
      throw .malformed("the payload is not base64url")
    }
    guard case .object(let payload)? = JSONValue.parse(payloadBytes) else {
      throw .malformed("the payload is not a JSON object")
    }
    guard let signature = Base64URL.decode(pieces[2]), signature.count == Ed25519.signatureLength else {
      throw .malformed("the signature is not 64 base64url-encoded bytes")
    }
    let signingInput = Array(compact.utf8.prefix(pieces[0].utf8.count + 1 + pieces[1].utf8.count))
    return Parts(
      compact: compact, alg: alg, kid: kid, typ: header["typ"]?.stringValue, payload: payload,
      signingInput: signingInput, signature: signature)
  }

  private static func claims(_ payload: [String: JSONValue]) throws(KeyDefect) -> LicenseClaims {
    func value(_ name: String) throws(KeyDefect) -> JSONValue {
      guard let value = payload[name], value != .null else { throw .missingClaim(name) }
      return value
    }
    func string(_ name: String) throws(KeyDefect) -> String {
      guard case .string(let text) = try value(name), !text.isEmpty else {
        throw .illTypedClaim(name, expected: "a non-empty string")
      }
      return text
    }
    func instant(_ name: String) throws(KeyDefect) -> Timestamp {
      guard case .number(let seconds) = try value(name), let time = Timestamp(secondsSinceEpoch: seconds)
      else {
        throw .illTypedClaim(name, expected: "a number of seconds since the epoch")
      }
      return time
    }
    func choice<E: RawRepresentable<String>>(_ name: String, _: E.Type) throws(KeyDefect) -> E {
      let text = try string(name)
      guard let parsed = E(rawValue: text) else { throw .unknownEnumValue(claim: name, value: text) }
      return parsed
    }

    let issuer = try string("iss")
    let serial = try string("jti")
    let issuedAt = try instant("iat")
    let notBefore = try instant("nbf")
    let expiresAt = try instant("exp")
    let product = try string("product")
    let edition = try choice("edition", Edition.self)
    let scheme = try choice("scheme", Scheme.self)
    let licenseType = try choice("license_type", LicenseType.self)
    guard case .number(let unitsValue) = try value("units"), unitsValue.rounded() == unitsValue,
      abs(unitsValue) < 1e15
    else { throw .illTypedClaim("units", expected: "an integer") }
    let units = Int(unitsValue)

    var osType: OSType?
    if let raw = payload["os_type"], raw != .null {
      guard scheme == .vmCount else { throw .osTypeUnexpected(scheme: scheme.rawValue) }
      osType = try choice("os_type", OSType.self)
    } else if scheme == .vmCount {
      throw .osTypeMissing
    }
    guard units > 0 else { throw .nonPositiveUnits(units) }
    guard expiresAt > notBefore else { throw .expiryNotAfterNotBefore }
    return LicenseClaims(
      issuer: issuer, serial: serial, issuedAt: issuedAt, notBefore: notBefore, expiresAt: expiresAt,
      product: product, edition: edition, scheme: scheme, osType: osType, licenseType: licenseType,
      units: units)
  }

  /// Signs `claims` into a compact JWS with the issuer's private JWK (for `license-keytool`
  /// and tests). Throws when the JWK has no private part.
  public static func sign(_ claims: LicenseClaims, with issuer: JWK, alg: String = "EdDSA") throws(KeyDefect)
    -> String
  {
    guard acceptedAlgorithms.contains(alg) else { throw .unsupportedAlg(alg) }
    guard let seed = issuer.seed else { throw .malformed("the signer JWK has no private part \"d\"") }
    let header = "{\"alg\":\(jsonString(alg)),\"typ\":\"JWT\",\"kid\":\(jsonString(issuer.kid))}"
    let signingInput = Base64URL.encode(header.utf8) + "." + Base64URL.encode(claims.json.utf8)
    guard let signature = Ed25519.sign(message: Array(signingInput.utf8), seed: seed) else {
      throw .malformed("the signer JWK's private key is unusable")
    }
    return signingInput + "." + Base64URL.encode(signature)
  }
}

extension String {
  /// The string without leading and trailing spaces, tabs and line breaks.
  func trimmingWhitespace() -> String {
    let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == "\r" }
    guard let start = firstIndex(where: { !isSpace($0) }), let end = lastIndex(where: { !isSpace($0) }) else {
      return ""
    }
    return String(self[start...end])
  }
}
