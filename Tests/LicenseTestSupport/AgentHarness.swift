import Dispatch
import Foundation
import Glibc
import LicenseCore
import SystemClock

/// Receives sd_notify datagrams on a `NOTIFY_SOCKET` of its own, as systemd would.
public final class NotifyListener: @unchecked Sendable {
  public let path: String
  private let fd: Int32
  private let lock = NSLock()
  private var received: [String] = []
  private var arrivals: [Double] = []
  private let source: DispatchSourceRead

  public init(path: String) {
    self.path = path
    let fd = socket(
      AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
    self.fd = fd
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8) + [0]) }
    unlink(path)
    _ = withUnsafePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
      }
    }
    chmod(path, 0o666)
    source = DispatchSource.makeReadSource(fileDescriptor: fd, queue: DispatchQueue(label: "notify"))
    source.setEventHandler { [weak self] in
      var buffer = [UInt8](repeating: 0, count: 4096)
      while true {
        let count = recv(fd, &buffer, buffer.count, 0)
        guard count > 0 else { return }
        let text = String(decoding: buffer[0..<count], as: UTF8.self)
        let at = ProcessInfo.processInfo.systemUptime
        self?.lock.withLock {
          self?.received.append(text)
          self?.arrivals.append(at)
        }
      }
    }
    source.setCancelHandler { close(fd) }
    source.resume()
  }

  deinit { source.cancel() }

  /// Every datagram received so far.
  public var messages: [String] { lock.withLock { received } }

  /// When each datagram containing `assignment` arrived (monotonic seconds).
  public func arrivals(of assignment: String) -> [Double] {
    lock.withLock {
      zip(received, arrivals).filter { $0.0.split(separator: "\n").contains(Substring(assignment)) }.map(\.1)
    }
  }

  /// Waits (up to `seconds`) for a datagram containing `assignment` (e.g. `READY=1`) after
  /// the first `skip` datagrams; returns its index.
  @discardableResult
  public func wait(
    for assignment: String, after skip: Int = 0, seconds: Double = 15, while alive: () -> Bool = { true }
  ) -> Int? {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline && alive() {
      let all = messages
      if let index = all.indices.first(where: {
        $0 >= skip && all[$0].split(separator: "\n").contains(Substring(assignment))
      }) {
        return index
      }
      usleep(5000)
    }
    return nil
  }
}

/// The built `license-agent` run in temporary directories (the `*_DIRECTORY` variables), with
/// its own issuer in the trust directory, its own notify socket, and helpers to run
/// `agentctl` against it and to read its events back from the real journal.
public final class AgentHarness: @unchecked Sendable {
  public let root: String
  public let issuer = TestIssuer(kid: "harness-issuer")
  public let notify: NotifyListener
  /// A prefix unique to this harness, for serials, so journal queries see only its events.
  public let tag: String
  public private(set) var process: Process?
  public var environment: [String: String] = [:]
  /// A program and arguments that start the daemon, which they receive as their last
  /// argument and must exec (keeping the pid), e.g. to run it in a namespace of its own.
  public var launcher: [String] = []
  /// When this harness first started its daemon: journal queries look no earlier, so that
  /// entries of an older process that had the same pid (`_PID=` matches) never count.
  public private(set) var firstStart: Timestamp?

  public var configurationDirectory: String { root + "/etc" }
  public var stateDirectory: String { root + "/state" }
  public var runtimeDirectory: String { root + "/run" }
  public var socketPath: String { runtimeDirectory + "/io.licenseagent.Agent" }
  public var stateFile: String { stateDirectory + "/state.json" }
  public var logFile: String { root + "/agent.log" }
  public var bin: String { productsDirectory() }

  public init(configuration: String? = nil) throws {
    root = makeTemporaryDirectory("license-agent-e2e")
    chmod(root, 0o755)
    tag = "T" + String(UInt32.random(in: 0...UInt32.max), radix: 36).uppercased()
    notify = NotifyListener(path: root + "/notify.socket")
    for dir in [configurationDirectory, configurationDirectory + "/trusted-issuers", runtimeDirectory] {
      try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
      chmod(dir, 0o755)
    }
    try issuer.jwk.publicJSON.write(
      toFile: configurationDirectory + "/trusted-issuers/harness-issuer.jwk", atomically: true,
      encoding: .utf8)
    try FileManager.default.createDirectory(atPath: metricsDirectory, withIntermediateDirectories: true)
    try writeConfiguration(configuration ?? "")
  }

  /// Where the agent writes its metrics (contract §8): in the harness's folder, never in the
  /// machine's node_exporter directory.
  public var metricsDirectory: String { root + "/metrics" }
  public var metricsFile: String { metricsDirectory + "/license-agent.prom" }

