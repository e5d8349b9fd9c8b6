import Foundation
import LicenseCore
import LicenseTestSupport
import Testing

/// Rules U1–U3 with the built agent: usage reported with agentctl, graded in the real
/// journal, shown by agentctl and in the metrics file, kept across a restart.
@Suite struct UsageEndToEndTests {
  func json(_ agent: AgentHarness, asUser uid: uid_t? = nil) throws -> [String: Any] {
    let result = try agent.agentctl(["status", "--json"], asUser: uid)
    return try #require(
      try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any], "\(result.stderr)")
  }

  func usage(_ status: [String: Any]) -> [String: Any]? {
    let slots = status["slots"] as? [[String: Any]] ?? []
    return slots.first { $0["slot"] as? String == "server" }?["usage"] as? [String: Any]
  }

  func warningCodes(_ status: [String: Any]) -> Set<String> {
    Set((status["warnings"] as? [[String: Any]] ?? []).compactMap { $0["code"] as? String })
  }

  @Test func U1_U2_U3_usageReportedGradedShownAndKeptAcrossARestart() throws {
    let agent = try AgentHarness()
    defer { agent.stop() }
    #expect(try agent.start())
    let now = AgentHarness.now()
    let active = try agent.keyFile("A", agent.key("A", units: 10, nbf: now - .days(1), exp: now + .days(10)))
    #expect(try agent.agentctl(["add-key", active]).status == 0)
    let serial = agent.serial("A")

    // Unknown until reported: no usage in the status, nothing in the metrics.
    #expect(usage(try json(agent)) == nil)
    #expect(try agent.agentctl(["status"]).stdout.contains("usage    unknown"))
    #expect(
      !(try String(contentsOfFile: agent.metricsFile, encoding: .utf8)).contains("license_agent_units_in_use")
    )

    // Only root and the admin group report; anyone reads.
    let nobody: uid_t = 65534
    let denied = try agent.agentctl(["report-usage", "server", "5"], asUser: nobody)
    #expect(denied.status == 77 && denied.stderr.contains("permission denied"), "\(denied.stderr)")
    #expect(usage(try json(agent)) == nil, "a refused report changes nothing")

    // Refused values name the problem.
    let noSlot = try agent.agentctl(["report-usage", "workstation", "3"])
    #expect(noSlot.status == 1 && noSlot.stderr.contains("slot_not_in_use"), "\(noSlot.stderr)")
    let negative = try agent.agentctl(["report-usage", "server", "--", "-1"])
    #expect(negative.status == 64 && negative.stderr.contains("0 or more"), "\(negative.stderr)")

    // 9 of 10: high, logged once.
    let high = try agent.agentctl(["report-usage", "server", "9"])
    #expect(high.status == 0 && high.stdout.contains("90.0 %, high"), "\(high.stdout) \(high.stderr)")
    #expect(try agent.agentctl(["report-usage", "server", "9"]).status == 0)
    let highEvents = try agent.events(.licenseUsageHigh, serial: serial)
    #expect(highEvents.count == 1)
    #expect(highEvents.first?["PRIORITY"] == "5")
    #expect(highEvents.first?["LICENSE_UNITS"] == "10" && highEvents.first?["LICENSE_UNITS_USED"] == "9")
    #expect(highEvents.first?["LICENSE_USAGE_PERCENT"] == "90.0")

    // 12 of 10: critical.
    #expect(try agent.agentctl(["report-usage", "server", "12"]).status == 0)
    let exceeded = try agent.events(.licenseLimitExceeded, serial: serial)
    #expect(exceeded.count == 1 && exceeded.first?["PRIORITY"] == "2", "\(exceeded)")
    #expect(exceeded.first?["LICENSE_USAGE_PERCENT"] == "120.0")

    // A reserve short of the usage: accepted, with the warning in the reply and the journal.
    let reserve = try agent.keyFile("R", agent.key("R", units: 5, nbf: now, exp: now + .days(90)))
    let added = try agent.agentctl(["add-key", "--reserve", reserve])
    #expect(
      added.status == 0 && added.stdout.contains("reserve_units_short"), "\(added.stdout) \(added.stderr)")
    #expect(added.stdout.contains("7 would be uncovered"))
    let reserveAdded = try agent.events(.reserveAdded, serial: agent.serial("R"))
    #expect(reserveAdded.first?["LICENSE_WARNING"] == "reserve_units_short")

    // The status, for anyone, and the metrics.
    let status = try json(agent, asUser: nobody)
    let shown = try #require(usage(status))
    #expect(shown["units"] as? Int == 12 && shown["band"] as? String == "critical")
    #expect(shown["percent"] as? Double == 120.0 && shown["stale"] as? Bool == false)
    #expect(
      warningCodes(status).isSuperset(of: ["limit_exceeded", "reserve_units_short"]),
      "\(warningCodes(status))")
    let text = try agent.agentctl(["status"]).stdout
    #expect(text.contains("usage    12 units, 120.0 % of 10 (critical), reported"), "\(text)")
    let metrics = PrometheusText.samples(try String(contentsOfFile: agent.metricsFile, encoding: .utf8))
    #expect(metrics[#"license_agent_units_in_use{slot="server"}"#] == "12")
    #expect(metrics[#"license_agent_key_units{slot="server",role="active",serial="\#(serial)"}"#] == "10")
    #expect(
      metrics[#"license_agent_key_units{slot="server",role="reserve",serial="\#(agent.serial("R"))"}"#] == "5"
    )
    let reportedAt = try #require(Timestamp(rfc3339: shown["reportedAt"] as? String ?? ""))
    #expect(
      PrometheusText.microseconds(metrics[#"license_agent_usage_report_timestamp_seconds{slot="server"}"#])
        == reportedAt.microseconds)

    // Across a restart: the report and the band logged are kept, so nothing is logged twice.
    #expect(agent.stop() == 0)
    #expect(try agent.start())
    #expect(usage(try json(agent))?["units"] as? Int == 12)
    #expect(try agent.agentctl(["report-usage", "server", "12"]).status == 0)
    _ = try agent.settle()
    #expect(
      try agent.journal([
        "MESSAGE_ID=\(EventKind.licenseLimitExceeded.messageID)", "LICENSE_SERIAL=\(serial)",
      ]).count == 1)
  }
}
