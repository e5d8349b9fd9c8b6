import Foundation
import LicenseCore
import LicenseTestSupport
import SimpleJSON
import Testing
import Varlink

/// The catalogue of bad input (docs/RELIABILITY.md): malformed keys, activation codes,
/// Varlink messages and configurations sent to the built agent, each refused with its own
/// code, and the state file byte for byte what it was before.
@Suite struct MalformedInputTests {
  /// A running agent holding an active and a reserve key, and its state file's bytes.
  final class Fixture {
    let agent: AgentHarness
    let original: Data
    let now: Timestamp

    init() throws {
      agent = try AgentHarness()
      try #require(try agent.start())
      now = AgentHarness.now()
      try agent.keyPair(activeUntil: now + .days(30))
      original = try Data(contentsOf: URL(fileURLWithPath: agent.stateDirectory + "/state.json"))
    }

    var stateUnchanged: Bool {
      (try? Data(contentsOf: URL(fileURLWithPath: agent.stateDirectory + "/state.json"))) == original
    }

    /// One Varlink call on a fresh connection.
    func call(_ method: String, _ parameters: [String: JSONValue]) throws -> VarlinkReply {
      try VarlinkClient(path: agent.socketPath, timeoutSeconds: 10).call(method, parameters)
    }
  }

  static func b64(_ text: String) -> String { Base64URL.encode(Array(text.utf8)) }

