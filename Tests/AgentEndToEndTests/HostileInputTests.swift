import Foundation
import Glibc
import LicenseCore
import LicenseTestSupport
import Testing

/// What enters the agent from outside, besides the control socket (issue 20): a client
/// program's reply, a duration in the configuration, a client that tries to escape or to
/// use the agent's descriptors, a journal entry forged by another user, files put where
/// the agent reads or writes, and a journal that loses what it took. The built daemon, real
/// files, the real journal. Each failed on the code of 970efd9.
@Suite(.serialized) struct HostileInputTests {
  static let plugin =
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().path + "/Fixtures/exec_plugin.sh"
  static let fakeJournald =
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().path + "/Fixtures/fake_journald.py"
  static let hostileClient =
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().path + "/Fixtures/hostile_client.py"
  static let code = "ABCDE-12345-FGHIJ-67890"

  init() throws {
    try #require(AgentHarness.journalIsRunning, "no journal socket: start systemd-journald (.ci/run does)")
  }

  /// An agent whose activation client is Fixtures/exec_plugin.sh in `mode` (its folder
  /// holds a key of 3 s for the first activation, then one of a day for the renewal at
  /// its expiry), started, with the code activated.
  func execAgent(mode: String, launcher: [String] = [], command: String = plugin) throws -> (
    AgentHarness, pluginDir: String
  ) {
    let agent = try AgentHarness()
    let pluginDir = agent.root + "/plugin"
    try FileManager.default.createDirectory(atPath: pluginDir, withIntermediateDirectories: true)
    agent.environment["PLUGIN_DIR"] = pluginDir
    agent.launcher = launcher
    let now = AgentHarness.now()
    try agent.key("EXEC-1", nbf: now - .days(1), exp: now + .seconds(3)).write(
      toFile: pluginDir + "/key", atomically: true, encoding: .utf8)
    try """
    [activation]
    client = "exec"
    command = ["\(command)"]
    renew-before = "0s"
    attempt-timeout = "3s"
    retry-initial = "300ms"
    retry-max = "1s"
    alert-after = "3s"
    """.writeAsConfiguration(of: agent)
    try #require(try agent.start())
    let activated = try agent.agentctl(["activate", "--code-stdin"], input: Self.code)
    try #require(activated.status == 0, "\(activated.stderr)")
    // The key of the renewal at expiry.
    try agent.key("EXEC-2", nbf: now - .days(1), exp: now + .days(1)).write(
      toFile: pluginDir + "/key", atomically: true, encoding: .utf8)
    try mode.write(toFile: pluginDir + "/mode", atomically: true, encoding: .utf8)
    return (agent, pluginDir)
  }

