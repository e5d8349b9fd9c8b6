import Foundation
import LicenseCore
import LicenseTestSupport
import Testing

/// Rules N1–N3 with the built agent: Monitor subscribers written independently (the
/// reference Python varlink client, streaming with "more"; a raw socket that does not read),
/// consumers confirming with agentctl, hooks run by the agent, events in the real journal.
@Suite struct ConsumerEndToEndTests {
  static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().path + "/Fixtures"
  static let nobody: uid_t = 65534

  /// A folder every user may write in (an unprivileged subscriber's output), removed after.
  final class SharedFolder {
    let path: String
    init() throws {
      path = NSTemporaryDirectory() + "consumers-\(UUID().uuidString.prefix(8))"
      try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
      chmod(path, 0o1777)
    }
    deinit { removeTemporaryDirectory(path) }
  }

  /// A subscriber process, ended by its id: a Python fixture, or `agentctl monitor --json`
  /// (whose lines are the replies).
  final class Subscriber {
    let process = Process()
    let out: String

    /// `program arguments`, as `uid` when given (through setpriv: a real unprivileged peer).
    init(
      program: String, _ arguments: [String], out: String, stdoutToOut: Bool = false, asUser uid: uid_t? = nil
    )
      throws
    {
      self.out = out
      _ = FileManager.default.createFile(atPath: out, contents: nil)
      chmod(out, 0o666)
      if let uid {
        process.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        process.arguments = ["--reuid=\(uid)", "--regid=\(uid)", "--clear-groups", "--", program] + arguments
      } else {
        process.executableURL = URL(fileURLWithPath: program)
        process.arguments = arguments
      }
      process.standardOutput = stdoutToOut ? FileHandle(forWritingAtPath: out) : FileHandle.nullDevice
      try process.run()
    }

    /// A fixture script: the PATH's python (with the varlink package) for root; the
    /// system's, standard library only, for another user (the PATH's may be in root's home).
    convenience init(_ script: String, _ arguments: [String], out: String, asUser uid: uid_t? = nil) throws {
      try self.init(
        program: uid == nil ? python3() : "/usr/bin/python3",
        [ConsumerEndToEndTests.fixtures + "/" + script] + arguments, out: out, asUser: uid)
    }

    deinit {
      if process.isRunning {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
      }
    }

    var lines: [[String: Any]] {
      ((try? String(contentsOfFile: out, encoding: .utf8)) ?? "").split(separator: "\n").compactMap {
        try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
      }
    }

    var replies: [[String: Any]] {
      lines.compactMap { $0["reply"] as? [String: Any] ?? ($0["sequence"] != nil ? $0 : nil) }
    }
    var events: [[String: String]] { replies.compactMap { $0["event"] as? [String: String] } }

    /// Waits until `done` holds of what it wrote (10 s at most).
    @discardableResult
    func wait(seconds: Double = 10, until done: (Subscriber) -> Bool) -> Bool {
      let deadline = Date().addingTimeInterval(seconds)
      while Date() < deadline {
        if done(self) { return true }
        usleep(20_000)
      }
      return done(self)
    }
  }

  /// The transition number of an event (`<state id>:<n>`).
  static func transition(_ event: [String: String]) -> Int? {
    event["LICENSE_TRANSITION"].flatMap { $0.split(separator: ":").last.flatMap { Int($0) } }
  }

  static func monitor(_ agent: AgentHarness, out: String, consumer: String? = nil, asUser uid: uid_t? = nil)
    throws -> Subscriber
  {
    let subscriber: Subscriber
    if let uid {
      // An unprivileged subscriber: agentctl monitor, as that user.
      subscriber = try Subscriber(
        program: agent.bin + "/agentctl",
        ["--socket", agent.socketPath, "monitor", "--json"] + (consumer.map { ["--consumer", $0] } ?? []),
        out: out, stdoutToOut: true, asUser: uid)
    } else {
      // The reference Python client, which can read the state file (durability).
      var arguments = [agent.socketPath, out, "--state-file", agent.stateFile]
      if let consumer { arguments += ["--consumer", consumer] }
      subscriber = try Subscriber("monitor_client.py", arguments, out: out)
    }
    #expect(subscriber.wait { !$0.replies.isEmpty }, "the first reply came: \(subscriber.lines)")
    return subscriber
  }

