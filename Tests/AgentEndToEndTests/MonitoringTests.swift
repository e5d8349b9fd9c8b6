import Foundation
import LicenseCore
import LicenseTestSupport
import Testing

/// Monitoring (contract §8, issue "Fleet monitoring"): the built agent's metrics file against
/// `agentctl status --json`, Prometheus's promtool on it, Debian's node_exporter serving it
/// over HTTP on loopback, and the shipped alert rules under promtool's unit test.
@Suite(.serialized) struct MonitoringTests {
  static let promtool = "/usr/bin/promtool"
  static let nodeExporter = "/usr/bin/prometheus-node-exporter"
  static var repository: String {
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
      .deletingLastPathComponent().path
  }

  static func samples(_ text: String) -> [String: String] { PrometheusText.samples(text) }
  static func micros(_ value: String?) -> Int64? { PrometheusText.microseconds(value) }

  /// What the file and `agentctl status --json` disagree on (empty: nothing): every key with
  /// its expiry and not-before, each slot's takeover and expiry, the earliest next action.
  static func disagreements(_ agent: AgentHarness) throws -> [String] {
    let status = try agent.agentctl(["status", "--json"])
    let object = try #require(
      try JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any], "\(status.stderr)")
    guard let text = try? String(contentsOfFile: agent.metricsFile, encoding: .utf8) else {
      return ["no file"]
    }
    let file = samples(text)
    var problems: [String] = []
    var keys: [String: Int64] = [:]
    for slot in object["slots"] as? [[String: Any]] ?? [] {
      let name = slot["slot"] as? String ?? "?"
      for role in ["active", "reserve"] {
        guard let key = slot[role] as? [String: Any], let serial = key["serial"] as? String else { continue }
        let labels = "{slot=\"\(name)\",role=\"\(role)\",serial=\"\(serial)\"}"
        keys[labels] = (key["expiresAt"] as? String).flatMap(Timestamp.init(rfc3339:))?.microseconds
        let nbf = (key["notBefore"] as? String).flatMap(Timestamp.init(rfc3339:))?.microseconds
        if micros(file["license_agent_key_not_before_timestamp_seconds" + labels]) != nbf {
          problems.append("nbf of \(labels)")
        }
      }
      let takeover = slot["takeover"] as? String ?? "?"
      if file["license_agent_slot_takeover{slot=\"\(name)\",takeover=\"\(takeover)\"}"] != "1" {
        problems.append("takeover \(name) \(takeover)")
      }
      let expired = slot["active"] == nil ? "1" : "0"
      if file["license_agent_slot_expired{slot=\"\(name)\"}"] != expired {
        problems.append("expired \(name)")
      }
    }
    let prefix = "license_agent_key_expiry_timestamp_seconds"
    let inFile = Dictionary(
      uniqueKeysWithValues: file.filter { $0.key.hasPrefix(prefix + "{") }.map {
        (String($0.key.dropFirst(prefix.count)), micros($0.value) ?? -1)
      })
    if inFile != keys { problems.append("keys: file \(inFile), status \(keys)") }
    let next = file.filter { $0.key.hasPrefix("license_agent_next_action_timestamp_seconds{") }
      .compactMap { micros($0.value) }.min()
    let statusNext = ((object["nextAction"] as? [String: Any])?["at"] as? String)
      .flatMap(Timestamp.init(rfc3339:))?.microseconds
    if next != statusNext {
      problems.append(
        "next action: file \(String(describing: next)), status \(String(describing: statusNext))")
    }
    return problems
  }

  /// Waits (bounded) until the file, written off the agent's queue after each change,
  /// tells what the status tells; returns what still disagrees.
  static func agreement(_ agent: AgentHarness, seconds: Double = 5) throws -> [String] {
    let deadline = Date().addingTimeInterval(seconds)
    var problems = try disagreements(agent)
    while !problems.isEmpty && Date() < deadline {
      usleep(20_000)
      problems = try disagreements(agent)
    }
    return problems
  }

  /// Debian's node_exporter with only its textfile collector, on a loopback port.
  final class NodeExporter {
    let process = Process()
    let port: Int
    init(directory: String) throws {
      try #require(FileManager.default.isExecutableFile(atPath: MonitoringTests.nodeExporter))
      port = Int.random(in: 20_000..<60_000)
      process.executableURL = URL(fileURLWithPath: MonitoringTests.nodeExporter)
      process.arguments = [
        "--web.listen-address=127.0.0.1:\(port)", "--collector.disable-defaults", "--collector.textfile",
        "--collector.textfile.directory=\(directory)",
      ]
      process.standardOutput = FileHandle.nullDevice
      process.standardError = FileHandle.nullDevice
      try process.run()
    }
    deinit {
      process.terminate()
      process.waitUntilExit()
    }
    /// GET /metrics, retried while node_exporter starts.
    func scrape() throws -> String {
      for _ in 0..<100 {
        let result = try runProcess(
          "/usr/bin/python3",
          [
            "-c",
            "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())",
            "http://127.0.0.1:\(port)/metrics",
          ])
        if result.status == 0 { return result.stdout }
        usleep(50_000)
      }
      throw ProcessError(description: "node_exporter on 127.0.0.1:\(port) did not answer")
    }
  }

  @Test func theFileTellsWhatAgentctlTellsAndNodeExporterServesIt() throws {
    let agent = try AgentHarness()
    try #require(try agent.start())
    defer { agent.stop() }
    #expect(try Self.agreement(agent) == [])
    let exp = AgentHarness.now() + .seconds(3)
    try agent.keyPair(activeUntil: exp, reserveFrom: exp)
    #expect(try Self.agreement(agent) == [], "after the adds")
    let file = try String(contentsOfFile: agent.metricsFile, encoding: .utf8)
    // Prometheus's own checker, on the agent's real output.
    let check = try runProcess(Self.promtool, ["check", "metrics"], input: file)
    #expect(
      check.status == 0 && check.stdout.isEmpty && check.stderr.isEmpty, "\(check.stdout)\(check.stderr)")
    // Mode 0644 whatever the agent's umask, no temporary file left for node_exporter.
    var info = stat()
    #expect(stat(agent.metricsFile, &info) == 0 && info.st_mode & 0o777 == 0o644)
    #expect(
      try FileManager.default.contentsOfDirectory(atPath: agent.metricsDirectory) == ["license-agent.prom"])

    let exporter = try NodeExporter(directory: agent.metricsDirectory)
    var scraped = Self.samples(try exporter.scrape())
    #expect(scraped["node_textfile_scrape_error"] == "0")
    let active = "{role=\"active\",serial=\"\(agent.serial("A"))\",slot=\"server\"}"
    #expect(
      Self.micros(scraped["license_agent_key_expiry_timestamp_seconds" + active]) == exp.microseconds,
      "\(scraped.keys.filter { $0.hasPrefix("license_agent") }.sorted())")
    #expect(scraped["license_agent_slot_takeover{slot=\"server\",takeover=\"reserve\"}"] == "1")

    // The promotion: in the file, then in what node_exporter serves.
    AgentHarness.sleep(until: exp)
    _ = try agent.events(.keyPromoted, serial: agent.serial("R"))
    #expect(try Self.agreement(agent) == [], "after the promotion")
    scraped = Self.samples(try exporter.scrape())
    #expect(scraped["node_textfile_scrape_error"] == "0")
    #expect(scraped["license_agent_promotions_total{slot=\"server\"}"] == "1")
    #expect(scraped["license_agent_key_expiry_timestamp_seconds" + active] == nil)
    #expect(scraped["license_agent_slot_takeover{slot=\"server\",takeover=\"none\"}"] == "1")
    let delay = try #require(
      Self.micros(scraped["license_agent_last_promotion_delay_seconds{slot=\"server\"}"]))
    let event = try #require(try agent.events(.keyPromoted, serial: agent.serial("R")).first)
    #expect(event["LICENSE_DELAY_USEC"] == String(delay), "the journal's delay, to the microsecond")
  }

  @Test func countersSurviveARestartAndTheFileGoesAtEachStop() throws {
    let agent = try AgentHarness()
    try #require(try agent.start())
    let exp = AgentHarness.now() + .seconds(2)
    try agent.keyPair(activeUntil: exp, reserveFrom: exp)
    AgentHarness.sleep(until: exp)
    _ = try agent.events(.keyPromoted, serial: agent.serial("R"))
    #expect(try Self.agreement(agent) == [])
    #expect(agent.stop() == 0)
    #expect(!FileManager.default.fileExists(atPath: agent.metricsFile), "removed at a graceful stop")
    try #require(try agent.start())
    defer { agent.stop() }
    #expect(try Self.agreement(agent) == [])
    let file = Self.samples(try String(contentsOfFile: agent.metricsFile, encoding: .utf8))
    #expect(file["license_agent_promotions_total{slot=\"server\"}"] == "1", "kept in the state")
    // After a crash the file stays (nothing ran): the unit's ExecStopPost runs this.
    agent.killHard()
    #expect(FileManager.default.fileExists(atPath: agent.metricsFile))
    var environment = agent.daemonEnvironment
    environment.removeValue(forKey: "NOTIFY_SOCKET")
    let removed = try runProcess(agent.bin + "/license-agent", ["--remove-metrics"], environment: environment)
    #expect(removed.status == 0, "\(removed.stderr)")
    #expect(!FileManager.default.fileExists(atPath: agent.metricsFile))
  }

  @Test func aMissingDirectoryIsSaidOnceAndAFailingWriteIsLoggedOnceNotOnEveryChange() throws {
    let nowhere = "/nonexistent-\(UUID().uuidString)"
    let missing = try AgentHarness(configuration: "[metrics]\ntextfile = \"\(nowhere)/x.prom\"\n")
    try #require(try missing.start())
    try missing.keyPair(activeUntil: AgentHarness.now() + .days(30))
    _ = try missing.settle()
    // Said at start, once, though the keys changed twice since; and nothing made there.
    #expect(try missing.waitForJournal(["_PID=\(missing.pid!)", "DIRECTORY=\(nowhere)"]).count == 1)
    #expect(!FileManager.default.fileExists(atPath: nowhere))
    missing.stop()

    let agent = try AgentHarness()
    try #require(try agent.start())
    defer { agent.stop() }
    #expect(try Self.agreement(agent) == [])
    // The directory goes (a full or broken file system would do the same to the writes).
    try FileManager.default.removeItem(atPath: agent.metricsDirectory)
    let exp = AgentHarness.now() + .seconds(2)
    try agent.keyPair(activeUntil: exp, reserveFrom: exp)
    AgentHarness.sleep(until: exp)
    // Licensing goes on: the promotion happens on time.
    let promoted = try #require(try agent.events(.keyPromoted, serial: agent.serial("R")).first)
    #expect((Int64(promoted["LICENSE_DELAY_USEC"] ?? "") ?? .max) < 1_000_000)
    // Three changes (two adds, a promotion), one warning.
    let warnings = ["_PID=\(agent.pid!)", "PRIORITY=4", "TEXTFILE=\(agent.metricsFile)"]
    _ = try agent.settle()
    #expect(try agent.waitForJournal(warnings).count == 1)
    // Once it can write again, it does, and says so.
    try FileManager.default.createDirectory(atPath: agent.metricsDirectory, withIntermediateDirectories: true)
    let next = try agent.keyFile("R2", agent.key("R2", nbf: exp + .days(90), exp: exp + .days(180)))
    #expect(try agent.agentctl(["add-key", "--reserve", next]).status == 0)
    #expect(try Self.agreement(agent) == [])
    #expect(
      try agent.waitForJournal(["_PID=\(agent.pid!)", "PRIORITY=5", "TEXTFILE=\(agent.metricsFile)"]).count
        == 1)
    #expect(try agent.journal(warnings).count == 1)
  }

  /// The shipped rules: valid, and promtool's unit test of every alert (fires where it
  /// should, silent where a reserve takes over, ...) passes.
  @Test func theShippedAlertRulesPassPromtoolsUnitTest() throws {
    try #require(FileManager.default.isExecutableFile(atPath: Self.promtool))
    let rules = Self.repository + "/packaging/prometheus/license-agent.rules.yml"
    let check = try runProcess(Self.promtool, ["check", "rules", rules])
    #expect(
      check.status == 0 && check.stdout.contains("SUCCESS: 20 rules found"), "\(check.stdout)\(check.stderr)")
    let test = try runProcess(
      Self.promtool,
      ["test", "rules", Self.repository + "/packaging/prometheus/license-agent.rules.test.yml"])
    #expect(test.status == 0 && test.stdout.contains("SUCCESS"), "\(test.stdout)\(test.stderr)")
    // Every metric a rule reads is one the agent writes (contract §8).
    let text = try String(contentsOfFile: rules, encoding: .utf8)
    let used = Set(text.matches(of: /license_agent_[a-z_]+/).map { String($0.output) })
    let written: Set<String> = [
      "license_agent_info", "license_agent_key_expiry_timestamp_seconds",
      "license_agent_key_not_before_timestamp_seconds", "license_agent_slot_takeover",
      "license_agent_slot_expired",
      "license_agent_alert", "license_agent_promotions_total", "license_agent_last_promotion_delay_seconds",
      "license_agent_activation_attempts_total", "license_agent_next_action_timestamp_seconds",
      "license_agent_state_write_failures_total", "license_agent_key_units", "license_agent_units_in_use",
      "license_agent_usage_report_timestamp_seconds", "license_agent_consumer_confirmed",
      "license_agent_key_blocked", "license_agent_key_grace_end_timestamp_seconds",
    ]
    #expect(used.subtracting(written).isEmpty, "\(used.subtracting(written))")
    // Every alert links its section of the runbook, which exists.
    let runbook = try String(contentsOfFile: Self.repository + "/docs/RUNBOOK.md", encoding: .utf8)
    let alerts = text.matches(of: /- alert: (\w+)/).map { String($0.output.1) }
    #expect(alerts.count == 16)
    for alert in alerts {
      #expect(text.contains("docs/RUNBOOK.md#\(alert.lowercased())\""), "\(alert) has no runbook_url")
      #expect(runbook.contains("### \(alert)\n"), "docs/RUNBOOK.md has no section \(alert)")
    }
  }
}
