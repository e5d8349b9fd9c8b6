import SimpleJSON

/// Blocklists (rule B1, contract §1 "Blocklists"): an issuer's signed list of the keys it
/// issued and has blocked. A JWS like a key, header `"typ":"license-blocklist+jwt"`, with
/// the claims `iss`, `typ` (`license-blocklist`), `seq`, `iat`, `product` and `blocked`
/// (every key of the issuer blocked so far: a list replaces the issuer's previous one).

/// One blocked key of a list.
public struct BlockedEntry: Sendable, Equatable, Codable {
  /// The key's serial (`jti`), of the list's own issuer.
  public var serial: String
  /// When the issuer blocked it.
  public var since: Timestamp
  /// Why, in the issuer's words (bounded).
  public var reason: String

  public init(serial: String, since: Timestamp, reason: String) {
    self.serial = serial
    self.since = since
    self.reason = reason
  }
}

/// A blocklist, read and (by ``BlocklistParser/verify(_:trust:)``) verified.
public struct Blocklist: Sendable, Equatable {
  public static let headerType = "license-blocklist+jwt"
  public static let claimType = "license-blocklist"

  /// The list as it was signed (kept, so that it can be checked again after a restart).
  public var compact: String
  /// The issuer key that signed it.
  public var kid: String
  /// The issuer (`iss`): the list blocks only keys whose `iss` is this.
  public var issuer: String
  /// Increasing with each list the issuer publishes.
  public var sequence: Int
  public var issuedAt: Timestamp
  public var product: String
  public var entries: [BlockedEntry]

  public init(
    compact: String, kid: String, issuer: String, sequence: Int, issuedAt: Timestamp, product: String,
    entries: [BlockedEntry]
  ) {
    self.compact = compact
    self.kid = kid
    self.issuer = issuer
    self.sequence = sequence
    self.issuedAt = issuedAt
    self.product = product
    self.entries = entries
  }

  /// The entry for `key`, when this list blocks it: a key of the list's own issuer.
  public func entry(for key: LicenseKey) -> BlockedEntry? {
    guard key.claims.issuer == issuer else { return nil }
    return entries.first { $0.serial == key.serial }
  }

  /// The claims as JSON, in a fixed order (for signing).
  var claimsJSON: String {
    let blocked = entries.map {
      "{\"serial\":\(jsonString($0.serial)),\"since\":\($0.since.jsonSeconds),\"reason\":\(jsonString($0.reason))}"
    }
    return
      "{\"iss\":\(jsonString(issuer)),\"typ\":\(jsonString(Self.claimType)),\"seq\":\(sequence),\"iat\":\(issuedAt.jsonSeconds),\"product\":\(jsonString(product)),\"blocked\":[\(blocked.joined(separator: ","))]}"
  }
}

/// Why a blocklist could not be read: the key defects of its JWS, or a claim of its own.
public enum BlocklistParser {
  /// The longest list read: far above any issuer's blocked keys, a bound on what enters.
  public static let maximumLength = 1 << 20
  /// The most entries a list may have.
  public static let maximumEntries = 10_000
  /// The longest reason kept.
  public static let maximumReasonLength = 300

  /// Reads a blocklist and checks its signature against `trust`, then its claims; the
  /// signature is checked before any claim is believed.
  public static func verify(_ text: String, trust: TrustStore) throws(KeyDefect) -> Blocklist {
    guard text.utf8.count <= maximumLength + 4096 else {
      throw .malformed("the blocklist is longer than \(maximumLength) bytes")
    }
    let parts = try KeyParser.split(text)
    guard parts.kid.count <= KeyParser.maximumClaimLength else {
      throw .claimTooLong("kid", limit: KeyParser.maximumClaimLength)
    }
    guard let issuerKey = trust.keys[parts.kid] else { throw .untrustedIssuer(kid: parts.kid) }
    guard
      Ed25519.verify(signature: parts.signature, message: parts.signingInput, publicKey: issuerKey.publicKey)
    else { throw .badSignature }
    return try read(parts)
  }

  /// Reads a blocklist without checking its signature (`license-keytool inspect` without
  /// a trust directory).
  public static func parseUnverified(_ text: String) throws(KeyDefect) -> Blocklist {
    guard text.utf8.count <= maximumLength + 4096 else {
      throw .malformed("the blocklist is longer than \(maximumLength) bytes")
    }
    return try read(try KeyParser.split(text))
  }

