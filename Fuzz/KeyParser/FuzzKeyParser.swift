import FuzzSupport
import LicenseCore

/// libFuzzer target for the key parser (`Fuzz/README.md`): any bytes as a key file, read
/// with and without a trust store. Properties besides not crashing: a key that verifies
/// also parses unverified to the same claims, and its validity window is not empty.
let fuzzIssuer = JWK(kid: "fuzz-issuer", publicKey: Ed25519.publicKey(seed: fuzzSeed)!, seed: fuzzSeed)
/// A fixed issuer, so that seeds in the corpus can be validly signed keys.
var fuzzSeed: [UInt8] { Array(repeating: 7, count: Ed25519.seedLength) }

func exercise(_ bytes: [UInt8]) {
  let text = String(decoding: bytes, as: UTF8.self)
  let trust = TrustStore([JWK(kid: fuzzIssuer.kid, publicKey: fuzzIssuer.publicKey)])
  let unverified = try? KeyParser.parseUnverified(text)
  _ = KeyParser.bestEffortSerial(text)
  if let verified = try? KeyParser.verify(text, trust: trust) {
    precondition(unverified?.claims == verified.claims, "verify and parseUnverified disagree")
    precondition(verified.claims.notBefore < verified.claims.expiresAt, "an empty validity window passed")
  }
}

@main struct FuzzTarget {
  static func main() { fuzzMain(exercise) }
}
