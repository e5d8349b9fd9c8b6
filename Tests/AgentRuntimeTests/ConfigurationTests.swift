import AgentRuntime
import AgentSettings
import Foundation
import LicenseCore
import Testing

@Suite struct ConfigurationTests {
  @Test func theMetricsGoToNodeExportersDirectoryByDefaultAndAnEmptyPathTurnsThemOff() throws {
    #expect(AgentConfiguration().metricsTextfile == "/var/lib/prometheus/node-exporter/license-agent.prom")
    let off = try AgentConfiguration.parse("[metrics]\ntextfile = \"\"\n", file: "agent.toml")
    #expect(off.metricsTextfile == nil)
    let elsewhere = try AgentConfiguration.parse(
      "[metrics]\ntextfile = \"/srv/m/la.prom\"\n", file: "agent.toml")
    #expect(elsewhere.metricsTextfile == "/srv/m/la.prom")
  }

  @Test func everyKeyIsOptional() throws {
    let config = try AgentConfiguration.parse("", file: "agent.toml")
    #expect(config == AgentConfiguration())
    #expect(config.product == "svm-protection")
    #expect(config.warningThresholds == [.days(30), .days(7), .days(1), .hours(1)])
    #expect(config.adminGroup == "license-admin")
    #expect(config.activation.alertAfter == .minutes(30))
  }

  @Test func readsTheContractsExample() throws {
    let text = """
      product = "svm-protection"

      [activation]
      client = "https"            # "https" (the shipped client program) or "exec"
      url = "https://activation.example.net"
      proxy = "http://proxy.example.net:3128"
      command = ["/usr/libexec/site-activate", "--profile", "svm"]
      ca-file = "/etc/ssl/certs/ca-certificates.crt"
      attempt-timeout = "30s"
      retry-initial = "5s"
      retry-max = "10m"
      alert-after = "30m"

      [warnings]
      before = ["30d", "7d", "1d", "1h"]

      [metrics]
      textfile = "/var/lib/prometheus/node-exporter/license-agent.prom"   # §8; "" turns it off

      [control]
      admin-group = "license-admin"
      """
    let config = try AgentConfiguration.parse(text, file: "agent.toml")
    #expect(config.metricsTextfile == "/var/lib/prometheus/node-exporter/license-agent.prom")
    #expect(config.activation.url == "https://activation.example.net")
    #expect(config.activation.command == ["/usr/libexec/site-activate", "--profile", "svm"])
    #expect(config.activation.retryMax == .minutes(10))
    #expect(config.warningThresholds.map(\.description) == ["30d", "7d", "1d", "1h"])
  }

  @Test(arguments: [
    ("product = 5\n", 1, "product", "must be a string"),
    ("[warnings]\nbefore = [\"30d\", \"soon\"]\n", 2, "warnings.before", "duration"),
    ("\n[activation]\nretry-max = \"1s\"\nretry-initial = \"5s\"\n", 3, "activation.retry-max", "shorter"),
    ("[activation]\nurl = \"http://activation.example.net\"\n", 2, "activation.url", "loopback"),
    ("[activation]\nclient = \"ftp\"\n", 2, "activation.client", "\"https\" or \"exec\""),
    ("[activation]\nclient = \"exec\"\n", 2, "activation.client", "no command"),
    ("[control]\nadmin-grup = \"x\"\n", 2, "control.admin-grup", "not a known setting"),
    ("colour = \"blue\"\n", 1, "colour", "not a known setting"),
    ("[activation]\nattempt-timeout = \"0s\"\n", 2, "activation.attempt-timeout", "positive"),
    (
      "[metrics]\ntextfile = \"license-agent.prom\"\n", 2, "metrics.textfile", "absolute path ending in .prom"
    ),
    ("[metrics]\ntextfile = \"/var/lib/x/license-agent.txt\"\n", 2, "metrics.textfile", ".prom"),
    ("[metrics]\ntext-file = \"/x.prom\"\n", 2, "metrics.text-file", "not a known setting"),
    // Every duration is at most 100 years (issue 20: this one crashed the agent at expiry).
    ("[activation]\nalert-after = \"106751990d\"\n", 2, "activation.alert-after", "longer than 100 years"),
    ("[activation]\nretry-max = \"36526d\"\n", 2, "activation.retry-max", "longer than 100 years"),
    ("\n[warnings]\nbefore = [\"30d\", \"40000d\"]\n", 3, "warnings.before", "longer than 100 years"),
    ("[activation]\nrenew-before = \"999999999h\"\n", 2, "activation.renew-before", "longer than 100 years"),
  ])
  func namesTheFileLineAndKeyOfAnError(text: String, line: Int, key: String, problem: String) {
    do {
      _ = try AgentConfiguration.parse(text, file: "/etc/license-agent/agent.toml")
      Issue.record("expected an error")
    } catch {
      #expect(error.file == "/etc/license-agent/agent.toml")
      #expect(error.line == line)
      #expect(error.key == key)
      #expect(error.problem.contains(problem), "\(error.problem)")
      #expect(error.description.hasPrefix("/etc/license-agent/agent.toml:\(line): \(key) "))
    }
  }

