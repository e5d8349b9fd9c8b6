import Foundation
import LicenseCore
import LicenseTestSupport
import SimpleJSON
import Testing

/// Rule B1, the format (contract §1 "Blocklists"): read, verified and bounded like keys.
@Suite struct BlocklistTests {
  let issuer = TestIssuer(kid: "vendor")
  let t0 = TestIssuer.t0

  func list(_ entries: [BlockedEntry], seq: Int = 1, iss: String = "vendor") -> Blocklist {
    Blocklist(
      compact: "", kid: issuer.jwk.kid, issuer: iss, sequence: seq, issuedAt: t0, product: "svm-protection",
      entries: entries)
  }

  /// A JWS of `claims` (raw JSON) with the blocklist header, signed by the test issuer.
  func signedRaw(_ claims: String, typ: String = Blocklist.headerType) throws -> String {
    let header = "{\"alg\":\"EdDSA\",\"typ\":\"\(typ)\",\"kid\":\"\(issuer.jwk.kid)\"}"
    let input = Base64URL.encode(header.utf8) + "." + Base64URL.encode(claims.utf8)
    let seed = try #require(issuer.jwk.seed)
    let signature = try #require(Ed25519.sign(message: Array(input.utf8), seed: seed))
    return input + "." + Base64URL.encode(signature)
  }

  /// A key `serial` whose `iss` is `iss`.
  func key(_ serial: String, iss: String) throws -> LicenseKey {
    var claims = TestIssuer.claims(serial: serial, nbf: t0 - .days(1), exp: t0 + .days(10))
    claims.issuer = iss
    return try KeyParser.parseUnverified(issuer.key(claims))
  }

  @Test func B1_aSignedListIsReadBackWithItsEntries() throws {
    let made = list([
      BlockedEntry(serial: "KS-1", since: t0 - .days(1), reason: "resold"),
      BlockedEntry(serial: "KS-2", since: t0, reason: ""),
    ])
    let text = try BlocklistParser.sign(made, with: issuer.jwk)
    let read = try BlocklistParser.verify(text, trust: issuer.trust)
    #expect(read.issuer == "vendor" && read.sequence == 1 && read.kid == "vendor")
    #expect(read.entries == made.entries)
    #expect(read.compact == text)
  }

  @Test func B1_anEntryBlocksOnlyAKeyOfTheListsOwnIssuer() throws {
    let read = try BlocklistParser.verify(
      try BlocklistParser.sign(
        list([BlockedEntry(serial: "KS-1", since: t0, reason: "x")]), with: issuer.jwk),
      trust: issuer.trust)
    let own = try key("KS-1", iss: "vendor")
    let other = try key("KS-1", iss: "another-vendor")
    let unlisted = try key("KS-9", iss: "vendor")
    #expect(read.entry(for: own)?.reason == "x")
    #expect(read.entry(for: other) == nil, "another issuer's serial is not this list's to block")
    #expect(read.entry(for: unlisted) == nil)
  }

