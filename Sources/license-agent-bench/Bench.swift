import ArgumentParser
import CLinux
import Foundation
import Glibc
import LicenseCore
import LicenseStorage
import SimpleJSON
import SystemClock
import Varlink

/// `license-agent-bench`: measures the agent against the machine's limit. Each subcommand
/// prints a table, or one JSON object with `--json`. A benchmark, not a test: it asserts
/// nothing, it prints figures.
@main
struct Bench: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "license-agent-bench",
    abstract: "Benchmarks of license-agent on this machine.",
    subcommands: [
      Promotion.self, Idle.self, Startup.self, StatusTime.self, Renewal.self, Crash.self, Fleet.self,
      MonitorBench.self,
    ])
}

func now() -> Timestamp { SystemWallClock().now() }

/// Nearest-rank percentile of sorted values.
func percentile(_ sorted: [Int64], _ p: Double) -> Int64 {
  guard !sorted.isEmpty else { return 0 }
  let rank = Int((p / 100 * Double(sorted.count)).rounded(.up))
  return sorted[min(max(rank, 1), sorted.count) - 1]
}

struct BenchError: Error, CustomStringConvertible {
  var description: String
}

struct Promotion: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "N keys with staggered expiries promoted by the real agent; delay after exp, and the limit.",
    discussion: """
      Starts the license-agent found next to this program in a temporary folder, adds an \
      active key and a reserve, and after each promotion the next reserve, so that N \
      promotions happen SPACING apart through the real wall-clock timer, the real state \
      store (fsync) and the real journal (when a journal socket exists; else the agent's \
      console output). The delay of each promotion is its LICENSE_DELAY_USEC: from the \
      expired key's exp to the promotion being durable. The limit is measured in the same \
      window, between the promotions (three quarters of the way to the next expiry, while \
      the agent has nothing to do), so that both meet the same disk: N absolute \
      CLOCK_REALTIME timerfd wake-ups, each followed by the same fsync'ed state write. The agent writes its metrics file (contract §8) in the folder after each \
      change, as it does on an SVM; --no-metrics turns that off, to compare. \
      With --at-grace-end, each active key does not expire: the bench blocks it (rule B2, a \
      blocklist given with AddBlocklist) and the agent runs with [blocking] grace = SPACING, \
      so that each promotion happens at the end of a blocked key's grace; its delay is \
      measured from that end, and the limit is sampled three quarters of the way into it.
      """)

  @Option(help: "Number of promotions.")
  var keys = 100
  @Option(
    help: "Time between two expiries (at least 50ms; a state write that stalls longer breaks the chain).")
  var spacing = "500ms"
  @Flag(help: "Print one JSON object.")
  var json = false
  @Option(help: "The license-agent to run (default: next to this program).")
  var agent: String?
  @Flag(help: "Run the agent without its metrics file ([metrics] textfile = \"\").")
  var noMetrics = false
  @Flag(help: "Promote at the end of a blocked key's grace (rule B2) instead of at exp.")
  var atGraceEnd = false

  func run() throws {
    guard let step = TimeSpan(spacing), step.microseconds >= 50_000 else {
      throw ValidationError("--spacing must be a duration of at least 50ms")
    }
    guard keys >= 1 else { throw ValidationError("--keys must be at least 1") }
    let agentPath = agentExecutable(agent)
    let run = try Self.measure(
      agentPath: agentPath, keys: keys, step: step, metrics: !noMetrics, atGraceEnd: atGraceEnd)
    let faults = run.faultsPerPromotion
    let delays = run.delays.values.sorted()
    let limit = run.limit.sorted()
    let early = delays.filter { $0 < 0 }.count
    let p99 = percentile(delays, 99)
    let limitP99 = percentile(limit, 99)
    let ratio = limitP99 > 0 ? Double(p99) / Double(limitP99) : 0
    if json {
      let object: [String: JSONValue] = [
        "keys": .number(Double(delays.count)), "p50_usec": .number(Double(percentile(delays, 50))),
        "p99_usec": .number(Double(p99)), "max_usec": .number(Double(delays.last ?? 0)),
        "early": .number(Double(early)),
        "limit_p50_usec": .number(Double(percentile(limit, 50))), "limit_p99_usec": .number(Double(limitP99)),
        "ratio_p99": .number((ratio * 100).rounded() / 100),
        "agent_minor_faults_per_promotion": .number((faults * 10).rounded() / 10),
        "metrics_file": .bool(!noMetrics), "at_grace_end": .bool(atGraceEnd),
      ]
      print(JSONValue.object(object).serialized)
    } else {
      print(
        "promotion: \(delays.count) promotions, \(step) apart (delay from "
          + (atGraceEnd ? "the blocked key's grace end" : "exp") + " to durable promotion); metrics file "
          + (noMetrics ? "off" : "on"))
      print("                                     p50        p99        max")
      print(
        "  agent (timer+decide+fsync)  \(pad(percentile(delays, 50))) \(pad(p99)) \(pad(delays.last ?? 0))")
      print(
        "  limit (timerfd+same fsync)  \(pad(percentile(limit, 50))) \(pad(limitP99)) \(pad(limit.last ?? 0))"
      )
      print("  early promotions: \(early);  p99 ratio agent/limit: \(String(format: "%.2f", ratio))")
      print(
        "  agent's minor page faults per promotion (with the bench's AddKey and GetStatus): "
          + String(format: "%.1f", faults))
    }
  }

  /// A process's minor page faults so far (`minflt`, the 10th field of /proc/PID/stat).
  static func minorFaults(_ pid: Int32) -> Int {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
      let end = stat.lastIndex(of: ")")
    else { return 0 }
    let fields = stat[stat.index(after: end)...].split(separator: " ")
    // After the command: state is field 3, so minflt (field 10) is the 8th here.
    return fields.count > 7 ? Int(fields[7]) ?? 0 : 0
  }

  private func pad(_ usec: Int64) -> String {
    let text = "\(usec) µs"
    return String(repeating: " ", count: max(0, 10 - text.count)) + text
  }

  // MARK: The agent

  /// The promotion delays, and the agent's minor page faults per promotion over the run.
  /// The agent's promotion delays, the limit's in the same window (a sample three quarters
  /// of the way between two expiries, while the agent has nothing to do, so that both meet
  /// the same disk), and the agent's minor page faults per promotion over the run.
}

