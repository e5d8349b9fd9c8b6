import Foundation
import Glibc
import LicenseCore
import LicenseTestSupport
import Testing

/// The control socket under hostile unprivileged users (docs/RELIABILITY.md, "Hostile local
/// users and client programs"): the real daemon, its real socket, and clients run as other
/// users (Fixtures/hostile_client.py under setpriv, with Debian's python3).
@Suite(.serialized) struct HostileClientTests {
  static let helper =
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().path + "/Fixtures/hostile_client.py"

  /// A hostile client running as `uid`: the first line it printed, and the process, which
  /// holds its connections until ``release()``.
  final class HostileClient {
    let process = Process()
    private let input = Pipe()
    private let output = Pipe()
    private let lines: LineReader

    init(socket: String, uid: uid_t, _ arguments: [String]) throws {
      process.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
      process.arguments =
        [
          "--reuid=\(uid)", "--regid=\(uid)", "--clear-groups", "--", "/usr/bin/python3",
          HostileClientTests.helper,
          socket,
        ] + arguments
      process.standardInput = input
      process.standardOutput = output
      lines = LineReader(output.fileHandleForReading)
      try process.run()
    }

    /// The next line the client prints (it prints each after doing what it says; the
    /// last one after the agent's 10 s stall deadline), or "" if none came in a minute.
    func line() -> String { lines.next(timeout: 60) ?? "" }

    /// Closes its standard input: it closes its connections and exits.
    func release() {
      try? input.fileHandleForWriting.close()
      process.waitUntilExit()
    }
  }

  func agent(configuration: String? = nil) throws -> AgentHarness {
    let agent = try AgentHarness(configuration: configuration)
    #expect(try agent.start())
    let key = try agent.keyFile(
      "a", agent.key("A", nbf: AgentHarness.now() - .days(1), exp: AgentHarness.now() + .days(40)))
    #expect(try agent.agentctl(["add-key", key]).status == 0)
    // The harness's socket folder is the test's: let other users reach the socket.
    chmod(agent.runtimeDirectory, 0o755)
    return agent
  }

  @Test func oneUserHoldingManyConnectionsLocksOutNeitherRootNorOtherUsers() throws {
    let agent = try agent()
    let hog = try HostileClient(socket: agent.socketPath, uid: 65501, ["hold", "40"])
    defer { hog.release() }
    // The per-UID limit: 16 answered, the rest closed at once.
    #expect(hog.line() == "accepted 16 refused 24")
    // Root, and another unprivileged user, are still answered.
    let root = try agent.agentctl(["status"])
    #expect(root.status == 0 && root.stdout.contains(agent.serial("A")), "\(root.stderr)")
    let other = try agent.agentctl(["status"], asUser: 65502)
    #expect(other.status == 0, "\(other.stderr)")
    // 24 refusals, one line in the journal (rate-limited), naming the user.
    let logged = try agent.waitForJournal(["_PID=\(agent.pid!)", "REASON=user_limit"])
    #expect(logged.count == 1)
    #expect(logged.first?["PEER_UID"] == "65501")
  }

  @Test func capacityIsReservedForRootWhenManyUsersFillTheRest() throws {
    let agent = try agent()
    // Six users with 16 connections each fill the 96 connections unprivileged users may
    // have (128, less 32 reserved); a seventh user gets none; root is still answered.
    var hogs: [HostileClient] = []
    defer { for hog in hogs { hog.release() } }
    for uid in uid_t(65510)..<65516 {
      let hog = try HostileClient(socket: agent.socketPath, uid: uid, ["hold", "16"])
      hogs.append(hog)
      #expect(hog.line() == "accepted 16 refused 0", "uid \(uid)")
    }
    let seventh = try HostileClient(socket: agent.socketPath, uid: 65516, ["hold", "4"])
    hogs.append(seventh)
    #expect(seventh.line() == "accepted 0 refused 4")
    for _ in 0..<3 {
      let root = try agent.agentctl(["status"])
      #expect(root.status == 0, "\(root.stderr)")
    }
    #expect(try agent.waitForJournal(["_PID=\(agent.pid!)", "REASON=server_full"]).count == 1)
  }

  /// A member of the admin group (here nobody, through its group nogroup) is privileged but
  /// not root: it has a limit of its own (32), and cannot take from root the connections
  /// kept for it (the helper's attack: 130 connections made root's agentctl report the agent
  /// down).
  @Test func anAdminGroupMemberHoldingManyConnectionsLocksOutNeitherRootNorOtherUsers() throws {
    let agent = try agent(configuration: "[control]\nadmin-group = \"nogroup\"\n")
    let hog = try HostileClient(socket: agent.socketPath, uid: 65534, ["hold", "40"])
    defer { hog.release() }
    #expect(hog.line() == "accepted 32 refused 8")
    let root = try agent.agentctl(["status"])
    #expect(root.status == 0 && root.stdout.contains(agent.serial("A")), "\(root.stderr)")
    let other = try agent.agentctl(["status"], asUser: 65502)
    #expect(other.status == 0, "\(other.stderr)")
    let logged = try agent.waitForJournal(["_PID=\(agent.pid!)", "REASON=user_limit"])
    #expect(logged.first?["PEER_UID"] == "65534")
  }

  @Test func halfSentMessagesAreBoundedInAllAndCutOffAtTheirDeadline() throws {
    let agent = try agent()
    // Five users, 16 connections each, begin a message of 60,000 bytes (under a user's
    // 64 KiB message limit) and never finish it: past 4 MiB in all (4.8 MB), the agent
    // closes the connections that hold the most, so 69 stay (4.14 MB)...
    var hogs: [HostileClient] = []
    defer { for hog in hogs { hog.release() } }
    for uid in uid_t(65520)..<65525 {
      hogs.append(try HostileClient(socket: agent.socketPath, uid: uid, ["half", "16", "60000", "4"]))
    }
    let open = hogs.map { $0.line() }.compactMap { Int($0.split(separator: " ").last ?? "") }.reduce(0, +)
    #expect(open == 69, "\(open) open")
    let root = try agent.agentctl(["status"])
    #expect(root.status == 0, "\(root.stderr)")
    // ... and those are closed when their message's deadline (10 s) passes.
    #expect(hogs.map { $0.line() } == Array(repeating: "closed 16", count: 5))
    #expect(try agent.waitForJournal(["_PID=\(agent.pid!)", "REASON=buffer_limit"]).count >= 1)
    #expect(try agent.waitForJournal(["_PID=\(agent.pid!)", "REASON=stalled"]).count >= 1)
    #expect(try agent.agentctl(["status"], asUser: 65520).status == 0)
  }

  /// A message over an unprivileged user's limit (64 KiB) ends its connection at once.
  @Test func aMessageOverAUsersLimitEndsItsConnection() throws {
    let agent = try agent()
    let hog = try HostileClient(socket: agent.socketPath, uid: 65530, ["half", "1", "70000"])
    defer { hog.release() }
    #expect(hog.line() == "open 0")
    let logged = try agent.waitForJournal(["_PID=\(agent.pid!)", "REASON=protocol_error"])
    #expect(logged.first?["PEER_UID"] == "65530")
  }
}