  /// Writes agent.toml: `text`, then (unless it has a `[metrics]` table of its own) the
  /// harness's metrics table.
  public func writeConfiguration(_ text: String) throws {
    let metrics = text.contains("[metrics]") ? "" : "\n[metrics]\ntextfile = \"\(metricsFile)\"\n"
    try (text + metrics).write(
      toFile: configurationDirectory + "/agent.toml", atomically: true, encoding: .utf8)
  }

  deinit {
    if let process, process.isRunning {
      kill(process.processIdentifier, SIGKILL)
      process.waitUntilExit()
    }
    removeTemporaryDirectory(root)
  }

  /// A serial unique to this harness: `<tag>-<name>`.
  public func serial(_ name: String) -> String { "\(tag)-\(name)" }

  /// The process environment the daemon runs with.
  public var daemonEnvironment: [String: String] {
    var env = ProcessInfo.processInfo.environment
    env["CONFIGURATION_DIRECTORY"] = configurationDirectory
    env["STATE_DIRECTORY"] = stateDirectory
    env["RUNTIME_DIRECTORY"] = runtimeDirectory
    env["NOTIFY_SOCKET"] = notify.path
    env["LICENSE_AGENT_LOG"] = "journal"
    env.removeValue(forKey: "WATCHDOG_USEC")
    env.removeValue(forKey: "WATCHDOG_PID")
    for (key, value) in environment { env[key] = value }
    return env
  }