/// What one run of promotions saw, for the benchmarks built on it.
struct PromotionRun {
  /// Each promotion's LICENSE_DELAY_USEC, by serial, and its expired key's exp: the instant
  /// the promotion became durable is their sum.
  var delays: [String: Int64] = [:]
  var expiries: [String: Timestamp] = [:]
  /// When journald received each KEY_PROMOTED (`__REALTIME_TIMESTAMP`), when it is used.
  var journalReceived: [String: Timestamp] = [:]
  var limit: [Int64] = []
  var faultsPerPromotion = 0.0

  /// When each promotion became durable.
  var durableAt: [String: Timestamp] {
    var instants: [String: Timestamp] = [:]
    for (serial, delay) in delays {
      if let exp = expiries[serial] { instants[serial] = exp + TimeSpan(microseconds: delay) }
    }
    return instants
  }
}

extension Promotion {
  /// `keys` promotions `step` apart by the agent at `agentPath`; `attach` is called with the
  /// agent's socket once it runs and before the first key is added (subscribers).
  static func measure(
    agentPath: String, keys: Int, step: TimeSpan, metrics: Bool, atGraceEnd: Bool = false,
    attach: (String) throws -> Void = { _ in }
  ) throws -> PromotionRun {
    let probe = try LimitProbe()
    let folder = try BenchFolder("promotion", metrics: metrics)
    if atGraceEnd { try folder.writeConfiguration("[blocking]\ngrace = \"\(step)\"\n") }
    let issuer = folder.issuer
    let useJournal = access("/run/systemd/journal/socket", W_OK) == 0
    let agentErr = Pipe()
    let process = try folder.startAgent(
      agentPath, log: useJournal ? "journal" : "console", standardError: agentErr)
    defer { stopAgent(process) }
    let socket = folder.socket

    // In console mode the agent's events are read from its standard error (which must be
    // drained anyway); in journal mode they are read back from the journal at the end.
    let events = PromotionEvents()
    events.read(agentErr.fileHandleForReading) { line in
      guard line.contains("KEY_PROMOTED:"), let serial = field("LICENSE_SERIAL", line),
        let delay = field("LICENSE_DELAY_USEC", line).flatMap(Int64.init)
      else { return nil }
      return (serial, delay)
    }

    try attach(socket)
    let client = try VarlinkClient(path: socket)
    let run = String(getpid()) + "-" + String(UInt32.random(in: 0...UInt32.max), radix: 36)
    let start = now()
    let first = start + .seconds(1)
    func expiry(_ index: Int) -> Timestamp {
      first + TimeSpan(microseconds: step.microseconds * Int64(index))
    }
    func serial(_ index: Int) -> String { "BENCH-\(run)-\(index)" }
    // At the grace's end, the keys end long after the run (each after the one before: R5).
    func keyEnd(_ index: Int) -> Timestamp {
      atGraceEnd ? start + .days(30) + .seconds(Int64(index)) : expiry(index)
    }
    func key(_ index: Int) throws -> String {
      let claims = LicenseClaims(
        issuer: "bench", serial: serial(index), issuedAt: start, notBefore: start - .days(1),
        expiresAt: keyEnd(index),
        product: EngineConfiguration.defaultProduct, edition: .enterprise, scheme: .vmCount, osType: .server,
        licenseType: .commercial, units: 1)
      return try KeyParser.sign(claims, with: issuer)
    }
    func add(_ index: Int, _ role: String) throws {
      let reply = try client.call(
        "io.licenseagent.Agent.AddKey", ["key": .string(try key(index)), "role": .string(role)])
      if case .failure(let error) = reply {
        throw BenchError(
          description:
            "AddKey \(serial(index)) was refused (\(error.parameters["code"]?.stringValue ?? error.name)): the previous key expired before the next reserve could be added, so a promotion or state write took longer than --spacing \(step) (a disk stall). Retry, or use a larger --spacing."
        )
      }
    }
    func activeSerial() throws -> String? {
      guard case .success(let status) = try client.call("io.licenseagent.Agent.GetStatus"),
        case .array(let slots)? = status["slots"], let slot = slots.first?.objectValue
      else { return nil }
      return slot["active"]?.objectValue?["serial"]?.stringValue
    }
    // B2: blocks the keys up to `index` (a list replaces the issuer's previous one); the
    // active one's grace ends `step` later. The instant the agent gives is the promotion's due.
    var graceEnds: [Int: Timestamp] = [:]
    func block(_ index: Int) throws -> Timestamp {
      let list = try BlocklistParser.sign(
        Blocklist(
          compact: "", kid: issuer.kid, issuer: "bench", sequence: index + 1, issuedAt: now(),
          product: EngineConfiguration.defaultProduct,
          entries: (0...index).map { BlockedEntry(serial: serial($0), since: start, reason: "bench") }),
        with: issuer)
      let reply = try client.call("io.licenseagent.Agent.AddBlocklist", ["blocklist": .string(list)])
      guard case .success(let added) = reply, case .array(let blocks)? = added["blocks"],
        let end = blocks.compactMap({ $0.objectValue?["graceEndsAt"]?.stringValue }).first
          .flatMap(Timestamp.init(rfc3339:))
      else { throw BenchError(description: "AddBlocklist \(index + 1) gave no grace end: \(reply)") }
      return end
    }
    try add(0, "active")
    try add(1, "reserve")
    if atGraceEnd { graceEnds[0] = try block(0) }
    let faultsBefore = minorFaults(process.processIdentifier)
    var limit: [Int64] = []
    for index in 1...keys {
      // 20 ms after the expiry (or the grace's end) the promotion is long done: confirm it,
      // then add the next reserve (and block the new active key); three quarters of the way
      // to the next expiry (or into the grace), one sample of the limit. Nothing touches the
      // agent around the expiry instants themselves.
      let due: Timestamp
      if atGraceEnd {
        guard let end = graceEnds[index - 1] else { break }
        limit.append(try probe.sample(at: end - TimeSpan(microseconds: step.microseconds / 4)))
        due = end
      } else {
        if index > 1 {
          limit.append(
            try probe.sample(at: expiry(index - 2) + TimeSpan(microseconds: step.microseconds * 3 / 4)))
        }
        due = expiry(index - 1)
      }
      sleepUntil(due + .milliseconds(20))
      var promoted = false
      for _ in 0..<1000 {
        if try activeSerial() == serial(index) {
          promoted = true
          break
        }
        usleep(2000)
      }
      guard promoted else { throw BenchError(description: "\(serial(index)) was not promoted") }
      if index < keys {
        try add(index + 1, "reserve")
        if atGraceEnd { graceEnds[index] = try block(index) }
      }
    }
    let faults = Double(minorFaults(process.processIdentifier) - faultsBefore) / Double(keys)

    var delays: [String: Int64] = [:]
    var received: [String: Timestamp] = [:]
    for _ in 0..<100 {
      if useJournal {
        let query = Process()
        query.executableURL = URL(fileURLWithPath: "/bin/journalctl")
        query.arguments = [
          "-o", "json", "--no-pager", "LICENSE_EVENT=KEY_PROMOTED",
          "--since=@\(start.microseconds / 1_000_000)",
        ]
        let out = Pipe()
        query.standardOutput = out
        try query.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        query.waitUntilExit()
        for line in data.split(separator: 10) {
          guard let object = JSONValue.parse(line)?.objectValue,
            let name = object["LICENSE_SERIAL"]?.stringValue,
            name.hasPrefix("BENCH-\(run)-"),
            let delay = object["LICENSE_DELAY_USEC"]?.stringValue.flatMap(Int64.init)
          else { continue }
          delays[name] = delay
          if let at = object["__REALTIME_TIMESTAMP"]?.stringValue.flatMap(Int64.init) {
            received[name] = Timestamp(microseconds: at)
          }
        }
      } else {
        delays = events.all
      }
      if delays.count >= keys { break }
      usleep(50_000)
    }
    guard delays.count == keys else {
      throw BenchError(description: "found \(delays.count) KEY_PROMOTED events of \(keys)")
    }
    limit.append(
      try probe.sample(
        at: atGraceEnd
          ? now() + TimeSpan(microseconds: step.microseconds * 3 / 4)
          : expiry(keys - 1) + TimeSpan(microseconds: step.microseconds * 3 / 4)))
    var result = PromotionRun()
    result.delays = delays
    result.journalReceived = received
    result.limit = limit
    result.faultsPerPromotion = faults
    // Key `index` is promoted when key `index - 1` expires (or its grace ends).
    for index in 1...keys { result.expiries[serial(index)] = graceEnds[index - 1] ?? expiry(index - 1) }
    return result
  }
}

