import Foundation
import LicenseCore
import LicenseTestSupport
import Testing

/// `license-keytool`, run as the built binary in temporary folders.
@Suite struct KeytoolTests {
  let tool = productsDirectory() + "/license-keytool"

  func keytool(_ arguments: String..., input: String? = nil) throws -> ProcessResult {
    try runProcess(tool, arguments, input: input)
  }

  /// keygen into `dir/keys`, with the public key copied into `dir/trust`.
  func makeIssuer(_ dir: String, kid: String = "acme-2027") throws {
    let result = try keytool("keygen", "--kid", kid, "--out", dir + "/keys")
    #expect(result.status == 0, "\(result.stderr)")
    try FileManager.default.createDirectory(atPath: dir + "/trust", withIntermediateDirectories: true)
    try FileManager.default.copyItem(atPath: "\(dir)/keys/\(kid).jwk", toPath: "\(dir)/trust/\(kid).jwk")
  }

  func issue(_ dir: String, _ extra: [String] = []) throws -> ProcessResult {
    try runProcess(
      tool,
      [
        "issue", "--signer", dir + "/keys/acme-2027.private.jwk", "--serial", "KS-100", "--edition",
        "enterprise",
        "--scheme", "vm-count", "--os-type", "server", "--license-type", "commercial", "--units", "25",
        "--expires", "+90d",
      ] + extra)
  }

