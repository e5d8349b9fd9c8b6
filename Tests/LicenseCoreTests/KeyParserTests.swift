import Foundation
import LicenseCore
import LicenseTestSupport
import Testing

/// Contract §1 and rule A1/R8: every way a key can be wrong has its own reason.
@Suite struct KeyParserTests {
  let issuer = TestIssuer()
  let t0 = TestIssuer.t0

  func payload(_ overrides: [String: String?] = [:]) -> String {
    var fields: [(String, String)] = [
      ("iss", "\"test\""), ("jti", "\"KS-1\""), ("iat", "1798761600"), ("nbf", "1798761600"),
      ("exp", "1830297600"), ("product", "\"svm-protection\""), ("edition", "\"standard\""),
      ("scheme", "\"vm-count\""), ("os_type", "\"server\""), ("license_type", "\"commercial\""),
      ("units", "5"),
    ]
    for (name, value) in overrides {
      if let index = fields.firstIndex(where: { $0.0 == name }) {
        if let value { fields[index].1 = value } else { fields.remove(at: index) }
      } else if let value {
        fields.append((name, value))
      }
    }
    return "{" + fields.map { "\"\($0.0)\":\($0.1)" }.joined(separator: ",") + "}"
  }

  func defect(_ text: String) -> KeyDefect? {
    do {
      _ = try KeyParser.verify(text, trust: issuer.trust)
      return nil
    } catch { return error }
  }

  @Test(arguments: ["EdDSA", "Ed25519"])
  func acceptsBothEd25519AlgorithmNames(alg: String) throws {
    let key = try KeyParser.verify(
      issuer.key(TestIssuer.claims(serial: "KS-1", nbf: t0, exp: t0 + .days(1)), alg: alg),
      trust: issuer.trust)
    #expect(key.alg == alg)
    #expect(key.claims.serial == "KS-1")
    #expect(key.slot == .server)
  }

  @Test func ignoresSurroundingWhiteSpaceAndUnknownClaims() throws {
    let text = issuer.raw(header: issuer.header(), payload: payload(["extra": "{\"a\":[1,2]}"]))
    let key = try KeyParser.verify("\n  \(text) \t\n", trust: issuer.trust)
    #expect(key.compact == text)
    #expect(key.claims.units == 5)
  }

  @Test func keepsFractionalInstantsToTheMicrosecond() throws {
    let text = issuer.raw(
      header: issuer.header(), payload: payload(["nbf": "1798761600.000001", "exp": "1830297600.123456"]))
    let key = try KeyParser.verify(text, trust: issuer.trust)
    #expect(key.claims.notBefore.microseconds == 1_798_761_600_000_001)
    #expect(key.claims.expiresAt.microseconds == 1_830_297_600_123_456)
  }

  @Test func readsProcessorsAndCoresKeysWithoutOSType() throws {
    let text = issuer.raw(header: issuer.header(), payload: payload(["scheme": "\"cores\"", "os_type": nil]))
    #expect(try KeyParser.verify(text, trust: issuer.trust).slot == .cores)
  }

  @Test(arguments: [
    ("", "malformed"), ("abc", "malformed"), ("a.b", "malformed"), ("a.b.c.d", "malformed"),
    ("!!!.e30.AAAA", "malformed"), ("e30=.e30.AAAA", "malformed"),
  ])
  func refusesIllFormedCompactSerialization(text: String, reason: String) {
    #expect(defect(text)?.reason == reason)
  }