/// The limit a promotion delay is held against: an absolute CLOCK_REALTIME timerfd wake-up
/// followed by the same fsync'ed state write as the agent's (FileStateStore with a state
/// holding two keys), sampled by the bench between the agent's promotions.
final class LimitProbe {
  let root = FileManager.default.temporaryDirectory.path + "/license-agent-bench-limit-\(getpid())"
  let store: FileStateStore
  let state: LicenseState
  let fd: Int32

  init() throws {
    try? FileManager.default.removeItem(atPath: root)
    store = try FileStateStore(directory: root)
    let issuer = JWK.generate(kid: "bench")
    let engine = LicenseEngine(trust: TrustStore([issuer]))
    let t = now()
    func key(_ serial: String, _ exp: Timestamp) throws -> String {
      try KeyParser.sign(
        LicenseClaims(
          issuer: "bench", serial: serial, issuedAt: t, notBefore: t - .days(1), expiresAt: exp,
          product: "svm-protection",
          edition: .enterprise, scheme: .vmCount, osType: .server, licenseType: .commercial, units: 1),
        with: issuer)
    }
    var state = engine.addKey(try key("L-1", t + .days(1)), role: .active, now: t, state: LicenseState())
      .state
    state = engine.addKey(try key("L-2", t + .days(2)), role: .reserve, now: t, state: state).state
    self.state = state
    try store.save(state)
    fd = timerfd_create(CLOCK_REALTIME, Int32(TFD_CLOEXEC))
    guard fd >= 0 else { throw BenchError(description: "timerfd_create failed") }
  }

