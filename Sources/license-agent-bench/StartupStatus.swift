import ArgumentParser
import Foundation
import Glibc
import LicenseCore
import SimpleJSON
import Varlink

/// Monotonic microseconds, for intervals.
func monotonicMicroseconds() -> Int64 {
  var time = timespec()
  clock_gettime(CLOCK_MONOTONIC, &time)
  return Int64(time.tv_sec) * 1_000_000 + Int64(time.tv_nsec) / 1000
}

/// Starts `path` with posix_spawn (no Foundation Process machinery in the measured path),
/// standard output and error to /dev/null. Returns the pid.
func spawn(_ path: String, _ arguments: [String], environment: [String: String]) throws -> pid_t {
  var actions = posix_spawn_file_actions_t()
  posix_spawn_file_actions_init(&actions)
  defer { posix_spawn_file_actions_destroy(&actions) }
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
  posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
  let argv = ([path] + arguments).map { strdup($0) } + [nil]
  let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
  defer { for pointer in argv + envp { free(pointer) } }
  var pid: pid_t = 0
  let result = posix_spawn(&pid, path, &actions, nil, argv, envp)
  guard result == 0 else {
    throw BenchError(description: "cannot start \(path): \(String(cString: strerror(result)))")
  }
  return pid
}

/// Waits for `pid` and returns its exit status (-1 when killed by a signal).
@discardableResult
func waitForExit(_ pid: pid_t) -> Int32 {
  var status: Int32 = 0
  while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
  return (status & 0x7f) == 0 ? (status >> 8) & 0xff : -1
}

/// The environment that points the agent (and agentctl) at a bench folder, without the
/// caller's notify socket or watchdog.
func agentEnvironment(_ folder: BenchFolder, extra: [String: String] = [:]) -> [String: String] {
  var environment = ProcessInfo.processInfo.environment
  for name in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] { environment.removeValue(forKey: name) }
  environment["CONFIGURATION_DIRECTORY"] = folder.root + "/etc"
  environment["STATE_DIRECTORY"] = folder.root + "/state"
  environment["RUNTIME_DIRECTORY"] = folder.root + "/run"
  environment["LICENSE_AGENT_SOCKET"] = folder.socket
  environment["LICENSE_AGENT_LOG"] = "console"
  return environment.merging(extra) { $1 }
}

/// Adds an active key expiring in a day and a reserve for the 89 days after, as an SVM holds.
func addTypicalKeys(_ folder: BenchFolder) throws {
  let t = now()
  for (serial, role, nbf, exp) in [
    ("TYPICAL-A", "active", t - .days(1), t + .days(1)), ("TYPICAL-R", "reserve", t, t + .days(90)),
  ] {
    let key = try KeyParser.sign(
      LicenseClaims(
        issuer: "bench", serial: serial, issuedAt: t, notBefore: nbf, expiresAt: exp,
        product: EngineConfiguration.defaultProduct, edition: .standard, scheme: .vmCount, osType: .server,
        licenseType: .commercial, units: 8), with: folder.issuer)
    let reply = try VarlinkClient(path: folder.socket).call(
      "io.licenseagent.Agent.AddKey", ["key": .string(key), "role": .string(role)])
    if case .failure(let error) = reply { throw BenchError(description: "AddKey \(serial): \(error)") }
  }
}

/// Prints a table line or one JSON object for a series of microsecond samples.
func report(_ title: String, _ samples: [Int64], json: Bool, extra: [String: JSONValue] = [:]) {
  let sorted = samples.sorted()
  let figures: [(String, Int64)] = [
    ("min_usec", sorted.first ?? 0), ("p50_usec", percentile(sorted, 50)),
    ("p90_usec", percentile(sorted, 90)),
    ("max_usec", sorted.last ?? 0),
  ]
  if json {
    var object = extra
    object["runs"] = .number(Double(sorted.count))
    for (name, value) in figures { object[name] = .number(Double(value)) }
    print(JSONValue.object(object).serialized)
  } else {
    print("\(title): \(sorted.count) runs")
    print(
      "  "
        + figures.map { "\($0.0.replacingOccurrences(of: "_usec", with: "")) \(ms($0.1))" }.joined(
          separator: ", "))
  }
}

/// Microseconds as milliseconds with two decimals.
func ms(_ usec: Int64) -> String { String(format: "%.2f ms", Double(usec) / 1000) }