  /// Keys: (name, key text, expected code, expected reason or nil).
  static func keyCases(_ fixture: Fixture) -> [(String, String, String, String?)] {
    let agent = fixture.agent
    let now = fixture.now
    let issuer = agent.issuer
    let valid = agent.key("V", nbf: now, exp: now + .days(200))
    let parts = valid.split(separator: ".").map(String.init)
    let header = issuer.header()
    let seconds = now.microseconds / 1_000_000
    func claims(_ edit: (inout [String: Any]) -> Void) -> String {
      var object: [String: Any] = [
        "iss": "test-issuer", "jti": agent.serial("C"), "iat": seconds, "nbf": seconds,
        "exp": seconds + 200 * 86400, "product": EngineConfiguration.defaultProduct, "edition": "enterprise",
        "scheme": "vm-count", "os_type": "server", "license_type": "commercial", "units": 10,
      ]
      edit(&object)
      let data = try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
      return issuer.raw(header: header, payload: String(decoding: data, as: UTF8.self))
    }
    let stranger = TestIssuer(kid: "stranger")
    let cases: [(String, String, String, String?)] = [
      ("empty", "", "invalid_key", "malformed"),
      ("spaces", "   ", "invalid_key", "malformed"),
      ("one part", parts[0], "invalid_key", "malformed"),
      ("two parts", parts[0] + "." + parts[1], "invalid_key", "malformed"),
      ("four parts", valid + ".AAAA", "invalid_key", "malformed"),
      ("not base64url", "e30!." + parts[1] + "." + parts[2], "invalid_key", "malformed"),
      ("padded", valid + "==", "invalid_key", "malformed"),
      ("header not JSON", Self.b64("{nope") + "." + parts[1] + "." + parts[2], "invalid_key", "malformed"),
      ("header an array", Self.b64("[1]") + "." + parts[1] + "." + parts[2], "invalid_key", "malformed"),
      ("short signature", parts[0] + "." + parts[1] + "." + Self.b64("short"), "invalid_key", "malformed"),
      (
        "no kid", issuer.raw(header: #"{"alg":"EdDSA","typ":"JWT"}"#, payload: "{}"), "invalid_key",
        "malformed"
      ),
      (
        "crit header",
        issuer.raw(header: #"{"alg":"EdDSA","kid":"test-issuer","crit":["x"]}"#, payload: "{}"),
        "invalid_key", "malformed"
      ),
      (
        "alg none", issuer.raw(header: issuer.header(alg: "none"), payload: "{}"), "invalid_key",
        "unsupported_alg"
      ),
      (
        "alg HS256", issuer.raw(header: issuer.header(alg: "HS256"), payload: "{}"), "invalid_key",
        "unsupported_alg"
      ),
      (
        "alg RS256", issuer.raw(header: issuer.header(alg: "RS256"), payload: "{}"), "invalid_key",
        "unsupported_alg"
      ),
      (
        "alg ES256", issuer.raw(header: issuer.header(alg: "ES256"), payload: "{}"), "invalid_key",
        "unsupported_alg"
      ),
      (
        "untrusted issuer",
        stranger.key(TestIssuer.claims(serial: agent.serial("S"), nbf: now, exp: now + .days(200))),
        "untrusted_issuer", nil
      ),
      (
        "zeroed signature",
        parts[0] + "." + parts[1] + "." + Base64URL.encode([UInt8](repeating: 0, count: 64)),
        "invalid_key", "bad_signature"
      ),
      (
        "re-signed payload",
        parts[0] + "." + claims { $0["units"] = 5000 }.split(separator: ".")[1] + "." + parts[2],
        "invalid_key", "bad_signature"
      ),
      ("missing jti", claims { $0["jti"] = nil }, "invalid_key", "missing_claim"),
      ("missing exp", claims { $0["exp"] = nil }, "invalid_key", "missing_claim"),
      ("null edition", claims { $0["edition"] = NSNull() }, "invalid_key", "missing_claim"),
      ("units a string", claims { $0["units"] = "10" }, "invalid_key", "ill_typed_claim"),
      ("units fractional", claims { $0["units"] = 2.5 }, "invalid_key", "ill_typed_claim"),
      ("exp a string", claims { $0["exp"] = "tomorrow" }, "invalid_key", "ill_typed_claim"),
      ("empty serial", claims { $0["jti"] = "" }, "invalid_key", "ill_typed_claim"),
      ("edition platinum", claims { $0["edition"] = "platinum" }, "invalid_key", "unknown_enum_value"),
      ("scheme sockets", claims { $0["scheme"] = "sockets" }, "invalid_key", "unknown_enum_value"),
      (
        "license type lifetime", claims { $0["license_type"] = "lifetime" }, "invalid_key",
        "unknown_enum_value"
      ),
      ("os type mainframe", claims { $0["os_type"] = "mainframe" }, "invalid_key", "unknown_enum_value"),
      ("os type on cores", claims { $0["scheme"] = "cores" }, "invalid_key", "os_type_unexpected"),
      ("no os type on vm-count", claims { $0["os_type"] = nil }, "invalid_key", "os_type_missing"),
      ("zero units", claims { $0["units"] = 0 }, "invalid_key", "non_positive_units"),
      ("negative units", claims { $0["units"] = -3 }, "invalid_key", "non_positive_units"),
      ("exp equal nbf", claims { $0["exp"] = seconds }, "invalid_key", "exp_not_after_nbf"),
      ("exp before nbf", claims { $0["exp"] = seconds - 10 }, "invalid_key", "exp_not_after_nbf"),
      ("another product", claims { $0["product"] = "other-product" }, "wrong_product", nil),
      (
        "expired",
        claims {
          $0["nbf"] = seconds - 200
          $0["exp"] = seconds - 100
        }, "expired", nil
      ),
    ]
    return cases
  }

  @Test func everyMalformedKeyIsRefusedWithItsCodeAndTheStateIsUntouched() throws {
    let fixture = try Fixture()
    let cases = Self.keyCases(fixture)
    #expect(cases.count >= 38)
    for (name, key, code, reason) in cases {
      for role in ["active", "reserve"] {
        let reply = try fixture.call(
          "io.licenseagent.Agent.AddKey", ["key": .string(key), "role": .string(role)])
        guard case .failure(let error) = reply else {
          Issue.record("\(name) (\(role)) was accepted")
          continue
        }
        #expect(error.name == "io.licenseagent.Agent.RuleViolation", "\(name): \(error.name)")
        #expect(error.parameters["code"]?.stringValue == code, "\(name) (\(role)): \(error.parameters)")
        if let reason {
          #expect(error.parameters["reason"]?.stringValue == reason, "\(name) (\(role)): \(error.parameters)")
        }
        #expect(fixture.stateUnchanged, "\(name) (\(role)) changed the state file")
      }
    }
  }

  @Test func everyMalformedCodeIsRefusedLocallyAndTheStateIsUntouched() throws {
    let fixture = try Fixture()
    let codes = [
      "", "ABCDE", "ABCDE-12345-FGHIJ", "ABCDE-12345-FGHIJ-6789", "ABCDE-12345-FGHIJ-678901",
      "ABCDE_12345_FGHIJ_67890", "ABCDE-12345-FGHIJ-6789!", "ÀBCDE-12345-FGHIJ-67890",
      "ABCDE-12345-FGHIJ-67890-XXXXX",
      "ABCDE 12345 FGHIJ 67890", "ABCDE--12345-FGHIJ-6789", "-ABCDE-12345-FGHIJ-6789",
    ]
    for code in codes {
      let reply = try fixture.call(
        "io.licenseagent.Agent.Activate", ["code": .string(code), "role": .string("active")])
      guard case .failure(let error) = reply else {
        Issue.record("\(code) was accepted")
        continue
      }
      #expect(error.parameters["code"]?.stringValue == "invalid_code_format", "\(code): \(error)")
      #expect(fixture.stateUnchanged, "\(code) changed the state file")
    }
  }

  @Test func everyMalformedCallIsRefusedByNameAndTheStateIsUntouched() throws {
    let fixture = try Fixture()
    let key = JSONValue.string(fixture.agent.key("N", nbf: fixture.now, exp: fixture.now + .days(300)))
    let calls: [(String, [String: JSONValue], String)] = [
      ("io.licenseagent.Agent.Nope", [:], "org.varlink.service.MethodNotFound"),
      ("io.licenseagent.Other.GetStatus", [:], "org.varlink.service.InterfaceNotFound"),
      ("io.licenseagent.Agent.AddKey", [:], "org.varlink.service.InvalidParameter"),
      ("io.licenseagent.Agent.AddKey", ["key": key], "org.varlink.service.InvalidParameter"),
      (
        "io.licenseagent.Agent.AddKey", ["key": .number(5), "role": .string("active")],
        "org.varlink.service.InvalidParameter"
      ),
      (
        "io.licenseagent.Agent.AddKey", ["key": key, "role": .string("spare")],
        "org.varlink.service.InvalidParameter"
      ),
      (
        "io.licenseagent.Agent.AddKey",
        ["key": key, "role": .string("active"), "replaceScheme": .string("yes")],
        "org.varlink.service.InvalidParameter"
      ),
      (
        "io.licenseagent.Agent.AddKey", ["key": key, "role": .string("active"), "force": .bool(true)],
        "org.varlink.service.InvalidParameter"
      ),
      (
        "io.licenseagent.Agent.RemoveReserve", ["slot": .string("mainframe")],
        "org.varlink.service.InvalidParameter"
      ),
      ("io.licenseagent.Agent.RemoveReserve", ["slot": .null], "org.varlink.service.InvalidParameter"),
      (
        "io.licenseagent.Agent.Activate", ["code": .array([]), "role": .string("active")],
        "org.varlink.service.InvalidParameter"
      ),
      (
        "io.licenseagent.Agent.CheckKey", ["key": key, "role": .number(1)],
        "org.varlink.service.InvalidParameter"
      ),
    ]
    for (method, parameters, expected) in calls {
      let reply = try fixture.call(method, parameters)
      guard case .failure(let error) = reply else {
        Issue.record("\(method) \(parameters) was accepted")
        continue
      }
      #expect(error.name == expected, "\(method) \(parameters): \(error.name)")
      #expect(fixture.stateUnchanged, "\(method) \(parameters) changed the state file")
    }
    // Bytes that are not a call end that connection only; the agent keeps serving.
    let raw = [
      "{not json", "[]", "\"text\"", #"{"parameters":{}}"#, #"{"method":5}"#, #"{"method":"noDot"}"#,
      #"{"method":"io.licenseagent.Agent.GetStatus","parameters":[]}"#, String(repeating: "[", count: 5000),
    ]
    for text in raw {
      let client = try VarlinkClient(path: fixture.agent.socketPath, timeoutSeconds: 10)
      try client.send(text)
      _ = try? client.call("io.licenseagent.Agent.GetStatus")
      let fresh = try fixture.call("io.licenseagent.Agent.GetStatus", [:])
      guard case .success = fresh else {
        Issue.record("the agent stopped answering after \(text.prefix(40))")
        continue
      }
      #expect(fixture.stateUnchanged, "\(text.prefix(40)) changed the state file")
    }
  }

  /// Malformed configurations, each with what its error must name.
  static let malformedConfigurations: [(String, String)] = [
    ("produkt = \"x\"\n", "produkt"), ("[activation]\nretry-max = \"10 minutes\"\n", "retry-max"),
    ("[activation]\nretry-initial = \"0s\"\n", "retry-initial"),
    ("[activation]\nurl = \"http://example.net\"\n", "url"), ("[warnings]\nbefore = [\"-1d\"]\n", "before"),
    ("[warnings]\nbefore = \"30d\"\n", "before"), ("[activation\nurl =\n", "not valid TOML"),
    ("[activation]\nclient = \"ftp\"\n", "client"), ("[control]\nadmin-group = 5\n", "admin-group"),
    ("product = \"a\"\nproduct = \"b\"\n", "not valid TOML"),
    ("[metrics]\ntextfile = \"license-agent.prom\"\n", "textfile"),
  ]

  @Test func everyMalformedConfigurationIsRefusedOnReloadAndTheStateIsUntouched() throws {
    let fixture = try Fixture()
    let file = fixture.agent.configurationDirectory + "/agent.toml"
    for (index, (text, named)) in Self.malformedConfigurations.enumerated() {
      try text.write(toFile: file, atomically: true, encoding: .utf8)
      kill(fixture.agent.pid!, SIGHUP)
      let logged = try fixture.agent.waitForJournal(
        ["_PID=\(fixture.agent.pid!)", "PRIORITY=3"], count: index + 1)
      #expect(logged.count == index + 1, "\(text): no error logged")
      // The error names the file, the line and the key (or says the TOML is invalid).
      let error = logged.last?["ERROR"] ?? ""
      #expect(error.hasPrefix(file + ":") && error.contains(named), "\(text): \(error)")
      #expect(fixture.stateUnchanged, "\(text) changed the state file")
      let status = try fixture.call("io.licenseagent.Agent.GetStatus", [:])
      if case .failure = status { Issue.record("the agent stopped answering after \(text)") }
    }
  }

  /// `license-agent --check-config FILE` (what Ansible's `validate` runs before a new
  /// agent.toml replaces the running one) refuses the same configurations with the same
  /// message, accepts the shipped default, and says so for a missing file.
  @Test func checkConfigRefusesEveryMalformedConfigurationAndAcceptsTheShippedOne() throws {
    let dir = makeTemporaryDirectory("check-config")
    defer { removeTemporaryDirectory(dir) }
    let agent = productsDirectory() + "/license-agent"
    let file = dir + "/agent.toml"
    for (text, named) in Self.malformedConfigurations {
      try text.write(toFile: file, atomically: true, encoding: .utf8)
      let result = try runProcess(agent, ["--check-config", file])
      #expect(result.status == 78, "\(text): exit \(result.status)")
      #expect(
        result.stderr.contains(file + ":") && result.stderr.contains(named), "\(text): \(result.stderr)")
      #expect(result.stdout.isEmpty)
    }
    let shipped =
      URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
      .deletingLastPathComponent().path + "/packaging/agent.toml"
    let good = try runProcess(agent, ["--check-config", shipped])
    #expect(good.status == 0, "\(good.stderr)")
    #expect(good.stdout == "\(shipped): valid configuration\n")
    let missing = try runProcess(agent, ["--check-config", dir + "/none.toml"])
    #expect(missing.status == 66 && missing.stderr.contains("none.toml: cannot be read"))
    let usage = try runProcess(agent, ["--check-config"])
    #expect(usage.status == 64)
  }
}