  deinit {
    close(fd)
    try? FileManager.default.removeItem(atPath: root)
  }

  /// Wakes at `deadline` and writes the state: how long after the deadline it was durable.
  func sample(at deadline: Timestamp) throws -> Int64 {
    let (seconds, micros) = deadline.microseconds.quotientAndRemainder(dividingBy: 1_000_000)
    var spec = itimerspec(
      it_interval: timespec(), it_value: timespec(tv_sec: Int(seconds), tv_nsec: Int(micros) * 1000))
    timerfd_settime(fd, Int32(TFD_TIMER_ABSTIME), &spec, nil)
    var expirations: UInt64 = 0
    _ = read(fd, &expirations, 8)
    try store.save(state)
    return now().microseconds(since: deadline)
  }
}

extension TimeSpan {
  static func milliseconds(_ ms: Int64) -> TimeSpan { TimeSpan(microseconds: ms * 1000) }
  var seconds: Double { Double(microseconds) / 1_000_000 }
}

func sleepUntil(_ instant: Timestamp) {
  let remaining = instant.microseconds(since: now())
  if remaining > 0 { usleep(useconds_t(remaining)) }
}

/// A throwaway agent installation for one benchmark: configuration with one trusted issuer,
/// state and runtime folders under a temporary root, removed at the end.
final class BenchFolder {
  let root: String
  let issuer = JWK.generate(kid: "bench")
  var socket: String { root + "/run/io.licenseagent.Agent" }
  /// The agent writes its metrics (contract §8) in the folder, never in the machine's
  /// node_exporter directory.
  var metricsFile: String { root + "/metrics/license-agent.prom" }