  @Test func keygenWritesAPrivateJWK0600AndAPublicJWK() throws {
    let dir = makeTemporaryDirectory()
    defer { removeTemporaryDirectory(dir) }
    try makeIssuer(dir)
    let attributes = try FileManager.default.attributesOfItem(atPath: dir + "/keys/acme-2027.private.jwk")
    #expect((attributes[.posixPermissions] as? Int) == 0o600)
    let privateJWK = try JWK(
      json: Data(contentsOf: URL(fileURLWithPath: dir + "/keys/acme-2027.private.jwk")))
    let publicJWK = try JWK(json: Data(contentsOf: URL(fileURLWithPath: dir + "/keys/acme-2027.jwk")))
    #expect(privateJWK.seed != nil && publicJWK.seed == nil)
    #expect(privateJWK.publicKey == publicJWK.publicKey && publicJWK.kid == "acme-2027")
    // It never overwrites an issuer key by accident.
    let again = try keytool("keygen", "--kid", "acme-2027", "--out", dir + "/keys")
    #expect(again.status != 0)
    #expect(again.stderr.contains("already exists"))
    #expect(
      try JWK(json: Data(contentsOf: URL(fileURLWithPath: dir + "/keys/acme-2027.private.jwk"))) == privateJWK
    )
  }

  @Test func keygenRefusesAKidThatIsNotAFileName() throws {
    let result = try keytool("keygen", "--kid", "../evil", "--out", "/tmp")
    #expect(result.status == 64)
    #expect(result.stderr.contains("--kid"))
  }

  @Test func issueThenInspectWithTrustIsValid() throws {
    let dir = makeTemporaryDirectory()
    defer { removeTemporaryDirectory(dir) }
    try makeIssuer(dir)
    let issued = try issue(dir, ["--not-before", "2026-01-01T00:00:00Z"])
    #expect(issued.status == 0, "\(issued.stderr)")
    let key = issued.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    #expect(key.split(separator: ".").count == 3 && !key.contains("\n"))
    try key.write(toFile: dir + "/key.jws", atomically: true, encoding: .utf8)
    let inspected = try keytool("inspect", dir + "/key.jws", "--trust", dir + "/trust")
    #expect(inspected.status == 0)
    #expect(inspected.stdout.contains("Key KS-100"))
    #expect(inspected.stdout.contains("vm-count/server, enterprise, commercial, 25 units"))
    #expect(inspected.stdout.contains("valid:     2026-01-01T00:00:00Z .."))
    #expect(inspected.stdout.contains("Verdict: valid; signature verified with trusted issuer key acme-2027"))
    let fromStdin = try keytool("inspect", "-", "--trust", dir + "/trust", "--json", input: key + "\n")
    let json = try #require(
      try JSONSerialization.jsonObject(with: Data(fromStdin.stdout.utf8)) as? [String: Any])
    #expect(json["valid"] as? Bool == true)
    #expect(json["signatureChecked"] as? Bool == true)
    #expect((json["claims"] as? [String: Any])?["jti"] as? String == "KS-100")
  }

  @Test func inspectWithoutTrustSaysTheSignatureWasNotChecked() throws {
    let dir = makeTemporaryDirectory()
    defer { removeTemporaryDirectory(dir) }
    try makeIssuer(dir)
    try issue(dir).stdout.write(toFile: dir + "/key.jws", atomically: true, encoding: .utf8)
    let result = try keytool("inspect", dir + "/key.jws")
    #expect(result.status == 0)
    #expect(result.stdout.contains("signature NOT checked"))
  }

  @Test func inspectRefusesWithTheReasonsCode() throws {
    let dir = makeTemporaryDirectory()
    defer { removeTemporaryDirectory(dir) }
    try makeIssuer(dir)
    let key = try issue(dir).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    let parts = key.split(separator: ".")
    let tampered = "\(parts[0]).\(Base64URL.encode("{\"units\":9999}".utf8)).\(parts[2])"
    let hs256 =
      Base64URL.encode("{\"alg\":\"HS256\",\"kid\":\"acme-2027\"}".utf8) + ".\(parts[1]).\(parts[2])"
    let none = Base64URL.encode("{\"alg\":\"none\",\"kid\":\"acme-2027\"}".utf8) + ".\(parts[1])."
    let unknownKid =
      Base64URL.encode("{\"alg\":\"EdDSA\",\"kid\":\"nobody\"}".utf8) + ".\(parts[1]).\(parts[2])"
    let cases: [(String, String, String)] = [
      (tampered, "invalid_key", "bad_signature"), (hs256, "invalid_key", "unsupported_alg"),
      (none, "invalid_key", "unsupported_alg"), (unknownKid, "untrusted_issuer", "untrusted_issuer"),
      ("hello", "invalid_key", "malformed"),
    ]
    for (text, code, reason) in cases {
      let result = try keytool("inspect", "-", "--trust", dir + "/trust", "--json", input: text)
      #expect(result.status == 1, "\(reason)")
      let json = try #require(
        try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
      #expect(json["code"] as? String == code)
      #expect(json["reason"] as? String == reason)
      #expect(json["valid"] as? Bool == false)
      let text = try keytool("inspect", "-", "--trust", dir + "/trust", input: text)
      #expect(text.status == 1)
      #expect(text.stdout.contains("Verdict: INVALID, \(code)"))
    }
  }

  @Test func inspectRefusesAKeyOutsideItsValidityOrForAnotherProduct() throws {
    let dir = makeTemporaryDirectory()
    defer { removeTemporaryDirectory(dir) }
    try makeIssuer(dir)
    let expired = try issue(dir, ["--not-before=-2d", "--expires=-1d"]).stdout
    let future = try issue(dir, ["--not-before", "+1d", "--expires", "+2d"]).stdout
    let other = try issue(dir, ["--product", "other"]).stdout
    #expect(try keytool("inspect", "-", "--json", input: expired).stdout.contains("\"code\":\"expired\""))
    #expect(
      try keytool("inspect", "-", "--json", input: future).stdout.contains("\"code\":\"not_yet_valid\""))
    let wrong = try keytool("inspect", "-", "--product", "svm-protection", input: other)
    #expect(wrong.status == 1 && wrong.stdout.contains("wrong_product"))
  }

  @Test func issueRefusesClaimsTheAgentWouldRefuse() throws {
    let dir = makeTemporaryDirectory()
    defer { removeTemporaryDirectory(dir) }
    try makeIssuer(dir)
    let cases: [([String], String)] = [
      (["--units", "0"], "units"), (["--not-before", "+10d", "--expires", "+5d"], "nbf"),
      (["--expires", "tomorrow"], "--expires"), (["--edition", "premium"], "--edition"),
      (["--scheme", "cores"], "os_type"),
    ]
    for (extra, mention) in cases {
      let result = try issue(dir, extra)
      #expect(result.status == 64, "\(extra)")
      #expect(result.stderr.contains(mention), "\(extra): \(result.stderr)")
      #expect(result.stdout.isEmpty)
    }
  }

  @Test func issueKeepsFractionalInstantsToTheMicrosecond() throws {
    let dir = makeTemporaryDirectory()
    defer { removeTemporaryDirectory(dir) }
    try makeIssuer(dir)
    let key = try issue(
      dir, ["--not-before", "2026-01-01T00:00:00.000001Z", "--expires", "2030-01-01T00:00:00.123456Z"])
    let parsed = try KeyParser.parseUnverified(key.stdout)
    #expect(parsed.claims.notBefore.rfc3339 == "2026-01-01T00:00:00.000001Z")
    #expect(parsed.claims.expiresAt.rfc3339 == "2030-01-01T00:00:00.123456Z")
  }

  // MARK: Interoperability with other JOSE implementations (contract §1)

  var interop: String {
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().path + "/Fixtures/jose_interop.py"
  }

  @Test(arguments: [
    ("joserfc", "EdDSA"), ("joserfc", "Ed25519"), ("cryptography", "EdDSA"), ("cryptography", "Ed25519"),
  ])
  func keysMadeByAnotherJOSEImplementationAreAccepted(library: String, alg: String) throws {
    let dir = makeTemporaryDirectory()
    defer { removeTemporaryDirectory(dir) }
    try FileManager.default.createDirectory(atPath: dir + "/trust", withIntermediateDirectories: true)
    let claims = """
      {"iss":"python","jti":"PY-1","iat":1767225600,"nbf":1767225600.25,"exp":4102444800.000001,\
      "product":"svm-protection","edition":"standard","scheme":"cores","license_type":"subscription","units":64,\
      "note":"unknown claims are ignored"}
      """
    let made = try runProcess(
      python3(), [interop, "issue", library, alg, dir + "/trust", "py-issuer", claims])
    #expect(made.status == 0, "python: \(made.stderr)")
    let result = try keytool("inspect", "-", "--trust", dir + "/trust", "--json", input: made.stdout)
    #expect(result.status == 0, "\(result.stdout)")
    let json = try #require(
      try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
    #expect(json["alg"] as? String == alg)
    #expect(json["notBefore"] as? String == "2026-01-01T00:00:00.250000Z")
    #expect(json["expiresAt"] as? String == "2100-01-01T00:00:00.000001Z")
    #expect(json["slot"] as? String == "cores")
    // The agent's own parser reads the same key the same way.
    let key = try KeyParser.parseUnverified(made.stdout)
    #expect(key.claims.units == 64 && key.claims.licenseType == .subscription)
  }

  @Test func keysMadeByKeytoolVerifyInAnotherJOSEImplementation() throws {
    let dir = makeTemporaryDirectory()
    defer { removeTemporaryDirectory(dir) }
    try makeIssuer(dir)
    try issue(dir, ["--alg", "Ed25519", "--expires", "2030-01-01T00:00:00.5Z"]).stdout
      .write(toFile: dir + "/key.jws", atomically: true, encoding: .utf8)
    let verified = try runProcess(
      python3(), [interop, "verify", dir + "/keys/acme-2027.jwk", dir + "/key.jws"])
    #expect(verified.status == 0, "python: \(verified.stderr)")
    let json = try #require(
      try JSONSerialization.jsonObject(with: Data(verified.stdout.utf8)) as? [String: Any])
    let claims = try #require(json["claims"] as? [String: Any])
    #expect(claims["jti"] as? String == "KS-100")
    #expect(claims["exp"] as? Double == 1_893_456_000.5)
    #expect((json["header"] as? [String: Any])?["alg"] as? String == "Ed25519")
  }

  // MARK: Blocklists (rule B1, contract §1)

  @Test(arguments: ["joserfc", "cryptography"])
  func B1_aBlocklistMadeByAnotherJOSEImplementationIsReadWithItsEntries(library: String) throws {
    let dir = makeTemporaryDirectory()
    defer { removeTemporaryDirectory(dir) }
    try FileManager.default.createDirectory(atPath: dir + "/trust", withIntermediateDirectories: true)
    let claims = """
      {"iss":"python","typ":"license-blocklist","seq":7,"iat":1767225600,"product":"svm-protection",\
      "blocked":[{"serial":"PY-1","since":1767225600,"reason":"resold"},{"serial":"PY-2","since":1767225601.5}]}
      """
    let made = try runProcess(
      python3(),
      [interop, "issue", library, "EdDSA", dir + "/trust", "py-issuer", claims, "license-blocklist+jwt"])
    #expect(made.status == 0, "python: \(made.stderr)")
    let result = try keytool("inspect", "-", "--trust", dir + "/trust", "--json", input: made.stdout)
    #expect(result.status == 0, "\(result.stdout)")
    let json = try #require(
      try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
    #expect(json["kind"] as? String == "blocklist" && json["signatureChecked"] as? Bool == true)
    #expect(json["issuer"] as? String == "python" && json["seq"] as? Int == 7)
    let blocked = try #require(json["blocked"] as? [[String: Any]])
    #expect(blocked.map { $0["serial"] as? String } == ["PY-1", "PY-2"])
    #expect(blocked.map { $0["reason"] as? String } == ["resold", ""])
    #expect(blocked.last?["since"] as? String == "2026-01-01T00:00:01.500000Z")
    // Signed with the header of a key, it is not a blocklist; nor is a key read as one.
    let asKey = try runProcess(
      python3(), [interop, "issue", library, "EdDSA", dir + "/trust", "py-2", claims, "JWT"])
    #expect(throws: KeyDefect.self) { try BlocklistParser.parseUnverified(asKey.stdout) }
    #expect(throws: KeyDefect.self) { try KeyParser.parseUnverified(made.stdout) }
  }

  @Test func B1_aBlocklistMadeByKeytoolVerifiesInAnotherJOSEImplementation() throws {
    let dir = makeTemporaryDirectory()
    defer { removeTemporaryDirectory(dir) }
    try makeIssuer(dir)
    let made = try keytool(
      "blocklist", "--signer", dir + "/keys/acme-2027.private.jwk", "--alg", "Ed25519", "--seq", "3",
      "--block",
      "KS-100:resold",
      "--block", "KS-101", "--since", "2026-06-01T00:00:00Z")
    #expect(made.status == 0, "\(made.stderr)")
    try made.stdout.write(toFile: dir + "/list.jws", atomically: true, encoding: .utf8)
    let verified = try runProcess(
      python3(), [interop, "verify", dir + "/keys/acme-2027.jwk", dir + "/list.jws"])
    #expect(verified.status == 0, "python: \(verified.stderr)")
    let json = try #require(
      try JSONSerialization.jsonObject(with: Data(verified.stdout.utf8)) as? [String: Any])
    #expect((json["header"] as? [String: Any])?["typ"] as? String == "license-blocklist+jwt")
    let claims = try #require(json["claims"] as? [String: Any])
    #expect(claims["typ"] as? String == "license-blocklist" && claims["seq"] as? Int == 3)
    #expect(claims["iss"] as? String == "acme-2027")
    let blocked = try #require(claims["blocked"] as? [[String: Any]])
    #expect(blocked.map { $0["serial"] as? String } == ["KS-100", "KS-101"])
    #expect(blocked.first?["reason"] as? String == "resold")
    #expect(blocked.first?["since"] as? Double == 1_780_272_000)
    // inspect shows it, and says the signature was not checked without --trust.
    let shown = try keytool("inspect", dir + "/list.jws")
    #expect(shown.status == 0)
    #expect(shown.stdout.contains("Blocklist 3 of issuer acme-2027"), "\(shown.stdout)")
    #expect(shown.stdout.contains("KS-100  since 2026-06-01T00:00:00Z  (resold)"), "\(shown.stdout)")
    #expect(shown.stdout.contains("signature NOT checked"))
    // Bad input is refused with a clear message.
    let noSerial = try keytool(
      "blocklist", "--signer", dir + "/keys/acme-2027.private.jwk", "--seq", "4", "--block", ":why")
    #expect(noSerial.status != 0 && noSerial.stderr.contains("names no serial"), "\(noSerial.stderr)")
    let negative = try keytool("blocklist", "--signer", dir + "/keys/acme-2027.private.jwk", "--seq=-1")
    #expect(negative.status != 0 && negative.stderr.contains("0 or more"), "\(negative.stderr)")
  }
}