  /// A client's refusal whose message is `bytes` long: what the alert, every status and the
  /// state file say, all of them small.
  @Test(arguments: [50_000, 1_000_000])
  func aLongMessageFromTheClientIsBoundedInTheStatusTheStateAndTheJournal(bytes: Int) throws {
    let (agent, _) = try execAgent(mode: "huge \(bytes)")
    // The renewal at expiry gets a permanent refusal.
    let alert = try #require(
      try agent.waitForJournal(
        ["MESSAGE_ID=\(EventKind.manualActivationRequired.messageID)", "_PID=\(agent.pid!)"], seconds: 20
      ).first)
    let error = try #require(alert["LICENSE_ERROR"])
    #expect(error.count <= 366, "\(error.prefix(80))")
    if bytes < 64 << 10 {
      // Read whole: the code kept, the message cut at 300 characters.
      #expect(error.hasPrefix("code_blocked: mmm") && error.hasSuffix("…"), "\(error.prefix(80))")
    } else {
      // More than the 64 KiB read of a reply: not a reply at all.
      #expect(error == "the activation client failed (exit 1)", "\(error.prefix(80))")
    }
    #expect((alert["MESSAGE"] ?? "").utf8.count < 2_000)
    // Every caller's status stays small, and says the error once.
    let status = try agent.agentctl(["status", "--json"])
    #expect(status.stdout.utf8.count < 16_000, "\(status.stdout.utf8.count) bytes")
    #expect(status.stdout.components(separatedBy: error).count == 2, "the error once")
    let asNobody = try agent.agentctl(["status", "--json"], asUser: 65534)
    #expect(asNobody.stdout.utf8.count < 16_000)
    // The state file, rewritten at every save, too.
    let size = (try FileManager.default.attributesOfItem(atPath: agent.stateFile)[.size] as? Int) ?? -1
    #expect(size > 0 && size < 16_000, "state.json is \(size) bytes")
  }

  @Test func aDurationOfThreeHundredThousandYearsIsRefusedWithItsFileLineAndKey() throws {
    let agent = try AgentHarness()
    try "[activation]\nalert-after = \"106751990d\"\n".writeAsConfiguration(of: agent)
    let file = agent.configurationDirectory + "/agent.toml"
    let checked = try runProcess(agent.bin + "/license-agent", ["--check-config", file])
    #expect(checked.status == 78)
    #expect(
      checked.stderr.contains("\(file):2: activation.alert-after is \"106751990d\", longer than 100 years"),
      "\(checked.stderr)")
    // And at start: the agent stops with the same message instead of crashing at expiry.
    #expect(try agent.start() == false)
    agent.process?.waitUntilExit()
    #expect(agent.process?.terminationStatus == 78)
    let said = try agent.waitForJournal(["_PID=\(agent.process?.processIdentifier ?? 0)"])
    let log = (try? String(contentsOfFile: agent.logFile, encoding: .utf8)) ?? ""
    #expect(
      said.contains { ($0["MESSAGE"] ?? "").contains("activation.alert-after") }
        || log.contains("activation.alert-after"), "\(said.map { $0["MESSAGE"] ?? "" }) \(log)")
  }

  @Test func aClientsEscapedChildIsReapedWhenItExits() throws {
    let (agent, pluginDir) = try execAgent(mode: "setsid")
    // The renewal at expiry: the client answers, leaving a child in a session of its own
    // (out of its process group, which is killed); it exits a second later.
    let renewed = try agent.waitForJournal(
      ["MESSAGE_ID=\(EventKind.activationRenewed.messageID)", "_PID=\(agent.pid!)"], seconds: 20)
    try #require(renewed.count == 1, "the renewal at expiry")
    let pids = try String(contentsOfFile: pluginDir + "/pids", encoding: .utf8).split(separator: " ")
    let child = try #require(pids.last.flatMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) })
    // Gone, not a zombie of the agent (its subreaper).
    var state = "?"
    for _ in 0..<100 {
      state = Self.processState(child)
      if state == "gone" { break }
      usleep(100_000)
    }
    #expect(state == "gone", "the escaped child is \(state)")
    #expect(Self.zombieChildren(of: agent.pid!).isEmpty, "zombies: \(Self.zombieChildren(of: agent.pid!))")
  }

  /// "gone", or the state letter of /proc/PID/stat (Z: a zombie).
  static func processState(_ pid: pid_t) -> String {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
      let close = stat.lastIndex(of: ")")
    else { return "gone" }
    return String(stat[stat.index(close, offsetBy: 2)])
  }

  static func zombieChildren(of parent: pid_t) -> [pid_t] {
    let pids = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap {
      pid_t($0)
    }
    return pids.filter { pid in
      guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
        let close = stat.lastIndex(of: ")")
      else { return false }
      let fields = stat[stat.index(close, offsetBy: 2)...].split(separator: " ")
      return fields.count > 1 && fields[0] == "Z" && pid_t(fields[1]) == parent
    }
  }

  @Test func aClientGetsNoDescriptorOfTheAgentButItsThreePipes() throws {
    // The agent holds a descriptor it did not open close-on-exec (fd 7, as a service manager
    // may pass one, or a file read by a library): its client must not get it.
    let (agent, pluginDir) = try execAgent(
      mode: "ok", launcher: ["/bin/sh", "-c", "exec 7</etc/hostname; exec \"$0\""],
      command: URL(fileURLWithPath: #filePath).deletingLastPathComponent().path + "/Fixtures/fd_client.py")
    let renewed = try agent.waitForJournal(
      ["MESSAGE_ID=\(EventKind.activationRenewed.messageID)", "_PID=\(agent.pid!)"], seconds: 20)
    try #require(renewed.count == 1, "the renewal at expiry")
    // The renewal's client (Fixtures/fd_client.py) listed its descriptors first thing.
    let data = try Data(contentsOf: URL(fileURLWithPath: pluginDir + "/fds"))
    let open = try #require(try JSONSerialization.jsonObject(with: data) as? [String: String])
    #expect(Set(open.keys) == ["0", "1", "2"], "\(open)")
    #expect(open.values.allSatisfy { $0.hasPrefix("pipe:") }, "\(open)")
  }

  @Test func aJournalEntryForgedByAnotherUserDoesNotCountAsTheAgentsAnnouncement() throws {
    // An event left in the outbox: the agent's journal refuses entries (a dead socket in
    // its own mount namespace), so ACTIVE_ADDED stays there.
    let agent = try AgentHarness()
    let directory = agent.root + "/journal"
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    let dead = try runProcess("/usr/bin/python3", [Self.fakeJournald, directory + "/socket", "--dead"])
    try #require(dead.status == 0, "\(dead.stderr)")
    agent.environment["LICENSE_AGENT_LOG"] = "journal"
    agent.launcher = [
      "/usr/bin/unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
      "mount --bind '\(directory)' /run/systemd/journal && exec \"$0\"",
    ]
    try #require(try agent.start())
    let key = try agent.keyFile(
      "a", agent.key("A", nbf: AgentHarness.now() - .days(1), exp: AgentHarness.now() + .days(40)))
    #expect(try agent.agentctl(["add-key", key]).status == 0)
    agent.killHard()
    let state = try #require(
      try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: agent.stateFile)))
        as? [String: Any])
    let event = try #require((state["outbox"] as? [[String: Any]])?.first)
    let transition = "\(state["stateID"] as? String ?? ""):\(event["transitionID"] as? Int ?? -1)"
    // nobody writes an entry with the event's transition, MESSAGE_ID and every field.
    var fields = [
      "MESSAGE=forged", "SYSLOG_IDENTIFIER=license-agent", "MESSAGE_ID=\(EventKind.activeAdded.messageID)",
      "LICENSE_TRANSITION=\(transition)",
    ]
    for field in event["fields"] as? [[String: String]] ?? [] {
      fields.append("\(field["name"]!)=\(field["value"]!)")
    }
    let forged = try runProcess(
      "/usr/bin/setpriv",
      [
        "--reuid=65534", "--regid=65534", "--clear-groups", "--", "/usr/bin/python3", Self.hostileClient, "-",
        "forge",
      ]
        + fields)
    #expect(forged.stdout == "forged\n", "\(forged.stderr)")
    _ = try agent.waitForJournal(["LICENSE_TRANSITION=\(transition)", "_UID=65534"])
    // The agent, started with the real journal, sends the event itself.
    agent.launcher = []
    try #require(try agent.start())
    let sent = try agent.waitForJournal(["LICENSE_TRANSITION=\(transition)", "_PID=\(agent.pid!)"])
    #expect(sent.count == 1, "the agent announced ACTIVE_ADDED itself")
    #expect(sent.first?["MESSAGE_ID"] == EventKind.activeAdded.messageID)
  }

  @Test func aFIFOWhereTheAgentWritesOrReadsBlocksNothing() throws {
    let agent = try AgentHarness()
    // Where the agent wrote its metrics' temporary file (license-agent.prom.tmp), and a
    // trusted issuer that is a FIFO.
    #expect(mkfifo(agent.metricsFile + ".tmp", 0o644) == 0)
    #expect(mkfifo(agent.configurationDirectory + "/trusted-issuers/x.jwk", 0o644) == 0)
    try #require(try agent.start())
    let key = try agent.keyFile(
      "a", agent.key("A", nbf: AgentHarness.now() - .days(1), exp: AgentHarness.now() + .days(40)))
    #expect(try agent.agentctl(["add-key", key]).status == 0)
    // The metrics are written all the same.
    var written = ""
    for _ in 0..<100 where !written.contains(agent.serial("A")) {
      usleep(50_000)
      written = (try? String(contentsOfFile: agent.metricsFile, encoding: .utf8)) ?? ""
    }
    #expect(written.contains(agent.serial("A")))
    // A reload reads the trust directory: the FIFO is reported, the agent goes on answering.
    kill(agent.pid!, SIGHUP)
    let ignored = try agent.waitForJournal([
      "_PID=\(agent.pid!)", "MESSAGE=Ignored a file of the trust directory",
    ])
    #expect(ignored.first?["PROBLEM"]?.contains("not a regular file") == true, "\(ignored)")
    #expect(try agent.agentctl(["status"]).status == 0)
    // And it stops at once (removing its metrics never waits on the FIFO).
    #expect(agent.stop() == 0)
    #expect(!FileManager.default.fileExists(atPath: agent.metricsFile))
  }

  @Test func eventsAJournalTookAndLostAreSentAgainOnceAfterAnUncleanStop() throws {
    // A journal that takes every entry and keeps none (Fixtures/fake_journald.py, bound in
    // the agent's mount namespace): what a power cut does to entries journald had not
    // synced yet.
    let agent = try AgentHarness()
    let directory = agent.root + "/journal"
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    let receiver = Process()
    receiver.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
    receiver.arguments = [Self.fakeJournald, directory + "/socket"]
    receiver.standardOutput = FileHandle.nullDevice
    try receiver.run()
    defer {
      kill(receiver.processIdentifier, SIGKILL)
      receiver.waitUntilExit()
    }
    for _ in 0..<100 where !FileManager.default.fileExists(atPath: directory + "/socket") { usleep(20_000) }
    // First, one event the real journal does hold (sent before the journal was swapped).
    try #require(try agent.start())
    let held = try agent.keyFile(
      "h", agent.key("H", nbf: AgentHarness.now() - .days(1), exp: AgentHarness.now() + .days(30)))
    #expect(try agent.agentctl(["add-key", held]).status == 0)
    _ = try agent.events(.activeAdded, serial: agent.serial("H"))
    #expect(agent.stop() == 0)
    agent.environment["LICENSE_AGENT_LOG"] = "journal"
    agent.launcher = [
      "/usr/bin/unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
      "mount --bind '\(directory)' /run/systemd/journal && exec \"$0\"",
    ]
    try #require(try agent.start())
    let lost = try agent.keyFile(
      "l", agent.key("L", nbf: AgentHarness.now() - .days(1), exp: AgentHarness.now() + .days(40)))
    #expect(try agent.agentctl(["add-key", lost]).status == 0)
    // Taken (acknowledged: the outbox is empty), then the machine loses power.
    var outbox = -1
    for _ in 0..<100 where outbox != 0 {
      usleep(50_000)
      let state = try? JSONSerialization.jsonObject(
        with: Data(contentsOf: URL(fileURLWithPath: agent.stateFile)))
      outbox = ((state as? [String: Any])?["outbox"] as? [Any])?.count ?? -1
    }
    #expect(outbox == 0)
    agent.killHard()
    // Started again with the real journal: ACTIVE_ADDED of L is not there, and is sent
    // again, once, with LICENSE_REPLAYED=1 and its transition; H's is there, and is not.
    agent.launcher = []
    try #require(try agent.start())
    let replayed = try agent.events(.activeAdded, serial: agent.serial("L"))
    #expect(replayed.count == 1)
    #expect(replayed.first?["LICENSE_REPLAYED"] == "1")
    #expect(replayed.first?["LICENSE_TRANSITION"]?.isEmpty == false)
    _ = try agent.settle()
    #expect(
      try agent.journal([
        "MESSAGE_ID=\(EventKind.activeAdded.messageID)", "LICENSE_SERIAL=\(agent.serial("H"))",
      ]).count == 1)
    // Never twice: another unclean stop finds it sent again already.
    agent.killHard()
    try #require(try agent.start())
    _ = try agent.settle()
    #expect(
      try agent.journal([
        "MESSAGE_ID=\(EventKind.activeAdded.messageID)", "LICENSE_SERIAL=\(agent.serial("L"))",
      ]).count == 1)
  }
}