  @Test func N1_N2_everyDurableChangeReachesEverySubscriberInOrderAfterItIsDurable() throws {
    let agent = try AgentHarness(
      configuration: "[consumers]\nexpect = [\"protection-server\"]\nconfirm-within = \"2s\"\n")
    defer { agent.stop() }
    #expect(try agent.start())
    let shared = try SharedFolder()
    let root = try Self.monitor(agent, out: shared.path + "/root.jsonl", consumer: "protection-server")
    let nobody = try Self.monitor(agent, out: shared.path + "/nobody.jsonl", asUser: Self.nobody)
    // The first reply is the status, and nothing else.
    for subscriber in [root, nobody] {
      let first = try #require(subscriber.replies.first)
      #expect(first["sequence"] as? Int == 0)
      #expect(first["event"] == nil || first["event"] is NSNull)
      #expect((first["status"] as? [String: Any])?["slots"] as? [Any] != nil)
    }

    let now = AgentHarness.now()
    let expiry = Timestamp(microseconds: (now + .seconds(4)).microseconds / 1_000_000 * 1_000_000)
    let (active, reserve) = try agent.keyPair(activeUntil: expiry, addActive: false, addReserve: false)
    #expect(try agent.agentctl(["add-key", active]).status == 0)
    #expect(try agent.agentctl(["add-key", "--reserve", reserve]).status == 0)
    #expect(try agent.agentctl(["report-usage", "server", "10"]).status == 0)
    // A consumer named by anyone, confirmed only by root and the admin group.
    let denied = try agent.agentctl(
      ["confirm", "--consumer", "protection-server", "server", agent.serial("A")], asUser: Self.nobody)
    #expect(denied.status == 77, "\(denied.stderr)")
    // Not confirmed within 2 s: CONSUMER_NOT_UPDATED for the first key, once.
    let late = try agent.waitForJournal(
      ["MESSAGE_ID=\(EventKind.consumerNotUpdated.messageID)", "LICENSE_SERIAL=\(agent.serial("A"))"])
    #expect(late.count == 1)
    #expect(late.first?["PRIORITY"] == "3" && late.first?["LICENSE_CONSUMER"] == "protection-server")
    // The promotion at expiry, then the consumer confirms the new key in time.
    let promoted = try agent.events(.keyPromoted, serial: agent.serial("R"))
    #expect(promoted.count == 1)
    let confirmed = try agent.agentctl([
      "confirm", "--consumer", "protection-server", "server", agent.serial("R"),
    ])
    #expect(confirmed.status == 0 && confirmed.stdout.contains("Confirmed"), "\(confirmed.stderr)")
    let status = try agent.agentctl(["status"]).stdout
    #expect(status.contains("consumers protection-server confirmed"), "\(status)")
    let metrics = try String(contentsOfFile: agent.metricsFile, encoding: .utf8)
    #expect(
      metrics.contains(
        "license_agent_consumer_confirmed{consumer=\"protection-server\",slot=\"server\",serial=\"\(agent.serial("R"))\"} 1"
      ), "\(metrics)")
    _ = try agent.settle()