  /// Whether `text` is a blocklist rather than a key (by its header's `typ`), when it can be
  /// read at all.
  public static func looksLikeBlocklist(_ text: String) -> Bool {
    (try? KeyParser.split(text))?.typ == Blocklist.headerType
  }

  private static func read(_ parts: KeyParser.Parts) throws(KeyDefect) -> Blocklist {
    guard parts.typ == Blocklist.headerType else {
      throw .malformed(
        "the header's typ is \(parts.typ.map { "\"\($0)\"" } ?? "absent"), not \"\(Blocklist.headerType)\": not a blocklist"
      )
    }
    let payload = parts.payload
    func string(_ name: String) throws(KeyDefect) -> String {
      guard let value = payload[name], value != .null else { throw .missingClaim(name) }
      guard case .string(let text) = value, !text.isEmpty else {
        throw .illTypedClaim(name, expected: "a non-empty string")
      }
      guard text.count <= KeyParser.maximumClaimLength else {
        throw .claimTooLong(name, limit: KeyParser.maximumClaimLength)
      }
      return text
    }
    func instant(_ value: JSONValue?, _ name: String) throws(KeyDefect) -> Timestamp {
      guard let value, value != .null else { throw .missingClaim(name) }
      guard case .number(let seconds) = value, let time = Timestamp(secondsSinceEpoch: seconds) else {
        throw .illTypedClaim(name, expected: "a number of seconds since the epoch")
      }
      return time
    }
    let issuer = try string("iss")
    guard try string("typ") == Blocklist.claimType else {
      throw .illTypedClaim("typ", expected: "\"\(Blocklist.claimType)\"")
    }
    guard let seqValue = payload["seq"], seqValue != .null else { throw .missingClaim("seq") }
    guard case .number(let seq) = seqValue, seq.rounded() == seq, seq >= 0, seq < 1e15 else {
      throw .illTypedClaim("seq", expected: "an integer of 0 or more")
    }
    let issuedAt = try instant(payload["iat"], "iat")
    let product = try string("product")
    guard let blockedValue = payload["blocked"], blockedValue != .null else { throw .missingClaim("blocked") }
    guard case .array(let items) = blockedValue else {
      throw .illTypedClaim("blocked", expected: "an array of {serial, since, reason}")
    }
    guard items.count <= maximumEntries else {
      throw .malformed("the blocklist has \(items.count) entries; at most \(maximumEntries) are read")
    }
    var entries: [BlockedEntry] = []
    for (index, item) in items.enumerated() {
      let name = "blocked[\(index)]"
      guard case .object(let entry) = item else {
        throw .illTypedClaim(name, expected: "an object {serial, since, reason}")
      }
      guard case .string(let serial)? = entry["serial"], !serial.isEmpty else {
        throw .illTypedClaim(name + ".serial", expected: "a non-empty string")
      }
      guard serial.count <= KeyParser.maximumClaimLength else {
        throw .claimTooLong(name + ".serial", limit: KeyParser.maximumClaimLength)
      }
      let since = try instant(entry["since"], name + ".since")
      var reason = ""
      if let value = entry["reason"], value != .null {
        guard case .string(let text) = value else {
          throw .illTypedClaim(name + ".reason", expected: "a string")
        }
        reason = ExternalText.bounded(text, limit: maximumReasonLength)
      }
      entries.append(BlockedEntry(serial: serial, since: since, reason: reason))
    }
    return Blocklist(
      compact: parts.compact, kid: parts.kid, issuer: issuer, sequence: Int(seq), issuedAt: issuedAt,
      product: product, entries: entries)
  }

  /// Signs a blocklist with the issuer's private JWK (`license-keytool blocklist`, tests).
  /// `list.compact` and `list.kid` are ignored (they come from the signature).
  public static func sign(_ list: Blocklist, with issuer: JWK, alg: String = "EdDSA") throws(KeyDefect)
    -> String
  {
    guard KeyParser.acceptedAlgorithms.contains(alg) else { throw .unsupportedAlg(alg) }
    guard let seed = issuer.seed else { throw .malformed("the signer JWK has no private part \"d\"") }
    let header =
      "{\"alg\":\(jsonString(alg)),\"typ\":\(jsonString(Blocklist.headerType)),\"kid\":\(jsonString(issuer.kid))}"
    let signingInput = Base64URL.encode(header.utf8) + "." + Base64URL.encode(list.claimsJSON.utf8)
    guard let signature = Ed25519.sign(message: Array(signingInput.utf8), seed: seed) else {
      throw .malformed("the signer JWK's private key is unusable")
    }
    return signingInput + "." + Base64URL.encode(signature)
  }
}