  @Test func B1_aListIsRefusedLikeAKeyWhenItsSignatureOrIssuerIsWrong() throws {
    let text = try BlocklistParser.sign(list([]), with: issuer.jwk)
    let stranger = TestIssuer(kid: "stranger")
    #expect(throws: KeyDefect.untrustedIssuer(kid: "vendor")) {
      try BlocklistParser.verify(text, trust: stranger.trust)
    }
    // One character of the payload changed: the signature no longer verifies.
    var parts = text.split(separator: ".").map(String.init)
    parts[1] = Base64URL.encode(Array(list([], seq: 99).claimsForTest.utf8))
    #expect(throws: KeyDefect.badSignature) {
      try BlocklistParser.verify(parts.joined(separator: "."), trust: issuer.trust)
    }
  }

  @Test func B1_aKeyIsNotAListNorAListAKey() throws {
    let key = issuer.key(TestIssuer.claims(serial: "KS-1", nbf: t0 - .days(1), exp: t0 + .days(10)))
    #expect(!BlocklistParser.looksLikeBlocklist(key))
    #expect(throws: KeyDefect.self) { try BlocklistParser.verify(key, trust: issuer.trust) }
    let text = try BlocklistParser.sign(list([]), with: issuer.jwk)
    #expect(BlocklistParser.looksLikeBlocklist(text))
    #expect(throws: KeyDefect.self) { try KeyParser.verify(text, trust: issuer.trust) }
    // The claims' typ too: a list whose payload says otherwise is refused.
    let wrongTyp = try signedRaw(
      #"{"iss":"vendor","typ":"license","seq":1,"iat":1767225600,"product":"p","blocked":[]}"#)
    #expect(throws: KeyDefect.illTypedClaim("typ", expected: "\"license-blocklist\"")) {
      try BlocklistParser.verify(wrongTyp, trust: issuer.trust)
    }
  }

  @Test(arguments: [
    (#"{"typ":"license-blocklist","seq":1,"iat":1,"product":"p","blocked":[]}"#, "missing_claim"),
    (
      #"{"iss":"v","typ":"license-blocklist","seq":1.5,"iat":1,"product":"p","blocked":[]}"#,
      "ill_typed_claim"
    ),
    (
      #"{"iss":"v","typ":"license-blocklist","seq":-1,"iat":1,"product":"p","blocked":[]}"#, "ill_typed_claim"
    ),
    (#"{"iss":"v","typ":"license-blocklist","seq":1,"iat":1,"product":"p","blocked":{}}"#, "ill_typed_claim"),
    (
      #"{"iss":"v","typ":"license-blocklist","seq":1,"iat":1,"product":"p","blocked":[{"since":1}]}"#,
      "ill_typed_claim"
    ),
    (
      #"{"iss":"v","typ":"license-blocklist","seq":1,"iat":1,"product":"p","blocked":[{"serial":"a"}]}"#,
      "missing_claim"
    ),
    (#"{"iss":"v","typ":"license-blocklist","seq":1,"iat":1,"product":"p"}"#, "missing_claim"),
  ])
  func B1_aMalformedListNamesWhatIsWrong(claims: String, reason: String) throws {
    let text = try signedRaw(claims)
    #expect(throws: KeyDefect.self) { try BlocklistParser.verify(text, trust: issuer.trust) }
    do {
      _ = try BlocklistParser.verify(text, trust: issuer.trust)
    } catch {
      #expect(error.reason == reason, "\(error.description)")
    }
  }

  @Test func B1_whatEntersIsBounded() throws {
    // A reason is cut to its limit and cleaned of control characters.
    let long = String(repeating: "r", count: 1000) + "\u{1B}[2J"
    let read = try BlocklistParser.verify(
      try BlocklistParser.sign(
        list([BlockedEntry(serial: "KS-1", since: t0, reason: long)]), with: issuer.jwk),
      trust: issuer.trust)
    #expect(read.entries[0].reason.count <= BlocklistParser.maximumReasonLength)
    #expect(!read.entries[0].reason.contains("\u{1B}"))
    // Too many entries, or too long a text: refused before anything is believed.
    let many = (0...BlocklistParser.maximumEntries).map {
      BlockedEntry(serial: "K\($0)", since: t0, reason: "")
    }
    #expect(throws: KeyDefect.self) {
      try BlocklistParser.verify(try BlocklistParser.sign(list(many), with: issuer.jwk), trust: issuer.trust)
    }
    #expect(throws: KeyDefect.self) {
      try BlocklistParser.verify(
        String(repeating: "a", count: BlocklistParser.maximumLength + 5000), trust: issuer.trust)
    }
  }
}

extension Blocklist {
  /// The claims as signed (for a test that swaps a signed list's payload).
  var claimsForTest: String {
    "{\"iss\":\"\(issuer)\",\"typ\":\"license-blocklist\",\"seq\":\(sequence),\"iat\":1,\"product\":\"\(product)\",\"blocked\":[]}"
  }
}
