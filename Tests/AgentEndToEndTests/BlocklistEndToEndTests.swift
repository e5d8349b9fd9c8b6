import Foundation
import LicenseCore
import LicenseTestSupport
import Testing

/// Rules B1–B3 with the built agent: lists from the blocklist directory and from
/// `agentctl add-blocklist`, kept across a restart, a blocked reserve dropped in the real
/// journal, a blocked key refused, and a blocked active key's grace ending with the reserve
/// taking over, measured like any promotion.
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

  /// The list blocking `names`, as a file, given with agentctl (root).
  func block(_ agent: AgentHarness, _ seq: Int, _ names: [String]) throws -> String {
    let added = try agent.agentctl([
      "add-blocklist", try agent.keyFile("list-\(seq)", try list(agent, seq, names)),
    ])
    #expect(added.status == 0, "\(added.stderr)")
    return added.stdout
  }

  @Test func B2_theReserveTakesOverAtTheGraceEndDurableBeforeAnnouncedAndMeasured() throws {
    let agent = try AgentHarness(configuration: "[blocking]\ngrace = \"3s\"\n")
    defer { agent.stop() }
    #expect(try agent.start())
    try agent.keyPair(activeUntil: AgentHarness.now() + .days(10))
    let before = AgentHarness.now()
    let reply = try block(agent, 1, ["A"])
    let after = AgentHarness.now()
    #expect(reply.contains("keeps working until the end of its grace"), "\(reply)")
    // KEY_BLOCKED, critical, at once, with the grace's end (3 s after the agent learned).
    let blocked = try #require(try agent.events(.keyBlocked, serial: agent.serial("A")).first)
    #expect(blocked["PRIORITY"] == "2" && blocked["LICENSE_ROLE"] == "active")
    #expect(blocked["LICENSE_REASON"] == "resold" && blocked["LICENSE_BLOCKED_SINCE"] != nil)
    let graceEnd = try #require(blocked["LICENSE_GRACE_ENDS_AT"].flatMap(Timestamp.init(rfc3339:)))
    #expect(graceEnd >= before + .seconds(3) - .seconds(1) && graceEnd <= after + .seconds(3))
    let status = try agent.agentctl(["status"])
    #expect(status.stdout.contains("grace ends"), "\(status.stdout)")
    let metrics = try String(contentsOfFile: agent.metricsFile, encoding: .utf8)
    #expect(
      metrics.contains(
        "license_agent_key_grace_end_timestamp_seconds{slot=\"server\",serial=\"\(agent.serial("A"))\"}"),
      "\(metrics)")

    // At the grace's end the reserve takes over: never before, once, with its delay.
    let promoted = try #require(try agent.events(.keyPromoted, serial: agent.serial("R")).first)
    #expect(promoted["LICENSE_PREVIOUS_SERIAL"] == agent.serial("A"))
    let received = try #require(promoted["__REALTIME_TIMESTAMP"].flatMap(Int64.init))
    #expect(received >= graceEnd.microseconds, "never early")
    let delay = try #require(promoted["LICENSE_DELAY_USEC"].flatMap(Int64.init))
    #expect(delay >= 0 && received - graceEnd.microseconds >= delay, "measured from the grace's end")
    // The state held the promotion before the journal had it (P2), and a restart repeats nothing.
    let state = try String(contentsOfFile: agent.stateDirectory + "/state.json", encoding: .utf8)
    #expect(
      state.contains(agent.serial("R")) && !state.contains("\"graceEndsAt\""), "the block went with the key")
    #expect(agent.stop() == 0)
    #expect(try agent.start())
    _ = try agent.settle()
    #expect(
      try agent.journal([
        "MESSAGE_ID=\(EventKind.keyPromoted.messageID)", "LICENSE_SERIAL=\(agent.serial("R"))",
      ]).count == 1)
  }

  @Test func B2_aReserveValidOnlyAfterTheGraceLeavesTheSlotExpiredUntilThenAcrossARestart() throws {
    let agent = try AgentHarness(configuration: "[blocking]\ngrace = \"2s\"\n")
    defer { agent.stop() }
    #expect(try agent.start())
    let nbf = AgentHarness.now() + .seconds(6)
    try agent.keyPair(activeUntil: AgentHarness.now() + .days(10), reserveFrom: nbf)
    _ = try block(agent, 1, ["A"])
    let expired = try #require(try agent.events(.licenseExpired, serial: agent.serial("A")).first)
    #expect(expired["PRIORITY"] == "2")
    #expect(expired["MESSAGE"]?.contains(agent.serial("R")) == true, "\(expired)")
    let status = try agent.agentctl(["status"])
    #expect(status.status == 2 && status.stdout.contains("EXPIRED"), "\(status.stdout)")
    let metrics = try String(contentsOfFile: agent.metricsFile, encoding: .utf8)
    #expect(metrics.contains("license_agent_slot_expired{slot=\"server\"} 1"), "\(metrics)")
    // A restart while expired: still expired, nothing logged again, the reserve at its nbf.
    #expect(agent.stop() == 0)
    #expect(try agent.start())
    let promoted = try #require(try agent.events(.keyPromoted, serial: agent.serial("R")).first)
    let received = try #require(promoted["__REALTIME_TIMESTAMP"].flatMap(Int64.init))
    #expect(received >= nbf.microseconds, "not before the reserve is valid")
    #expect(
      try agent.journal([
        "MESSAGE_ID=\(EventKind.licenseExpired.messageID)", "LICENSE_SERIAL=\(agent.serial("A"))",
      ]).count == 1)
    #expect(try agent.agentctl(["status"]).status == 0)
  }

  /// Issue 25's attack: lists that unblock and then re-block a key, placed together in the
  /// directory, must not give it a new grace on reload: only each issuer's highest list is
  /// applied.
  @Test func B2_aReloadAppliesOnlyTheHighestListOfEachIssuerSoTheGraceDoesNotMove() throws {
    let agent = try AgentHarness(configuration: "[blocking]\ngrace = \"1h\"\n")
    defer { agent.stop() }
    #expect(try agent.start())
    try agent.keyPair(activeUntil: AgentHarness.now() + .days(10))
    _ = try block(agent, 5, ["A"])
    func graceEnd() throws -> String? {
      let status = try agent.agentctl(["status", "--json"])
      let object = try JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any]
      let slot = (object?["slots"] as? [[String: Any]])?.first
      return (slot?["activeBlocked"] as? [String: Any])?["graceEndsAt"] as? String
    }
    let before = try #require(try graceEnd())
    let directory = agent.configurationDirectory + "/blocklists"
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    try list(agent, 6, []).write(toFile: directory + "/vendor-006.jws", atomically: true, encoding: .utf8)
    try list(agent, 7, ["A"]).write(toFile: directory + "/vendor-007.jws", atomically: true, encoding: .utf8)
    kill(agent.pid!, SIGHUP)
    let kept = try agent.waitForJournal(["_PID=\(agent.pid!)", "MESSAGE=Blocklist kept", "SEQUENCE=7"])
    #expect(kept.count == 1)
    #expect(try agent.journal(["_PID=\(agent.pid!)", "MESSAGE=Blocklist kept", "SEQUENCE=6"]).isEmpty)
    #expect(try graceEnd() == before, "the grace's end did not move")
    #expect(
      try agent.journal([
        "MESSAGE_ID=\(EventKind.keyBlocked.messageID)", "LICENSE_SERIAL=\(agent.serial("A"))",
      ]).count == 1)
  }
}