  init(_ name: String, metrics: Bool = true) throws {
    root = FileManager.default.temporaryDirectory.path + "/license-agent-bench-\(name)-\(getpid())"
    try? FileManager.default.removeItem(atPath: root)
    for dir in ["etc/trusted-issuers", "state", "run", "metrics"] {
      try FileManager.default.createDirectory(atPath: root + "/" + dir, withIntermediateDirectories: true)
    }
    try issuer.publicJSON.write(
      toFile: root + "/etc/trusted-issuers/bench.jwk", atomically: true, encoding: .utf8)
    metricsSection = "[metrics]\ntextfile = \"\(metrics ? root + "/metrics/license-agent.prom" : "")\"\n"
    try writeConfiguration("")
  }

  /// The `[metrics]` table every configuration of the folder ends with.
  let metricsSection: String

  /// agent.toml: `text`, then the folder's metrics table.
  func writeConfiguration(_ text: String) throws {
    try (text + "\n" + metricsSection).write(
      toFile: root + "/etc/agent.toml", atomically: true, encoding: .utf8)
  }

  deinit { try? FileManager.default.removeItem(atPath: root) }

  /// Starts the agent on this folder (no notify socket, no watchdog) and waits for its
  /// control socket.
  func startAgent(_ path: String, log: String = "auto", standardError: Any = FileHandle.nullDevice) throws
    -> Process
  {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: path)
    process.environment = agentEnvironment(self, extra: ["LICENSE_AGENT_LOG": log])
    process.standardError = standardError
    process.standardOutput = FileHandle.nullDevice
    try process.run()
    for _ in 0..<400 where access(socket, F_OK) != 0 { usleep(5000) }
    return process
  }
}

/// Stops an agent started by a benchmark.
func stopAgent(_ process: Process) {
  if process.isRunning {
    kill(process.processIdentifier, SIGTERM)
    process.waitUntilExit()
  }
}

/// The value of `NAME=value` in a console event line.
func field(_ name: String, _ line: String) -> String? {
  guard let range = line.range(of: name + "=") else { return nil }
  return String(line[range.upperBound...].prefix { $0 != " " && $0 != "]" })
}

/// Promotion events read from a stream of lines, by serial.
final class PromotionEvents: @unchecked Sendable {
  private let lock = NSCondition()
  private var delays: [String: Int64] = [:]

  func read(_ handle: FileHandle, parse: @escaping @Sendable (String) -> (String, Int64)?) {
    Thread.detachNewThread { [self] in
      var buffer = Data()
      while true {
        let chunk = handle.availableData
        if chunk.isEmpty { return }
        buffer.append(chunk)
        while let newline = buffer.firstIndex(of: 10) {
          let line = String(decoding: buffer[buffer.startIndex..<newline], as: UTF8.self)
          buffer.removeSubrange(buffer.startIndex...newline)
          if let (serial, delay) = parse(line) {
            lock.lock()
            delays[serial] = delay
            lock.broadcast()
            lock.unlock()
          }
        }
      }
    }
  }

