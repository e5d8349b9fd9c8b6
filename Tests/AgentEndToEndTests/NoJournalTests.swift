import Foundation
import LicenseCore
import LicenseTestSupport
import Testing

/// The journal socket missing (the agent in a mount namespace of its own where
/// /run/systemd/journal is empty; needs root): the agent runs, promotes, and writes its
/// events and logs to standard error instead, with their priority.
@Suite struct NoJournalTests {
  @Test(arguments: ["journal", "auto"])
  func withoutAJournalSocketEventsGoToStandardError(mode: String) throws {
    let agent = try AgentHarness()
    agent.environment["LICENSE_AGENT_LOG"] = mode
    agent.launcher = [
      "/usr/bin/unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
      "mount -t tmpfs tmpfs /run/systemd/journal && exec \"$0\"",
    ]
    let started = try agent.start()
    let log = (try? String(contentsOfFile: agent.logFile, encoding: .utf8)) ?? ""
    try #require(started, "started without a journal: \(log)")
    let exp = AgentHarness.now() + .seconds(2)
    try agent.keyPair(activeUntil: exp)
    AgentHarness.sleep(until: exp, margin: .seconds(1))
    let status = try agent.agentctl(["status", "--json"])
    #expect(status.stdout.contains("\"serial\":\"\(agent.serial("R"))\""), "promoted: \(status.stdout)")
    let events = try String(contentsOfFile: agent.logFile, encoding: .utf8)
    let promoted = events.split(separator: "\n").filter { $0.hasPrefix("<5>KEY_PROMOTED:") }
    #expect(promoted.count == 1 && promoted[0].contains("LICENSE_SERIAL=\(agent.serial("R"))"), "\(events)")
    #expect(events.contains("<6>ACTIVE_ADDED:"), "\(events)")
    // Nothing reached the host's journal from this agent.
    #expect(try agent.journal(["LICENSE_SERIAL=\(agent.serial("R"))"]).isEmpty)
  }
}