  @Test func refusesAHeaderOrPayloadThatIsNotAJSONObject() {
    #expect(
      defect(issuer.raw(header: "[1]", payload: payload())) == .malformed("the header is not a JSON object"))
    #expect(
      defect(issuer.raw(header: issuer.header(), payload: "\"x\""))
        == .malformed("the payload is not a JSON object"))
    #expect(
      defect(issuer.raw(header: issuer.header(), payload: "{\"jti\":"))
        == .malformed("the payload is not a JSON object"))
    #expect(defect(issuer.raw(header: "{\"alg\":\"EdDSA\"}", payload: payload()))?.reason == "malformed")
    #expect(
      defect(
        issuer.raw(header: "{\"alg\":\"EdDSA\",\"kid\":\"test-issuer\",\"crit\":[\"x\"]}", payload: payload())
      )?.reason == "malformed")
  }

  @Test func refusesASignatureOfTheWrongLength() {
    let parts = issuer.raw(header: issuer.header(), payload: payload()).split(separator: ".")
    #expect(defect("\(parts[0]).\(parts[1]).AAAA")?.reason == "malformed")
  }

  @Test(arguments: ["none", "HS256", "RS256", "ES256", "eddsa", ""])
  func refusesEveryOtherAlgorithm(alg: String) {
    #expect(defect(issuer.raw(header: issuer.header(alg: alg), payload: payload())) == .unsupportedAlg(alg))
  }

  @Test func refusesAKeyResignedWithNoneOrHS256() {
    let parts = issuer.raw(header: issuer.header(), payload: payload()).split(separator: ".")
    let none = Base64URL.encode("{\"alg\":\"none\",\"kid\":\"test-issuer\"}".utf8) + ".\(parts[1])."
    #expect(defect(none)?.reason == "malformed" || defect(none)?.reason == "unsupported_alg")
    let hs = Base64URL.encode("{\"alg\":\"HS256\",\"kid\":\"test-issuer\"}".utf8) + ".\(parts[1]).\(parts[2])"
    #expect(defect(hs) == .unsupportedAlg("HS256"))
  }

  @Test func refusesAKeyFromAnUnknownIssuer() {
    let stranger = TestIssuer(kid: "stranger")
    let text = stranger.key(TestIssuer.claims(serial: "KS-9", nbf: t0, exp: t0 + .days(1)))
    #expect(defect(text) == .untrustedIssuer(kid: "stranger"))
    #expect(defect(text)?.code == "untrusted_issuer")
  }

  @Test func refusesAKeySignedByAnImpostorUnderATrustedKid() {
    let impostor = TestIssuer(kid: "test-issuer")
    let text = impostor.key(TestIssuer.claims(serial: "KS-9", nbf: t0, exp: t0 + .days(1)))
    #expect(defect(text) == .badSignature)
  }

  @Test func refusesATamperedPayload() {
    let parts = issuer.raw(header: issuer.header(), payload: payload()).split(separator: ".")
    let forged = Base64URL.encode(payload(["units": "500"]).utf8)
    #expect(defect("\(parts[0]).\(forged).\(parts[2])") == .badSignature)
    #expect(defect("\(parts[0]).\(forged).\(parts[2])")?.code == "invalid_key")
  }

  @Test(arguments: [
    "iss", "jti", "iat", "nbf", "exp", "product", "edition", "scheme", "license_type", "units",
  ])
  func refusesAMissingClaim(name: String) {
    #expect(defect(issuer.raw(header: issuer.header(), payload: payload([name: nil]))) == .missingClaim(name))
    #expect(
      defect(issuer.raw(header: issuer.header(), payload: payload([name: "null"]))) == .missingClaim(name))
  }

  @Test(arguments: [
    ("iss", "42"), ("jti", "\"\""), ("iat", "\"yesterday\""), ("nbf", "true"), ("exp", "[1]"),
    ("product", "{}"), ("units", "2.5"), ("units", "\"5\""), ("edition", "1"),
  ])
  func refusesAnIllTypedClaim(name: String, value: String) {
    let found = defect(issuer.raw(header: issuer.header(), payload: payload([name: value])))
    #expect(found?.reason == "ill_typed_claim")
    if case .illTypedClaim(let claim, _)? = found { #expect(claim == name) }
  }

  /// Text from outside is bounded where it enters: a claim kept in the state and shown by
  /// every status cannot be a megabyte (issue 20).
  @Test(arguments: ["iss", "jti", "product"])
  func refusesAStringClaimLongerThanTheBound(name: String) {
    let long = String(repeating: "x", count: KeyParser.maximumClaimLength + 1)
    #expect(
      defect(issuer.raw(header: issuer.header(), payload: payload([name: "\"\(long)\""])))
        == .claimTooLong(name, limit: KeyParser.maximumClaimLength))
    let longest = String(repeating: "x", count: KeyParser.maximumClaimLength)
    #expect(defect(issuer.raw(header: issuer.header(), payload: payload(["jti": "\"\(longest)\""]))) == nil)
  }

  @Test func refusesAKeyTextOverTheBoundBeforeDecodingIt() {
    let padding = String(repeating: "y", count: KeyParser.maximumKeyLength)
    let key = issuer.raw(header: issuer.header(), payload: payload(["note": "\"\(padding)\""]))
    guard case .malformed(let detail)? = defect(key) else {
      Issue.record("not malformed: \(String(describing: defect(key)))")
      return
    }
    #expect(detail.contains("longer than \(KeyParser.maximumKeyLength) bytes"))
    let header = "{\"alg\":\"EdDSA\",\"typ\":\"JWT\",\"kid\":\"\(String(repeating: "k", count: 257))\"}"
    #expect(defect(issuer.raw(header: header, payload: payload())) == .claimTooLong("kid", limit: 256))
  }

  @Test(arguments: [
    ("edition", "premium"), ("scheme", "sockets"), ("os_type", "desktop"), ("license_type", "perpetual"),
  ])
  func refusesAnUnknownEnumValue(name: String, value: String) {
    #expect(
      defect(issuer.raw(header: issuer.header(), payload: payload([name: "\"\(value)\""])))
        == .unknownEnumValue(claim: name, value: value))
  }

  @Test func refusesOSTypeAgainstTheScheme() {
    #expect(defect(issuer.raw(header: issuer.header(), payload: payload(["os_type": nil]))) == .osTypeMissing)
    #expect(
      defect(issuer.raw(header: issuer.header(), payload: payload(["scheme": "\"processors\""])))
        == .osTypeUnexpected(scheme: "processors"))
  }

  @Test(arguments: ["0", "-3"])
  func refusesNonPositiveUnits(units: String) {
    #expect(
      defect(issuer.raw(header: issuer.header(), payload: payload(["units": units])))?.reason
        == "non_positive_units")
  }

  @Test(arguments: ["1798761600", "1798761599.999999"])
  func refusesAnExpiryNotAfterNotBefore(exp: String) {
    #expect(
      defect(issuer.raw(header: issuer.header(), payload: payload(["exp": exp]))) == .expiryNotAfterNotBefore)
  }

  @Test func acceptsAnExpiryOneMicrosecondAfterNotBefore() {
    #expect(
      defect(issuer.raw(header: issuer.header(), payload: payload(["exp": "1798761600.000001"]))) == nil)
  }

  @Test func checksTheSignatureBeforeBelievingAnyClaim() {
    let impostor = TestIssuer(kid: "test-issuer")
    #expect(defect(impostor.raw(header: issuer.header(), payload: payload(["units": "0"]))) == .badSignature)
  }

  @Test func everyReasonIsDistinctAndDocumented() throws {
    let reasons: [KeyDefect] = [
      .malformed("x"), .unsupportedAlg("x"), .untrustedIssuer(kid: "x"), .badSignature, .missingClaim("x"),
      .illTypedClaim("x", expected: "y"), .unknownEnumValue(claim: "x", value: "y"),
      .osTypeUnexpected(scheme: "x"),
      .osTypeMissing, .nonPositiveUnits(0), .expiryNotAfterNotBefore, .claimTooLong("x", limit: 1),
    ]
    #expect(Set(reasons.map(\.reason)).count == reasons.count)
    let readme = try String(
      contentsOfFile: #filePath.replacingOccurrences(
        of: "Tests/LicenseCoreTests/KeyParserTests.swift", with: "README.md"), encoding: .utf8)
    for defect in reasons { #expect(readme.contains("`\(defect.reason)`"), "README lacks \(defect.reason)") }
  }

  @Test func readsTheSerialOfAKeyItCannotVerify() {
    let stranger = TestIssuer(kid: "stranger")
    #expect(
      KeyParser.bestEffortSerial(
        stranger.key(TestIssuer.claims(serial: "KS-77", nbf: t0, exp: t0 + .days(1)))) == "KS-77")
    #expect(KeyParser.bestEffortSerial("garbage") == nil)
  }
}