  var all: [String: Int64] {
    lock.lock()
    defer { lock.unlock() }
    return delays
  }
}

/// The folder of this program, where the other built programs are.
func benchDirectory() -> String {
  URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent().path
}

/// The license-agent next to this program, or the one given.
func agentExecutable(_ path: String?) -> String { path ?? benchDirectory() + "/license-agent" }

struct Idle: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Wake-ups and resident memory of an idle agent holding a key that expires in a day.",
    discussion: """
      Starts the agent (without a watchdog), adds a key that expires in a day, lets \
      start-up settle (threads reaped), then counts the context switches of every thread \
      of the agent during SECONDS, and reads its resident memory (VmRSS). Measure the \
      binaries as shipped: swift build -c release --static-swift-stdlib.
      """)

  @Option(help: "How long to watch.")
  var seconds = 60
  @Option(help: "How long to let start-up settle first.")
  var settle = 12
  @Flag(help: "Print one JSON object.")
  var json = false
  @Option(help: "The license-agent to run (default: next to this program).")
  var agent: String?

  func run() throws {
    let folder = try BenchFolder("idle")
    let issuer = folder.issuer
    let process = try folder.startAgent(agentExecutable(agent))
    defer { stopAgent(process) }
    let socket = folder.socket
    let t = now()
    let key = try KeyParser.sign(
      LicenseClaims(
        issuer: "bench", serial: "IDLE-1", issuedAt: t, notBefore: t - .days(1), expiresAt: t + .days(1),
        product: EngineConfiguration.defaultProduct, edition: .standard, scheme: .cores, osType: nil,
        licenseType: .commercial, units: 8), with: issuer)
    let reply = try VarlinkClient(path: socket).call(
      "io.licenseagent.Agent.AddKey", ["key": .string(key), "role": .string("active")])
    if case .failure(let error) = reply { throw BenchError(description: "AddKey: \(error)") }

    sleep(UInt32(settle))
    let pid = process.processIdentifier
    let before = switchesByThread(pid)
    sleep(UInt32(seconds))
    let after = switchesByThread(pid)
    // Threads alive at both ends; a thread that came or went is itself a wake-up.
    var switches = 0
    for (tid, count) in after { switches += count - (before[tid] ?? 0) }
    switches += Set(before.keys).subtracting(after.keys).count
    let rss = residentKiB(pid)
    let perMinute = Double(switches) * 60 / Double(seconds)
    if json {
      print(
        JSONValue.object([
          "seconds": .number(Double(seconds)), "context_switches": .number(Double(switches)),
          "switches_per_minute": .number((perMinute * 100).rounded() / 100),
          "threads": .number(Double(after.count)),
          "rss_kib": .number(Double(rss)),
        ]).serialized)
    } else {
      print(
        "idle: agent holding a key that expires in a day, watched \(seconds) s after \(settle) s of settling")
      print(
        "  context switches: \(switches) (\(String(format: "%.2f", perMinute)) per minute), threads: \(after.count)"
      )
      print("  resident memory:  \(rss) KiB (\(String(format: "%.1f", Double(rss) / 1024)) MiB)")
    }
  }

  /// Voluntary plus involuntary context switches of each thread of `pid`.
  private func switchesByThread(_ pid: pid_t) -> [String: Int] {
    var result: [String: Int] = [:]
    for tid in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? [] {
      guard let status = try? String(contentsOfFile: "/proc/\(pid)/task/\(tid)/status", encoding: .utf8)
      else { continue }
      result[tid] = status.split(separator: "\n").filter { $0.contains("ctxt_switches") }
        .compactMap { $0.split(separator: ":").last.flatMap { Int($0.trimmingCharacters(in: .whitespaces)) } }
        .reduce(0, +)
    }
    return result
  }

  private func residentKiB(_ pid: pid_t) -> Int {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
      let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") })
    else { return 0 }
    return Int(line.split(separator: " ", omittingEmptySubsequences: true)[1]) ?? 0
  }
}

