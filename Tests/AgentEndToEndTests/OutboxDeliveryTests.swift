import Foundation
import Glibc
import LicenseCore
import LicenseTestSupport
import Testing

/// Exactly once, really: the agent's journal socket is one the test controls
/// (Fixtures/fake_journald.py, bound over /run/systemd/journal in the agent's own mount
/// namespace; needs root). While it refuses entries (bound, then closed: ECONNREFUSED, as
/// when journald restarts), events stay in the persisted outbox; once it takes them, each
/// arrives once, exactly as the outbox held it, and only then is it acknowledged.
@Suite(.serialized) struct OutboxDeliveryTests {
  static let fakeJournald =
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().path + "/Fixtures/fake_journald.py"

  /// An agent whose /run/systemd/journal is `journalDirectory`, where a refusing socket is.
  func agentWithARefusingJournal() throws -> (AgentHarness, journalDirectory: String) {
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
    let started = try agent.start()
    try #require(started, "\((try? String(contentsOfFile: agent.logFile, encoding: .utf8)) ?? "")")
    return (agent, directory)
  }

  /// The outbox of the agent's state file.
  func outbox(_ agent: AgentHarness) throws -> [[String: Any]] {
    let data = try #require(FileManager.default.contents(atPath: agent.stateFile))
    let state = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
    return state["outbox"] as? [[String: Any]] ?? []
  }

  func kinds(_ events: [[String: Any]]) -> [String] { events.compactMap { $0["kind"] as? String } }

  /// Polls `condition` (a state the agent reaches, not a duration) for up to `seconds`.
  func eventually(_ seconds: Double = 15, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
      if try condition() { return true }
      usleep(50_000)
    }
    return try condition()
  }

  @Test func refusedEventsStayInTheOutboxAndArriveOnceExactlyAsStored() throws {
    let (agent, directory) = try agentWithARefusingJournal()
    let exp = AgentHarness.now() + .seconds(2)
    try agent.keyPair(activeUntil: exp)
    // The promotion is durable, and its KEY_PROMOTED waits in the outbox behind the
    // refused ACTIVE_ADDED and RESERVE_ADDED.
    #expect(try eventually { kinds(try outbox(agent)).contains("KEY_PROMOTED") })
    // The promotion is written twice (the decision, then its measured delay in the outbox,
    // before anything is sent): what is stored once both are done.
    var stored = try outbox(agent)
    for _ in 0..<50 {
      usleep(300_000)
      let again = try outbox(agent)
      if NSArray(array: again).isEqual(to: stored) { break }
      stored = again
    }
    #expect(kinds(stored) == ["ACTIVE_ADDED", "RESERVE_ADDED", "KEY_PROMOTED"])
    // The journal comes back.
    let receiver = Process()
    receiver.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
    receiver.arguments = [Self.fakeJournald, directory + "/socket"]
    let output = Pipe()
    receiver.standardOutput = output
    try receiver.run()
    defer {
      // SIGKILL: the test runner's children may have SIGTERM blocked.
      kill(receiver.processIdentifier, SIGKILL)
      receiver.waitUntilExit()
    }
    let lines = LineReader(output.fileHandleForReading)
    #expect(lines.next() == "ready")
    var entries: [[String: String]] = []
    _ = eventually {
      while let line = lines.next(timeout: 0.05) {
        if let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: String] {
          entries.append(object)
        }
      }
      return entries.contains { $0["LICENSE_EVENT"] == "KEY_PROMOTED" }
    }
    // Acknowledged once taken: the outbox is empty on disk.
    #expect(try eventually { try outbox(agent).isEmpty })
    let events = entries.filter { $0["MESSAGE_ID"] != nil && $0["LICENSE_EVENT"] != nil }
    #expect(events.map { $0["LICENSE_EVENT"]! } == ["ACTIVE_ADDED", "RESERVE_ADDED", "KEY_PROMOTED"])
    // Each exactly as the outbox held it: message, priority, every field and its value.
    for (entry, event) in zip(events, stored) {
      #expect(entry["MESSAGE"] == event["message"] as? String)
      #expect(entry["PRIORITY"] == (event["priority"] as? Int).map(String.init))
      let fields = event["fields"] as? [[String: String]] ?? []
      #expect(!fields.isEmpty)
      for field in fields {
        let name = field["name"] ?? "?"
        #expect(entry[name] == field["value"], "\(name) of \(entry["LICENSE_EVENT"] ?? "?")")
      }
    }
    let promoted = try #require(events.last)
    #expect(Int64(promoted["LICENSE_DELAY_USEC"] ?? "") ?? -1 >= 0)
    // The agent said what happened, and never sent to standard error what the journal took.
    let log = try String(contentsOfFile: agent.logFile, encoding: .utf8)
    #expect(!log.contains("KEY_PROMOTED:"), "\(log)")
  }

  @Test func retriesAreBoundedThenEventsGoToStandardError() throws {
    let (agent, _) = try agentWithARefusingJournal()
    let key = try agent.keyFile(
      "a", agent.key("A", nbf: AgentHarness.now() - .days(1), exp: AgentHarness.now() + .days(40)))
    #expect(try agent.agentctl(["add-key", key]).status == 0)
    #expect(kinds(try outbox(agent)) == ["ACTIVE_ADDED"])
    // Five retries (250 ms doubling, about 8 s), then standard error, once; acknowledged.
    #expect(try eventually(20) { try outbox(agent).isEmpty })
    let log = try String(contentsOfFile: agent.logFile, encoding: .utf8)
    #expect(log.components(separatedBy: "ACTIVE_ADDED:").count == 2, "\(log)")
    #expect(log.contains("The journal keeps refusing an event"), "\(log)")
  }
}