@Suite struct JWKTests {
  @Test func roundTripsPrivateAndPublicForms() throws {
    let jwk = JWK.generate(kid: "acme")
    let reread = try JWK(json: Array(jwk.privateJSON.utf8).withUnsafeBufferPointer { Data($0) })
    #expect(reread == jwk)
    let pub = try JWK(json: Data(jwk.publicJSON.utf8))
    #expect(pub.seed == nil)
    #expect(pub.publicKey == jwk.publicKey)
  }

  @Test func refusesJWKsOfOtherKindsOrMismatchedHalves() {
    let jwk = JWK.generate(kid: "acme")
    let other = JWK.generate(kid: "other")
    let cases = [
      "{}", "[]", "{\"kty\":\"RSA\"}", "{\"kty\":\"OKP\",\"crv\":\"X25519\",\"kid\":\"a\",\"x\":\"AAAA\"}",
      "{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"\(Base64URL.encode(jwk.publicKey))\"}",
      "{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"kid\":\"a\",\"x\":\"AAAA\"}",
      "{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"kid\":\"a\",\"alg\":\"HS256\",\"x\":\"\(Base64URL.encode(jwk.publicKey))\"}",
      "{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"kid\":\"a\",\"x\":\"\(Base64URL.encode(jwk.publicKey))\",\"d\":\"\(Base64URL.encode(other.seed!))\"}",
    ]
    for text in cases {
      #expect(throws: JWK.Problem.self, "\(text)") { try JWK(json: Data(text.utf8)) }
    }
  }
}