struct Renewal: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Delay from a code-mode key's exp to the first renewal request at a local activation server.",
    discussion: """
      Starts the reference activation-server and the agent (both next to this program) on \
      loopback, activates a code whose keys last --validity, and after each expiry reads \
      the time the server received the renewal request. The path measured is the real one: \
      wall-clock timer, durable state write, the shipped HTTPS client program started per \
      attempt, and its HTTP request.
      """)

  @Option(help: "How many renewals to measure.")
  var count = 10
  @Option(help: "The validity of each key the server gives (each renewal waits this long).")
  var validity = "2s"
  @Flag(help: "Print one JSON object.")
  var json = false

  func run() throws {
    let directory = benchDirectory()
    let folder = try BenchFolder("renewal")
    let root = folder.root
    let issuer = folder.issuer
    try issuer.privateJSON.write(toFile: root + "/issuer.private.jwk", atomically: true, encoding: .utf8)
    let code = "BENCH-12345-RENEW-00000"
    try """
    {"codes": {"\(code)": {"state": "valid", "serial": "RENEW", "edition": "standard", "scheme": "cores",
      "licenseType": "subscription", "units": 4, "validity": "\(validity)"}}}
    """.write(toFile: root + "/codes.json", atomically: true, encoding: .utf8)

    let server = Process()
    server.executableURL = URL(fileURLWithPath: directory + "/activation-server")
    server.arguments = ["--signer", root + "/issuer.private.jwk", "--catalog", root + "/codes.json"]
    let out = Pipe()
    server.standardOutput = out
    try server.run()
    defer {
      server.terminate()
      server.waitUntilExit()
    }
    let line = String(decoding: out.fileHandleForReading.availableData, as: UTF8.self)
    guard let range = line.range(of: "http://") else {
      throw BenchError(description: "activation-server: \(line)")
    }
    let url = String(line[range.lowerBound...].prefix { !$0.isWhitespace })
    try folder.writeConfiguration("[activation]\nurl = \"\(url)\"\nrenew-before = \"0s\"\n")

    let agent = try folder.startAgent(directory + "/license-agent")
    defer { stopAgent(agent) }
    let socket = folder.socket
    let client = try VarlinkClient(path: socket, timeoutSeconds: 60)
    guard
      case .success(let added) = try client.call(
        "io.licenseagent.Agent.Activate", ["code": .string(code), "role": .string("active")]),
      case .object(let key)? = added["key"],
      var expiry = key["expiresAt"]?.stringValue.flatMap(Timestamp.init(rfc3339:))
    else { throw BenchError(description: "activation failed") }

    var delays: [Int64] = []
    for index in 1...count {
      sleepUntil(expiry + .milliseconds(500))
      // The server's log: the request that continued the previous key.
      let requests = try serverRequests(url)
      guard requests.count > index, let at = requests[index]["at"].flatMap(Timestamp.init(rfc3339:)) else {
        throw BenchError(description: "no renewal request \(index)")
      }
      delays.append(at.microseconds(since: expiry))
      guard case .success(let status) = try client.call("io.licenseagent.Agent.GetStatus"),
        case .array(let slots)? = status["slots"],
        let active = slots.first?.objectValue?["active"]?.objectValue,
        let next = active["expiresAt"]?.stringValue.flatMap(Timestamp.init(rfc3339:))
      else { throw BenchError(description: "renewal \(index) did not install a key") }
      expiry = next
    }
    let sorted = delays.sorted()
    if json {
      print(
        JSONValue.object([
          "renewals": .number(Double(sorted.count)), "p50_usec": .number(Double(percentile(sorted, 50))),
          "max_usec": .number(Double(sorted.last ?? 0)),
          "early": .number(Double(sorted.filter { $0 < 0 }.count)),
        ]).serialized)
    } else {
      print("renewal: \(sorted.count) renewals; delay from exp to the request at the server")
      print(
        "  p50 \(percentile(sorted, 50)) µs, max \(sorted.last ?? 0) µs, early: \(sorted.filter { $0 < 0 }.count)"
      )
    }
  }

  private func serverRequests(_ url: String) throws -> [[String: String]] {
    let result = Process()
    result.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    result.arguments = [
      "python3", "-c",
      "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())",
      url + "/admin/requests",
    ]
    let out = Pipe()
    result.standardOutput = out
    try result.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    result.waitUntilExit()
    guard case .array(let items)? = JSONValue.parse(data)?.objectValue?["requests"] else { return [] }
    return items.compactMap { item in item.objectValue?.compactMapValues(\.stringValue) }
  }
}
