import FuzzSupport
import LicenseCore

/// libFuzzer target for the key parser (`Fuzz/README.md`): any bytes as a key file, read
/// with and without a trust store, and as a blocklist (rule B1), which shares its JWS
/// reader. Properties besides not crashing: a key that verifies also parses unverified to
/// the same claims, and its validity window is not empty; a list that verifies parses
/// unverified to the same list, within its bounds.
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
  let unverifiedList = try? BlocklistParser.parseUnverified(text)
  if let list = try? BlocklistParser.verify(text, trust: trust) {
    precondition(unverifiedList == list, "a blocklist: verify and parseUnverified disagree")
    precondition(list.entries.count <= BlocklistParser.maximumEntries, "a blocklist over its bound passed")
    precondition(
      list.entries.allSatisfy { $0.reason.count <= BlocklistParser.maximumReasonLength },
      "a reason over its bound was kept")
  }
}

@main struct FuzzTarget {
  static func main() { fuzzMain(exercise) }
}
