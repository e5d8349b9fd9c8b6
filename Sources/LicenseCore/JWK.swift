import FoundationEssentials
import SimpleJSON

/// An Ed25519 JSON Web Key (RFC 8037: `kty` `OKP`, `crv` `Ed25519`), public or private.
///
/// Trusted issuers are public JWKs in the trust directory; `license-keytool` keeps an
/// issuer's private JWK (with `d`, the 32-byte seed) to sign keys in labs and tests.
public struct JWK: Sendable, Equatable {
  public var kid: String
  public var publicKey: [UInt8]
  /// The private seed, present only in a private JWK.
  public var seed: [UInt8]?

  public init(kid: String, publicKey: [UInt8], seed: [UInt8]? = nil) {
    self.kid = kid
    self.publicKey = publicKey
    self.seed = seed
  }

  /// A new private key with a random seed.
  public static func generate(kid: String) -> JWK {
    let seed = Ed25519.randomSeed()
    // A 32-byte seed always yields a key pair.
    return JWK(kid: kid, publicKey: Ed25519.publicKey(seed: seed)!, seed: seed)
  }

  /// Why a JWK file was refused, in words that name the field.
  public struct Problem: Error, Equatable, CustomStringConvertible, Sendable {
    public var description: String
    init(_ description: String) { self.description = description }
  }

  /// Parses a JWK document. A private JWK's `x` must match its `d`.
  public init(json: Data) throws(Problem) {
    guard let object = JSONValue.parse(json)?.objectValue else {
      throw Problem("not a JSON object")
    }
    guard object["kty"]?.stringValue == "OKP" else { throw Problem("\"kty\" must be \"OKP\"") }
    guard object["crv"]?.stringValue == "Ed25519" else { throw Problem("\"crv\" must be \"Ed25519\"") }
    guard let kid = object["kid"]?.stringValue, !kid.isEmpty else {
      throw Problem("\"kid\" is missing or empty")
    }
    guard let x = object["x"]?.stringValue, let publicKey = Base64URL.decode(x),
      publicKey.count == Ed25519.publicKeyLength
    else { throw Problem("\"x\" must be a 32-byte base64url public key") }
    if let alg = object["alg"]?.stringValue, alg != "EdDSA", alg != "Ed25519" {
      throw Problem("\"alg\" is \"\(alg)\"; an issuer key must be EdDSA or Ed25519")
    }
    var seed: [UInt8]?
    if let d = object["d"] {
      guard let text = d.stringValue, let bytes = Base64URL.decode(text), bytes.count == Ed25519.seedLength
      else { throw Problem("\"d\" must be a 32-byte base64url private key") }
      guard Ed25519.publicKey(seed: bytes) == publicKey else {
        throw Problem("\"x\" is not the public key of \"d\"")
      }
      seed = bytes
    }
    self.init(kid: kid, publicKey: publicKey, seed: seed)
  }

  /// The public JWK, as written to `NAME.jwk` for the trust directory.
  public var publicJSON: String { json(includingPrivate: false) }

  /// The private JWK (`d` included), as written to `NAME.private.jwk`.
  public var privateJSON: String { json(includingPrivate: true) }

  private func json(includingPrivate: Bool) -> String {
    var fields = [
      ("kty", "OKP"), ("crv", "Ed25519"), ("kid", kid), ("alg", "Ed25519"), ("use", "sig"),
      ("x", Base64URL.encode(publicKey)),
    ]
    if includingPrivate, let seed { fields.append(("d", Base64URL.encode(seed))) }
    return "{" + fields.map { "\(jsonString($0.0)):\(jsonString($0.1))" }.joined(separator: ",") + "}\n"
  }
}