struct Startup: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Time from exec to READY=1, on a NOTIFY_SOCKET of its own.",
    discussion: """
      The agent's state holds an active and a reserve key (added by a first run). Each run \
      starts the agent with posix_spawn and NOTIFY_SOCKET pointing at a datagram socket of \
      this program, and measures until the READY=1 datagram arrives: loading the \
      configuration, the trust directory and the state, opening the control socket, \
      arming the timers. The agent is stopped (SIGTERM) between runs. Measure the binaries \
      as shipped: swift build -c release --static-swift-stdlib.
      """)

  @Option(help: "How many starts to measure.")
  var runs = 20
  @Flag(help: "Print one JSON object.")
  var json = false
  @Option(help: "The license-agent to run (default: next to this program).")
  var agent: String?

  func run() throws {
    let folder = try BenchFolder("startup")
    let executable = agentExecutable(agent)
    let first = try folder.startAgent(executable)
    try addTypicalKeys(folder)
    stopAgent(first)

    let notifyPath = folder.root + "/notify"
    let listener = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard listener >= 0 else { throw BenchError(description: "socket: \(String(cString: strerror(errno)))") }
    defer { close(listener) }
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
      for (index, byte) in notifyPath.utf8.enumerated() where index < raw.count - 1 { raw[index] = byte }
    }
    let bound = withUnsafePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        bind(listener, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
      }
    }
    guard bound == 0 else {
      throw BenchError(description: "bind \(notifyPath): \(String(cString: strerror(errno)))")
    }
    var timeout = timeval(tv_sec: 5, tv_usec: 0)
    setsockopt(listener, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))

    let environment = agentEnvironment(folder, extra: ["NOTIFY_SOCKET": notifyPath])
    var samples: [Int64] = []
    for run in 1...runs {
      let start = monotonicMicroseconds()
      let pid = try spawn(executable, [], environment: environment)
      var ready: Int64?
      var buffer = [UInt8](repeating: 0, count: 4096)
      while ready == nil {
        let count = buffer.withUnsafeMutableBytes { recv(listener, $0.baseAddress, $0.count, 0) }
        if count < 0 {
          if errno == EINTR { continue }
          kill(pid, SIGKILL)
          waitForExit(pid)
          throw BenchError(description: "run \(run): no READY=1 within 5 s")
        }
        let text = String(decoding: buffer[0..<count], as: UTF8.self)
        if text.split(separator: "\n").contains("READY=1") { ready = monotonicMicroseconds() }
      }
      samples.append(ready! - start)
      kill(pid, SIGTERM)
      waitForExit(pid)
    }
    report("startup: exec to READY=1, state with two keys", samples, json: json)
  }
}

struct StatusTime: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "status",
    abstract: "Wall time of agentctl status, end to end, against an agent holding two keys.",
    discussion: """
      Starts the agent (next to this program), adds an active and a reserve key, then runs \
      agentctl status (next to this program) RUNS times with posix_spawn, measuring from \
      the spawn to the exit: process start, the Varlink call, the reply, the printed \
      report. Measure the binaries as shipped: swift build -c release --static-swift-stdlib.
      """)

  @Option(help: "How many agentctl runs to measure.")
  var runs = 50
  @Flag(help: "Measure agentctl status --json instead.")
  var jsonOutput = false
  @Flag(help: "Print one JSON object.")
  var json = false
  @Option(help: "The license-agent to run (default: next to this program).")
  var agent: String?

  func run() throws {
    let folder = try BenchFolder("status")
    let process = try folder.startAgent(agentExecutable(agent))
    defer { stopAgent(process) }
    try addTypicalKeys(folder)
    let agentctl = benchDirectory() + "/agentctl"
    let environment = agentEnvironment(folder)
    let arguments = ["status"] + (jsonOutput ? ["--json"] : [])
    // One run first: the binary in the page cache, as on a machine where it ran before.
    guard try waitForExit(spawn(agentctl, arguments, environment: environment)) == 0 else {
      throw BenchError(description: "agentctl status did not exit 0")
    }
    var samples: [Int64] = []
    for _ in 1...runs {
      let start = monotonicMicroseconds()
      let status = waitForExit(try spawn(agentctl, arguments, environment: environment))
      samples.append(monotonicMicroseconds() - start)
      guard status == 0 else { throw BenchError(description: "agentctl status exited \(status)") }
    }
    report("status: agentctl \(arguments.joined(separator: " ")), spawn to exit", samples, json: json)
  }
}
