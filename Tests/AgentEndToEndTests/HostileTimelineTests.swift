import Foundation
import Glibc
import LicenseCore
import LicenseTestSupport
import Testing

/// The licensing timeline against hostile local users (issue 20): the built daemon as root
/// in a temporary folder, the attacker really unprivileged (`nobody` through setpriv, with
/// Fixtures/hostile_client.py), a promotion due during each flood, and a watchdog of 2 s
/// (the notify socket is the test's). Each flood ends the same way: root answered while it
/// goes on, the promotion not late (KEY_PROMOTED says how late; under a second it is not
/// reported late), the watchdog pinged as systemd would require, and the refusals and
/// drops logged a line per user and minute. Each failed on the code of 970efd9.
@Suite(.serialized) struct HostileTimelineTests {
  static let nobody: uid_t = 65534

  init() throws {
    try #require(AgentHarness.journalIsRunning, "no journal socket: start systemd-journald (.ci/run does)")
  }

  /// A started agent (watchdog 2 s) whose active key expires `seconds` from now, with a
  /// reserve; its socket reachable by other users.
  func agentWithAPromotionDue(in seconds: Int64) throws -> (AgentHarness, exp: Timestamp) {
    let agent = try AgentHarness()
    agent.environment["WATCHDOG_USEC"] = "2000000"
    try #require(try agent.start())
    chmod(agent.runtimeDirectory, 0o755)
    let exp = AgentHarness.now() + .seconds(seconds)
    try agent.keyPair(activeUntil: exp)
    return (agent, exp)
  }

  /// What every flood must leave intact; `flooder` is still flooding when this is called.
  func expectTheTimelineHeld(
    _ agent: AgentHarness, exp: Timestamp, flooder: HostileClientTests.HostileClient, since start: Double
  ) throws {
    // Root is answered while the flood goes on.
    let status = try agent.agentctl(["status", "--json"])
    #expect(status.status == 0, "\(status.stderr)")
    #expect(flooder.process.isRunning, "root was answered only once the flood had ended")
    AgentHarness.sleep(until: exp, margin: TimeSpan(microseconds: 500_000))
    let promoted = try #require(try agent.events(.keyPromoted, serial: agent.serial("R")).first)
    #expect(flooder.process.isRunning, "the promotion was announced during the flood")
    let delay = Int64(promoted["LICENSE_DELAY_USEC"] ?? "") ?? -1
    #expect(delay >= 0 && delay < 1_000_000, "the promotion came \(delay) µs after the expiry")
    #expect(promoted["MESSAGE"]?.contains("late") == false, "\(promoted["MESSAGE"] ?? "")")
    // The watchdog: no gap systemd would have killed the agent for (WATCHDOG_USEC, 2 s).
    let pings = agent.notify.arrivals(of: "WATCHDOG=1").filter { $0 >= start }
    let gaps = zip(pings.dropFirst(), pings).map { $0 - $1 }
    #expect(pings.count >= 3, "\(pings.count) pings")
    #expect((gaps.max() ?? 0) < 2.0, "gaps between watchdog pings: \(gaps.map { ($0 * 1000).rounded() }) ms")
  }

  @Test func aOnewayStreamOnOneConnectionDelaysNeitherThePromotionNorRootNorTheWatchdog() throws {
    let (agent, exp) = try agentWithAPromotionDue(in: 4)
    let start = ProcessInfo.processInfo.systemUptime
    let flooder = try HostileClientTests.HostileClient(
      socket: agent.socketPath, uid: Self.nobody, ["flood", "oneway", "9"])
    defer { flooder.release() }
    usleep(1_500_000)
    try expectTheTimelineHeld(agent, exp: exp, flooder: flooder, since: start)
    // The stream was read at the user's budget, not as fast as it was written.
    let sent = flooder.line()
    #expect(sent.hasPrefix("sent "), "\(sent)")
  }

  @Test func aStreamOfRefusedCallsIsLoggedOnceAndTheAgentsOwnEventsReachTheJournal() throws {
    let (agent, exp) = try agentWithAPromotionDue(in: 4)
    let start = ProcessInfo.processInfo.systemUptime
    let flooder = try HostileClientTests.HostileClient(
      socket: agent.socketPath, uid: Self.nobody, ["flood", "refused", "9"])
    defer { flooder.release() }
    usleep(1_500_000)
    try expectTheTimelineHeld(agent, exp: exp, flooder: flooder, since: start)
    #expect(flooder.line().hasPrefix("sent "))
    // One line for the whole stream (the next, with the count, a minute after it).
    let refused = try agent.journal(["_PID=\(agent.pid!)", "PEER_UID=65534"])
    #expect(refused.count == 1, "\(refused.count) lines: \(refused.prefix(3).map { $0["MESSAGE"] ?? "" })")
    #expect(refused.first?["MESSAGE"] == "State change refused: caller is not an admin")
    #expect(refused.first?["NOT_LOGGED_SINCE_LAST"] == "0")
  }

  @Test func messagesOfAMegabyteAreRefusedAtTheUsersLimitWithoutCostingTheTimeline() throws {
    let (agent, exp) = try agentWithAPromotionDue(in: 4)
    let start = ProcessInfo.processInfo.systemUptime
    let flooder = try HostileClientTests.HostileClient(
      socket: agent.socketPath, uid: Self.nobody, ["flood", "big", "9", "1000000"])
    defer { flooder.release() }
    usleep(1_500_000)
    try expectTheTimelineHeld(agent, exp: exp, flooder: flooder, since: start)
    let sent = flooder.line()
    #expect(sent.contains(" connections"), "\(sent)")
    // Each connection ended at the unprivileged limit (64 KiB), as a protocol error, logged
    // once for the whole flood.
    let dropped = try agent.journal(["_PID=\(agent.pid!)", "REASON=protocol_error"])
    #expect(dropped.count == 1, "\(dropped.count) lines")
    // Root may still send a large message: a CheckKey of 200 kB is refused as a key, not as
    // a message.
    let large = try agent.keyFile("large", String(repeating: "k", count: 200_000))
    let checked = try agent.agentctl(["check-key", large])
    #expect(checked.status == 1 && checked.stderr.contains("longer than 16384 bytes"), "\(checked.stderr)")
  }

  /// An admin's client that misbehaves (a consumer of the admin group reporting usage in a
  /// loop, 8 calls always in flight): before the fix the expiry timer, re-armed at the same
  /// instant after each call, dropped its firing and the promotion waited for the flood to
  /// end (42 s in the helper's attack).
  @Test func anAdminsFloodOfUsageReportsDelaysNeitherThePromotionNorTheWatchdog() throws {
    let (agent, exp) = try agentWithAPromotionDue(in: 4)
    let start = ProcessInfo.processInfo.systemUptime
    let flooder = try HostileClientTests.HostileClient(
      socket: agent.socketPath, uid: 0, ["admin-flood", "8", "9"])
    defer { flooder.release() }
    usleep(1_500_000)
    try expectTheTimelineHeld(agent, exp: exp, flooder: flooder, since: start)
    let answered = flooder.line()
    #expect(answered.hasPrefix("answered "), "\(answered)")
    // The band flapping 8, 12 of 10 units: logged when entered, not for every report (U2).
    let bands = try agent.journal(["MESSAGE_ID=\(EventKind.licenseLimitExceeded.messageID)"])
      .filter { $0["_PID"] == "\(agent.pid!)" }
    #expect(bands.count <= 2, "\(bands.count) band events")
  }
}