  /// toml++ (in TOMLKit) aborts on a non-ASCII character in a table name; the agent must
  /// refuse such a file with a message instead (found by fuzzing: Fuzz/Corpus/configuration).
  @Test(arguments: [
    ("[activación]\nurl = \"https://a.example\"\n", 1), ("product = \"x\"\n[warnings.é]\n", 2),
    ("é = 1\n", 1), ("[a\u{89}]\n", 1),
  ])
  func aNonASCIINameIsRefusedWithItsLine(text: String, line: Int) {
    do {
      _ = try AgentConfiguration.parse(text, file: "agent.toml")
      Issue.record("expected an error")
    } catch {
      #expect(error.line == line)
      #expect(error.problem.contains("not valid TOML") && error.problem.contains("ASCII"), "\(error.problem)")
    }
  }

  @Test func nonASCIIInStringsAndCommentsIsFine() throws {
    let text = #"""
      # Configuración: café
      product = "prodüct-ñ" # commentaire é
      [control]
      admin-group = 'grüppe'
      [warnings]
      before = ["1d"] # """ é '''
      """#
    let config = try AgentConfiguration.parse(text, file: "agent.toml")
    #expect(config.product == "prodüct-ñ")
    #expect(config.adminGroup == "grüppe")
  }

  @Test func reportsTOMLSyntaxErrorsWithTheirLine() {
    do {
      _ = try AgentConfiguration.parse("product = \"a\"\n[warnings\n", file: "agent.toml")
      Issue.record("expected an error")
    } catch {
      #expect(error.line == 2)
      #expect(error.problem.contains("not valid TOML"))
    }
  }

  @Test func plainHTTPIsAllowedToLoopbackOnly() throws {
    for url in ["http://127.0.0.1:8080", "http://localhost:1", "http://[::1]:80"] {
      #expect(
        try AgentConfiguration.parse("[activation]\nurl = \"\(url)\"\n", file: "f").activation.url == url)
    }
  }

  @Test func pathsFollowSystemdsVariables() {
    let paths = AgentPaths.fromEnvironment([
      "STATE_DIRECTORY": "/var/lib/a:/var/lib/b", "RUNTIME_DIRECTORY": "/run/x",
      "CONFIGURATION_DIRECTORY": "/etc/y",
    ])
    #expect(paths.stateDirectory == "/var/lib/a")
    #expect(paths.socketPath == "/run/x/io.licenseagent.Agent")
    #expect(paths.trustDirectory == "/etc/y/trusted-issuers")
    #expect(AgentPaths.fromEnvironment([:]).configurationFile == "/etc/license-agent/agent.toml")
  }
}

/// Contract §2/§3 for renewal ahead (C6): what the exec client writes and how it reads the
/// server's calendar.
@Suite struct ExecProtocolAheadTests {
  let client = ExecActivationClient(
    command: ["/bin/true"], url: nil, proxy: nil, caFile: nil, timeout: .seconds(5),
    product: "svm-protection",
    machineID: "m", logStderr: { _ in })
  let code = ActivationCode("ABCDE-12345-FGHIJ-67890")!

  func body(_ text: String) throws -> [String: Any] {
    try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
  }

  @Test func C6_aRequestAheadCarriesAheadAndCurrentExpiresAt() throws {
    let expiry = Timestamp(rfc3339: "2027-01-11T00:00:00Z")!
    let ahead = try body(
      client.requestBody(code: code, currentSerial: "KS-1", kind: .ahead(currentExpiresAt: expiry)))
    #expect(ahead["ahead"] as? Bool == true)
    #expect(ahead["currentExpiresAt"] as? String == "2027-01-11T00:00:00Z")
    #expect(ahead["currentSerial"] as? String == "KS-1")
    let atExpiry = try body(client.requestBody(code: code, currentSerial: "KS-1"))
    #expect(atExpiry["ahead"] as? Bool == false)
    #expect(atExpiry["currentExpiresAt"] == nil)
  }

  @Test func C6_exit75WithNotYetAvailableIsTheServersCalendar() {
    let notYet = ChildResult(
      exitStatus: 75, stdout: Array(#"{"error": "not_yet_available", "retryAfter": 3600}"#.utf8), stderr: [],
      timedOut: false, spawnError: nil)
    #expect(
      ExecActivationClient.outcome(of: notYet, timeout: .seconds(5))
        == .failure(.notYetAvailable(retryAfter: .hours(1))))
    let busy = ChildResult(
      exitStatus: 75, stdout: Array(#"{"error": "http_503"}"#.utf8), stderr: [], timedOut: false,
      spawnError: nil)
    #expect(
      ExecActivationClient.outcome(of: busy, timeout: .seconds(5))
        == .failure(.transient(error: "http_503", retryAfter: nil)))
  }

  @Test func C6_renewBeforeAndRenewSpreadAreReadAndChecked() throws {
    let parsed = try AgentConfiguration.parse(
      "[activation]\nrenew-before = \"14d\"\nrenew-spread = \"2d\"\n", file: "f")
    #expect(parsed.engine.renewBefore == .days(14) && parsed.engine.renewSpread == .days(2))
    #expect(
      try AgentConfiguration.parse("[activation]\nrenew-before = \"0s\"\n", file: "f").engine.renewBefore
        == .seconds(0))
    #expect(
      AgentConfiguration().engine.renewBefore == .days(7)
        && AgentConfiguration().engine.renewSpread == .days(3))
    #expect(throws: ConfigurationError.self) {
      try AgentConfiguration.parse("[activation]\nrenew-before = \"1d\"\nrenew-spread = \"2d\"\n", file: "f")
    }
  }
}

/// The TOML reader of agent.toml (AgentSettings/TOML.swift): what TOML allows is read as
/// TOML says, what it does not is refused with its line.
@Suite struct TOMLReaderTests {
  func parse(_ text: String) throws(ConfigurationError) -> AgentConfiguration {
    try AgentConfiguration.parse(text, file: "agent.toml")
  }

  @Test func stringsArraysAndKeysAsTOMLWritesThem() throws {
    let config = try parse(
      #"""
      "product" = "svm-\u0070rotection"  # an escape and a quoted key
      activation.url = 'https://a.example/x\y'
      [warnings]
      before = [
        "30d", # a comment in an array
        "1d",
      ]
      [control]
      admin-group = """
      admins"""
      """#)
    #expect(config.product == "svm-protection")
    #expect(config.activation.url == #"https://a.example/x\y"#)
    #expect(config.warningThresholds == [.days(30), .days(1)])
    #expect(config.adminGroup == "admins")
  }

  @Test(arguments: [
    ("product = \"a\"\nproduct = \"b\"\n", 2, "defined twice"),
    ("[control]\n[control]\n", 2, "defined twice"),
    ("product = \"a\n", 1, "not closed"),
    ("product = \"\\q\"\n", 1, "escape"),
    ("[warnings]\nbefore = [\"1d\" \"2d\"]\n", 2, "',' or ']'"),
    ("x = {a = 1,}\n", 1, "before '}'"),
    ("product = \"a\" b\n", 1, "where the line should end"),
    ("product = \"\u{1}\"\n", 1, "control character"),
  ])
  func whatTOMLRefusesIsRefusedWithItsLine(text: String, line: Int, problem: String) {
    do {
      _ = try parse(text)
      Issue.record("expected an error: \(text)")
    } catch {
      #expect(error.line == line, "\(error)")
      #expect(error.problem.contains("not valid TOML") && error.problem.contains(problem), "\(error.problem)")
    }
  }

  @Test(arguments: [
    ("product = true\n", 1, "product", "must be a string"),
    ("[warnings]\nbefore = \"1d\"\n", 2, "warnings.before", "array of durations"),
    ("warnings = \"x\"\n", 1, "warnings", "must be a table"),
    ("[[control]]\n", 1, "control", "not a known setting"),
    ("activation.colour = \"x\"\n", 1, "activation.colour", "not a known setting"),
    ("[activation]\ncommand = [\"/bin/x\", 3]\n", 2, "activation.command", "must be a string"),
    ("[metrics]\ntextfile = { path = \"/x.prom\" }\n", 2, "metrics.textfile", "must be a string"),
  ])
  func aValueOfTheWrongShapeNamesItsSettingAndLine(text: String, line: Int, key: String, problem: String) {
    do {
      _ = try parse(text)
      Issue.record("expected an error: \(text)")
    } catch {
      #expect(error.line == line && error.key == key, "\(error)")
      #expect(error.problem.contains(problem), "\(error.problem)")
    }
  }
}