    // What the journal has, with a transition: every durable change, in order.
    let journal = try agent.journal(["_PID=\(agent.pid!)"]).filter {
      $0["LICENSE_TRANSITION"] != nil && $0["LICENSE_REPLAYED"] == nil
    }
    let expected = journal.map { "\($0["LICENSE_EVENT"] ?? "?") \($0["LICENSE_TRANSITION"] ?? "?")" }
    #expect(
      expected.map { String($0.split(separator: " ")[0]) } == [
        "ACTIVE_ADDED", "RESERVE_ADDED", "LICENSE_USAGE_HIGH", "CONSUMER_NOT_UPDATED", "KEY_PROMOTED",
        // The new active key is graded afresh (U2).
        "LICENSE_USAGE_HIGH",
      ], "\(expected)")
    for subscriber in [root, nobody] {
      #expect(subscriber.wait { $0.events.count >= expected.count })
      let seen = subscriber.events.map { "\($0["LICENSE_EVENT"] ?? "?") \($0["LICENSE_TRANSITION"] ?? "?")" }
      #expect(seen == expected, "no change skipped, repeated or reordered")
      #expect(subscriber.replies.map { $0["sequence"] as? Int } == Array(0..<subscriber.replies.count))
      // The confirmation logs nothing: a change with the status alone, and no event.
      #expect(subscriber.replies.count > expected.count + 1)
      // The event as the journal has it.
      for (delivered, logged) in zip(subscriber.events, journal) {
        for name in ["MESSAGE", "MESSAGE_ID", "PRIORITY", "LICENSE_SERIAL", "LICENSE_SLOT"] {
          #expect(delivered[name] == logged[name], "\(name)")
        }
      }
      // The status after KEY_PROMOTED has the reserve active.
      let afterPromotion = try #require(
        subscriber.replies.first { ($0["event"] as? [String: String])?["LICENSE_EVENT"] == "KEY_PROMOTED" })
      let slots = (afterPromotion["status"] as? [String: Any])?["slots"] as? [[String: Any]]
      #expect((slots?.first?["active"] as? [String: Any])?["serial"] as? String == agent.serial("R"))
    }
    // Durable before delivered: the state file held each change when its reply arrived.
    for line in root.lines where line["reply"] != nil {
      guard let event = (line["reply"] as? [String: Any])?["event"] as? [String: String],
        let number = Self.transition(event)
      else { continue }
      #expect((line["durableTransition"] as? Int ?? -1) >= number, "\(event["LICENSE_EVENT"] ?? "")")
    }
  }

  @Test func N1_aReconnectingSubscriberGetsTheStatusFirstAndNothingTwiceOrMissing() throws {
    let agent = try AgentHarness()
    defer { agent.stop() }
    #expect(try agent.start())
    let shared = try SharedFolder()
    let now = AgentHarness.now()
    let (active, reserve) = try agent.keyPair(
      activeUntil: now + .days(10), addActive: false, addReserve: false)
    let first = try Self.monitor(agent, out: shared.path + "/first.jsonl")
    #expect(try agent.agentctl(["add-key", active]).status == 0)
    #expect(first.wait { $0.events.count == 1 })
    // It goes away; a change happens meanwhile.
    kill(first.process.processIdentifier, SIGKILL)
    first.process.waitUntilExit()
    #expect(try agent.agentctl(["add-key", "--reserve", reserve]).status == 0)
    let missed = try agent.events(.reserveAdded, serial: agent.serial("R"))
    let missedNumber = try #require(Self.transition(missed[0]))
    // Reconnected: the first reply is the truth (the reserve it missed is in it)...
    let second = try Self.monitor(agent, out: shared.path + "/second.jsonl")
    let truth = try #require(second.replies.first?["status"] as? [String: Any])
    let slot = try #require((truth["slots"] as? [[String: Any]])?.first)
    #expect((slot["reserve"] as? [String: Any])?["serial"] as? String == agent.serial("R"))
    // ...and what follows starts right after it.
    #expect(try agent.agentctl(["report-usage", "server", "9"]).status == 0)
    #expect(second.wait { $0.events.count == 1 })
    #expect(second.events.first?["LICENSE_EVENT"] == "LICENSE_USAGE_HIGH")
    #expect(second.events.first.flatMap(Self.transition) == missedNumber + 1)
  }

  @Test func N1_aSubscriberThatDoesNotReadIsDroppedWithAnErrorAndDelaysNoOne() throws {
    let agent = try AgentHarness()
    defer { agent.stop() }
    #expect(try agent.start())
    let shared = try SharedFolder()
    let now = AgentHarness.now()
    let active = try agent.keyFile("A", agent.key("A", nbf: now - .days(1), exp: now + .days(10)))
    #expect(try agent.agentctl(["add-key", active]).status == 0)
    let one = try agent.keyFile("R1", agent.key("R1", nbf: now, exp: now + .days(90)))
    let two = try agent.keyFile("R2", agent.key("R2", nbf: now, exp: now + .days(91)))
    // An unprivileged subscriber that reads nothing, and one that reads.
    let go = shared.path + "/go"
    let slow = try Subscriber(
      "slow_subscriber.py", [agent.socketPath, shared.path + "/slow.jsonl", go],
      out: shared.path + "/slow.jsonl",
      asUser: Self.nobody)
    #expect(
      slow.wait { _ in
        ((try? String(contentsOfFile: shared.path + "/slow.jsonl", encoding: .utf8)) ?? "").hasPrefix(
          "subscribed")
      })
    let reader = try Self.monitor(agent, out: shared.path + "/reader.jsonl", asUser: Self.nobody)
    // Enough changes to fill what a subscriber may leave unread (each carries the status).
    let count = 300
    let churn = try runProcess(
      python3(), [Self.fixtures + "/churn.py", agent.socketPath, one, two, "\(count)"])
    #expect(churn.status == 0, "\(churn.stderr)")
    // The reader got every one, in order, while the other read nothing.
    #expect(reader.wait(seconds: 30) { $0.events.count == count }, "\(reader.events.count) of \(count)")
    #expect(reader.replies.map { $0["sequence"] as? Int } == Array(0...count))
    // The slow one now reads: what it was sent, in order, then the error, then the end.
    _ = FileManager.default.createFile(atPath: go, contents: nil)
    #expect(slow.wait(seconds: 30) { $0.lines.last?["end"] != nil })
    let lines = slow.lines
    let sequences = lines.compactMap { $0["sequence"] as? Int }
    #expect(!sequences.isEmpty && sequences == Array(0..<sequences.count), "in order, none skipped")
    #expect(sequences.count < count, "it was dropped before the end (\(sequences.count))")
    let error = try #require(lines.first { $0["error"] != nil })
    #expect(error["error"] as? String == "io.licenseagent.Agent.SubscriberDropped")
    let message = ((error["parameters"] as? [String: Any])?["message"] as? String) ?? ""
    #expect(message.contains("Reconnect"), "\(message)")
    // The agent says so, and goes on.
    let dropped = try agent.waitForJournal([
      "_PID=\(agent.pid!)",
      "MESSAGE=Control connection closed: a Monitor subscriber left too many changes unread",
    ])
    #expect(dropped.count == 1 && dropped.first?["PEER_UID"] == "\(Self.nobody)", "\(dropped)")
    #expect(try agent.agentctl(["status"]).status == 0)
  }

  @Test func N2_theReferenceConsumerFollowsATakeoverAndConfirmsInTime() throws {
    let agent = try AgentHarness(
      configuration: "[consumers]\nexpect = [\"reference\"]\nconfirm-within = \"3s\"\n")
    defer { agent.stop() }
    #expect(try agent.start())
    let enforced = agent.root + "/enforced"
    let consumer = Process()
    consumer.executableURL = URL(fileURLWithPath: python3())
    let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
      .deletingLastPathComponent().path
    consumer.arguments = [
      repository + "/examples/reference-consumer", "--socket", agent.socketPath, "--consumer", "reference",
      "--enforce-dir", enforced,
    ]
    consumer.standardOutput = FileHandle.nullDevice
    try consumer.run()
    defer {
      kill(consumer.processIdentifier, SIGKILL)
      consumer.waitUntilExit()
    }
    let now = AgentHarness.now()
    let expiry = Timestamp(microseconds: (now + .seconds(3)).microseconds / 1_000_000 * 1_000_000)
    try agent.keyPair(activeUntil: expiry)
    #expect(try agent.events(.keyPromoted, serial: agent.serial("R")).count == 1)
    // It enforces the promoted key and confirmed it: no CONSUMER_NOT_UPDATED, then or later.
    let deadline = Date().addingTimeInterval(10)
    var confirmed = false
    while Date() < deadline && !confirmed {
      let status = try agent.agentctl(["status", "--json"]).stdout
      confirmed = status.contains("\"confirmedSerial\":\"\(agent.serial("R"))\"")
      usleep(50_000)
    }
    #expect(confirmed)
    #expect(
      (try? String(contentsOfFile: enforced + "/server", encoding: .utf8)) == agent.serial("R") + "\n")
    AgentHarness.sleep(until: expiry + .seconds(4))
    _ = try agent.settle()
    #expect(
      try agent.journal(["_PID=\(agent.pid!)", "MESSAGE_ID=\(EventKind.consumerNotUpdated.messageID)"])
        .isEmpty)
  }

  @Test func N3_hooksRunAfterEachChangeSupervisedAndChangeNothing() throws {
    let agent = try AgentHarness(configuration: "[hooks]\ntimeout = \"1s\"\n")
    defer { agent.stop() }
    let hooks = agent.configurationDirectory + "/hooks.d"
    try FileManager.default.createDirectory(atPath: hooks, withIntermediateDirectories: true)
    let record = agent.root + "/record"
    let leftover = agent.root + "/leftover.pid"
    func hook(_ name: String, _ body: String, mode: mode_t = 0o755) throws {
      try "#!/bin/sh\n\(body)\n".write(toFile: hooks + "/" + name, atomically: true, encoding: .utf8)
      chmod(hooks + "/" + name, mode)
    }
    // Records what it is given: the environment, then standard input.
    try hook(
      "10-record",
      "{ echo \"$LICENSE_EVENT|$LICENSE_SLOT|$LICENSE_SERIAL|$LICENSE_TRANSITION\"; cat; echo; } >>\(record)")
    // Hangs: killed at the timeout, with its whole group.
    try hook("20-hang", "exec sleep 300")
    // Leaves a child behind (in its group): killed when the hook exits.
    try hook("30-fork", "sleep 300 </dev/null >/dev/null 2>&1 &\necho $! >\(leftover)\nexit 0")
    // Fails.
    try hook("40-fail", "echo 'cannot reach the protection service' >&2\nexit 3")
    // Not run: writable by others, and a name run-parts would skip.
    try hook("50-unsafe", "touch \(agent.root)/unsafe-ran", mode: 0o777)
    try hook("60-skip.sh", "touch \(agent.root)/skip-ran")
    #expect(try agent.start())
    let now = AgentHarness.now()
    let (active, reserve) = try agent.keyPair(
      activeUntil: now + .days(10), addActive: false, addReserve: false)
    #expect(try agent.agentctl(["add-key", active]).status == 0)
    // The change is not held by its hooks: the agent answers while they run (below: the
    // second change is in the journal before the first change's hanging hook was killed).
    #expect(try agent.agentctl(["add-key", "--reserve", reserve]).status == 0)

    // Both changes reached the hooks, in order, with the event as the journal has it.
    let deadline = Date().addingTimeInterval(20)
    var lines: [Substring] = []
    while Date() < deadline {
      lines = ((try? String(contentsOfFile: record, encoding: .utf8)) ?? "").split(separator: "\n")
      if lines.count >= 4 { break }
      usleep(50_000)
    }
    try #require(lines.count >= 4, "\(lines)")
    let added = try agent.events(.activeAdded, serial: agent.serial("A"))[0]
    #expect(
      lines[0] == "ACTIVE_ADDED|server|\(agent.serial("A"))|\(added["LICENSE_TRANSITION"] ?? "?")",
      "\(lines[0])")
    let input = try #require(
      try JSONSerialization.jsonObject(with: Data(lines[1].utf8)) as? [String: String])
    for name in [
      "MESSAGE", "MESSAGE_ID", "PRIORITY", "LICENSE_SERIAL", "LICENSE_EXPIRES_AT", "LICENSE_TRANSITION",
    ] {
      #expect(input[name] == added[name], "\(name)")
    }
    #expect(lines[2].hasPrefix("RESERVE_ADDED|server|\(agent.serial("R"))|"))

    // Supervised: the hanging one killed at its timeout, the failing one logged, each once a
    // minute at most; nothing left behind; the unsafe and misnamed ones never run.
    let killed = try agent.waitForJournal(
      ["MESSAGE=Hook killed after 1s ([hooks] timeout), with its whole process group; the change stands"])
    #expect(killed.count == 1, "two changes, one line (rate-limited): \(killed.count)")
    let order = try agent.journal(["_PID=\(agent.pid!)"]).compactMap { $0["MESSAGE"] }
    let reserveAdded = order.firstIndex { $0.hasPrefix("Key \(agent.serial("R")) is now the reserve") }
    let hookKilled = order.firstIndex { $0.hasPrefix("Hook killed after 1s") }
    #expect(reserveAdded != nil && hookKilled != nil && reserveAdded! < hookKilled!, "\(order)")
    let failed = try agent.waitForJournal(["MESSAGE=Hook failed; the change stands"])
    #expect(
      failed.first?["EXIT_STATUS"] == "3" && failed.first?["STDERR"] == "cannot reach the protection service")
    let unsafe = try agent.waitForJournal(
      [
        "MESSAGE=Hook not run: it must be owned by root (or the agent's user) and writable by no one else"
      ])
    #expect(unsafe.first?["HOOK"] == hooks + "/50-unsafe")
    let pid = try #require(
      pid_t(
        try String(contentsOfFile: leftover, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines))
    )
    #expect(kill(pid, 0) != 0, "the hook's child was killed")
    #expect(!FileManager.default.fileExists(atPath: agent.root + "/unsafe-ran"))
    #expect(!FileManager.default.fileExists(atPath: agent.root + "/skip-ran"))
    // And the changes stand.
    let status = try agent.agentctl(["status", "--json"]).stdout
    #expect(status.contains(agent.serial("R")))
  }
}
