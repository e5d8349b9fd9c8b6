import Foundation
import LicenseCore
import LicenseTestSupport
import Testing

/// Rules B1 and B3 with the built agent: lists from the blocklist directory and from
/// `agentctl add-blocklist`, kept across a restart, a blocked reserve dropped in the real
/// journal, a blocked key refused.
@Suite struct BlocklistEndToEndTests {
  /// A list of the harness issuer's keys (`iss` test-issuer), signed by it.
  func list(_ agent: AgentHarness, _ seq: Int, _ names: [String]) throws -> String {
    try BlocklistParser.sign(
      Blocklist(
        compact: "", kid: agent.issuer.jwk.kid, issuer: "test-issuer", sequence: seq,
        issuedAt: AgentHarness.now(), product: "svm-protection",
        entries: names.map {
          BlockedEntry(serial: agent.serial($0), since: AgentHarness.now(), reason: "resold")
        }),
      with: agent.issuer.jwk)
  }

  @Test func B1_B3_listsFromTheDirectoryAndAgentctlKeptAcrossARestart() throws {
    let agent = try AgentHarness()
    defer { agent.stop() }
    // A list in the directory at start, blocking a key this SVM does not hold.
    let directory = agent.configurationDirectory + "/blocklists"
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    try list(agent, 1, ["OTHER"]).write(toFile: directory + "/vendor.jws", atomically: true, encoding: .utf8)
    #expect(try agent.start())
    let kept = try agent.waitForJournal(["_PID=\(agent.pid!)", "MESSAGE=Blocklist kept"])
    #expect(kept.first?["SEQUENCE"] == "1", "\(kept)")
    try agent.keyPair(activeUntil: AgentHarness.now() + .days(10))

    // Only root and the admin group give lists.
    let file = try agent.keyFile("list-2", try list(agent, 2, ["R", "OTHER"]))
    let denied = try agent.agentctl(["add-blocklist", file], asUser: 65534)
    #expect(denied.status == 77, "\(denied.stderr)")
    // The reserve it blocks is removed at once, and the journal says why.
    let added = try agent.agentctl(["add-blocklist", file])
    #expect(added.status == 0, "\(added.stderr)")
    #expect(added.stdout.contains("Blocklist 2 of test-issuer kept"), "\(added.stdout)")
    #expect(added.stdout.contains("reserve key \(agent.serial("R"))") && added.stdout.contains("removed"))
    let dropped = try agent.events(.reserveDropped, serial: agent.serial("R"))
    #expect(dropped.first?["LICENSE_REASON"] == "blocked")
    #expect(dropped.first?["PRIORITY"] == "4")
    // It cannot come back, and an older list cannot undo the newer one.
    let again = try agent.agentctl([
      "add-key", "--reserve",
      agent.keyFile("R-again", agent.key("R", nbf: AgentHarness.now(), exp: AgentHarness.now() + .days(90))),
    ])
    #expect(again.status == 1 && again.stderr.contains("key_blocked"), "\(again.stderr)")
    let older = try agent.agentctl(["add-blocklist", try agent.keyFile("list-1", try list(agent, 1, []))])
    #expect(older.status == 1 && older.stderr.contains("blocklist_rollback"), "\(older.stderr)")

    // A list that blocks the active key: shown, counted, and the operator told to replace it.
    let third = try agent.agentctl([
      "add-blocklist", try agent.keyFile("list-3", try list(agent, 3, ["A", "R"])),
    ])
    #expect(third.status == 0 && third.stdout.contains("active key \(agent.serial("A"))"), "\(third.stdout)")
    let status = try agent.agentctl(["status"])
    #expect(status.stdout.contains("BLOCKED by its issuer since"), "\(status.stdout)")
    #expect(status.stdout.contains("was blocked by its issuer"), "\(status.stdout)")
    let metrics = try String(contentsOfFile: agent.metricsFile, encoding: .utf8)
    #expect(
      metrics.contains(
        "license_agent_key_blocked{slot=\"server\",role=\"active\",serial=\"\(agent.serial("A"))\"} 1"),
      "\(metrics)")

    // A restart keeps the newer list; the directory's older one is ignored quietly.
    #expect(agent.stop() == 0)
    #expect(try agent.start())
    let ignored = try agent.waitForJournal([
      "_PID=\(agent.pid!)", "MESSAGE=A blocklist file is not newer than the list kept; it is ignored",
    ])
    #expect(ignored.count == 1)
    let stillRefused = try agent.agentctl([
      "check-key", "--reserve",
      agent.keyFile("R-3", agent.key("R", nbf: AgentHarness.now(), exp: AgentHarness.now() + .days(90))),
    ])
    #expect(stillRefused.status == 1 && stillRefused.stderr.contains("key_blocked"), "\(stillRefused.stderr)")
  }
}