  /// Starts the daemon and waits for READY=1. Returns false if it exited or never got ready.
  @discardableResult
  public func start() throws -> Bool {
    let skip = notify.messages.count
    let process = Process()
    if let program = launcher.first {
      process.executableURL = URL(fileURLWithPath: program)
      process.arguments = Array(launcher.dropFirst()) + [bin + "/license-agent"]
    } else {
      process.executableURL = URL(fileURLWithPath: bin + "/license-agent")
    }
    process.environment = daemonEnvironment
    if !FileManager.default.fileExists(atPath: logFile) {
      _ = FileManager.default.createFile(atPath: logFile, contents: nil)
    }
    let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logFile))
    log.seekToEndOfFile()
    process.standardOutput = log
    process.standardError = log
    if firstStart == nil { firstStart = Self.now() }
    try process.run()
    self.process = process
    return notify.wait(for: "READY=1", after: skip, while: { process.isRunning }) != nil && process.isRunning
  }

  /// SIGTERM, and waits for the exit status; an agent that has not stopped 20 s later is
  /// killed (SIGKILL) and nil returned, so that a hung agent fails its test instead of
  /// holding the suite.
  @discardableResult
  public func stop() -> Int32? {
    guard let process else { return nil }
    if process.isRunning { kill(process.processIdentifier, SIGTERM) }
    for _ in 0..<400 where process.isRunning { usleep(50_000) }
    self.process = nil
    if process.isRunning {
      kill(process.processIdentifier, SIGKILL)
      process.waitUntilExit()
      return nil
    }
    process.waitUntilExit()
    return process.terminationStatus
  }

  /// SIGKILL: the process dies wherever it is.
  public func killHard() {
    guard let process else { return }
    if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    process.waitUntilExit()
    self.process = nil
  }

  public var pid: pid_t? { process?.processIdentifier }

  /// Writes a key file (mode 0644, readable by an unprivileged caller) and returns its path.
  public func keyFile(_ name: String, _ text: String) throws -> String {
    let path = root + "/" + name + ".jws"
    try text.write(toFile: path, atomically: true, encoding: .utf8)
    chmod(path, 0o644)
    return path
  }

  /// A signed key with a serial unique to this harness.
  public func key(
    _ name: String, slot: Slot = .server, edition: Edition = .enterprise, type: LicenseType = .commercial,
    units: Int = 10, nbf: Timestamp, exp: Timestamp, product: String = EngineConfiguration.defaultProduct
  ) -> String {
    issuer.key(
      TestIssuer.claims(
        serial: serial(name), slot: slot, edition: edition, type: type, units: units, nbf: nbf, exp: exp,
        product: product))
  }

  /// Key files "A" (valid from a day ago until `exp`) and "R" (from `reserveFrom`, now by
  /// default, for 90 days), each added with agentctl (A as active, R as reserve) when
  /// `addActive` / `addReserve` say so; an add that fails throws with agentctl's message.
  @discardableResult
  public func keyPair(
    activeUntil exp: Timestamp, reserveFrom: Timestamp? = nil, addActive: Bool = true, addReserve: Bool = true
  ) throws -> (active: String, reserve: String) {
    let now = Self.now()
    let from = reserveFrom ?? now
    let active = try keyFile("A", key("A", nbf: now - .days(1), exp: exp))
    let reserve = try keyFile("R", key("R", nbf: from, exp: from + .days(90)))
    for (file, role, wanted) in [(active, [], addActive), (reserve, ["--reserve"], addReserve)] where wanted {
      let result = try agentctl(["add-key"] + role + [file])
      guard result.status == 0 else {
        throw ProcessError(description: "agentctl add-key \(role) \(file): \(result.stderr)")
      }
    }
    return (active, reserve)
  }

  /// Runs `agentctl --socket <this agent's socket> ARGS`, optionally as an unprivileged user.
  public func agentctl(_ arguments: [String], input: String? = nil, asUser uid: uid_t? = nil) throws
    -> ProcessResult
  {
    let agentctl = bin + "/agentctl"
    var env = ProcessInfo.processInfo.environment
    env["LICENSE_AGENT_SOCKET"] = socketPath
    env["STATE_DIRECTORY"] = stateDirectory
    if let uid {
      return try runProcess(
        "/usr/bin/setpriv",
        ["--reuid=\(uid)", "--regid=\(uid)", "--clear-groups", "--", agentctl] + arguments, input: input,
        environment: env)
    }
    return try runProcess(agentctl, arguments, input: input, environment: env)
  }

  /// The journal entries of license-agent matching `FIELD=value` filters, oldest first.
  public func journal(_ matches: [String]) throws -> [[String: String]] {
    let result = try runProcess(
      "/bin/journalctl",
      ["-o", "json", "--no-pager", "-a"]
        + (firstStart.map { ["--since", "@\($0.microseconds / 1_000_000 - 1)"] } ?? [])
        + ["SYSLOG_IDENTIFIER=license-agent"] + matches)
    if result.status != 0 {
      throw ProcessError(description: "journalctl exited with \(result.status): \(result.stderr)")
    }
    return result.stdout.split(separator: "\n").compactMap { line in
      guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
        return nil
      }
      return object.compactMapValues { $0 as? String }
    }
  }

  /// Waits until at least `count` entries match (journald writes asynchronously), then
  /// returns all of them.
  public func waitForJournal(_ matches: [String], count: Int = 1, seconds: Double = 10) throws -> [[String:
    String]]
  {
    let deadline = Date().addingTimeInterval(seconds)
    var entries = try journal(matches)
    while entries.count < count && Date() < deadline {
      usleep(50_000)
      entries = try journal(matches)
    }
    return entries
  }

  /// What the agent will do next, once everything already on its way has arrived: a check
  /// that "nothing more happened" which cannot pass by luck, instead of a fixed wait. A
  /// status call is answered on the agent's serial queue after every piece of work already
  /// queued there, so an announcement made before it (a duplicate, say) has been sent to
  /// the journal when it returns; `journalctl --sync` then makes journald write everything
  /// it received. What is left is the agent's own plan: the returned `nextAction` (nil when
  /// it will not act again), which the caller checks is not the thing it wants not to see.
  public func settle() throws -> (action: String, at: Timestamp)? {
    let result = try agentctl(["status", "--json"])
    guard let object = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any]
    else { throw ProcessError(description: "agentctl status --json: \(result.stdout) \(result.stderr)") }
    let sync = try runProcess("/bin/journalctl", ["--sync"])
    if sync.status != 0 { throw ProcessError(description: "journalctl --sync: \(sync.stderr)") }
    guard let next = object["nextAction"] as? [String: Any], let action = next["action"] as? String,
      let at = (next["at"] as? String).flatMap(Timestamp.init(rfc3339:))
    else { return nil }
    return (action, at)
  }

  /// The entries of one event kind (by MESSAGE_ID) about `serial`.
  public func events(_ kind: EventKind, serial: String, atLeast count: Int = 1) throws -> [[String: String]] {
    try waitForJournal(["MESSAGE_ID=\(kind.messageID)", "LICENSE_SERIAL=\(serial)"], count: count)
  }

  /// The current wall-clock time.
  public static func now() -> Timestamp { SystemWallClock().now() }

  /// Sleeps until the wall clock passes `instant`, plus `margin`.
  public static func sleep(until instant: Timestamp, margin: TimeSpan = .seconds(0)) {
    let remaining = (instant + margin).microseconds(since: now())
    if remaining > 0 { usleep(useconds_t(remaining)) }
  }

  /// True when a journal accepts entries here (`.ci/run` starts a standalone journald).
  public static var journalIsRunning: Bool { access("/run/systemd/journal/socket", W_OK) == 0 }
}

extension String {
  /// Writes this text as the agent's configuration (with the harness's metrics table).
  public func writeAsConfiguration(of agent: AgentHarness) throws { try agent.writeConfiguration(self) }
}
