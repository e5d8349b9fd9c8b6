import ArgumentParser
import Dispatch
import Foundation
import Glibc
import LicenseCore
import LicenseStorage
import SimpleJSON
import Varlink

/// The crash-consistency harness (docs/RELIABILITY.md).
///
/// Each trial runs the real agent (a debug build: its `LICENSE_AGENT_CRASH_AT` hook is
/// compiled out of release builds) in a folder of its own with the real journal, and
/// drives one story: add an active key A expiring 1.5 s later, add a reserve R, replace it
/// with R2 (rule R9), and let A expire (R2 is promoted). The agent is killed once, with
/// SIGKILL: either at a random instant of the story, or by itself at a named step of the
/// N-th state write (trials cycle through every step and the first five writes). The
/// harness then restarts it and, like an operator reading `agentctl status`, redoes only
/// the additions the state does not show. After the expiry it checks:
///
/// - **loads**: the restarted agent loads its state and answers;
/// - **lost**: every addition the agent acknowledged is in the state (or promoted);
/// - **early**: no KEY_PROMOTED before A's `exp` (journal time and LICENSE_DELAY_USEC);
/// - **twice**: at most one KEY_PROMOTED, and no event of a transition in the journal twice;
/// - **missing**: R2 is active after the expiry, with its KEY_PROMOTED;
/// - **unannounced**: the outbox is empty, and ACTIVE_ADDED(A) and RESERVE_ADDED(R2) are in
///   the journal exactly once.
///
/// A quarter of the trials tell the renewal story instead (``RenewalTrial``), and an eighth
/// the blocked key's (``GraceTrial``: the promotion at the end of its grace, rule B2).
struct Crash: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Crash-consistency harness: SIGKILL at random instants and at each state-write step.",
    discussion: """
      Needs a debug build of license-agent next to this program (swift build; then \
      .build/debug/license-agent-bench crash) and a running journal (root, to sync it). \
      Prints the trials by kind and the invariant violations; exits 1 when there is any.
      """)

  @Option(help: "How many trials.")
  var trials = 1000
  @Option(help: "Trials run at once.")
  var parallel = 4
  @Option(help: "Seed of the random kill instants (default: random).")
  var seed: UInt64?
  @Flag(help: "Print one JSON object.")
  var json = false
  @Option(help: "The license-agent to run (a debug build; default: next to this program).")
  var agent: String?

  func run() throws {
    let executable = agentExecutable(agent)
    guard access("/run/systemd/journal/socket", W_OK) == 0 else {
      throw BenchError(
        description: "no journal socket: the harness reads the agent's events from the journal")
    }
    let probe = Process()
    probe.executableURL = URL(fileURLWithPath: executable)
    probe.environment = ["LICENSE_AGENT_CRASH_AT": "?", "STATE_DIRECTORY": "/nonexistent/x"]
    probe.standardError = FileHandle.nullDevice
    try probe.run()
    probe.waitUntilExit()
    guard probe.terminationStatus == 64 else {
      throw BenchError(description: "\(executable) has no crash hook: run a debug build (swift build)")
    }
    let baseSeed = seed ?? UInt64.random(in: 0...UInt64.max)
    let results = CrashResults()
    let workers = max(1, min(parallel, trials))
    DispatchQueue.concurrentPerform(iterations: workers) { worker in
      var index = worker
      while index < trials {
        let seed = baseSeed &+ UInt64(index)
        // A quarter of the trials renew a code's key (half of them ahead of its expiry, C6);
        // an eighth promote at the end of a blocked key's grace (B2), at a random instant or
        // at a write step by turns; the rest add, replace and promote.
        if index % 4 == 3 {
          results.add(
            RenewalTrial(index: index, seed: seed, executable: executable, ahead: index % 8 == 7).run())
        } else if index % 8 == 5 {
          let steps = WriteStep.allCases
          let n = (index / 16) % (steps.count * 5)
          let crash = (index / 8) % 2 == 0 ? (steps[n % steps.count], n / steps.count + 1) : nil
          results.add(GraceTrial(index: index, seed: seed, executable: executable, crash: crash).run())
        } else {
          results.add(CrashTrial(index: index, seed: seed, executable: executable).run())
        }
        index += workers
      }
    }
    let summary = results.summary()
    if json {
      var object: [String: JSONValue] = [
        "trials": .number(Double(summary.trials)), "seed": .string(String(baseSeed)),
        "violations": .number(Double(summary.violations.count)),
        "restarts": .number(Double(summary.restarts)),
      ]
      object["kinds"] = .object(summary.kinds.mapValues { .number(Double($0)) })
      object["invariants"] = .object(summary.byInvariant.mapValues { .number(Double($0)) })
      print(JSONValue.object(object).serialized)
    } else {
      print("crash: \(summary.trials) trials (seed \(baseSeed)), \(summary.restarts) restarts after SIGKILL")
      for (kind, count) in summary.kinds.sorted(by: { $0.key < $1.key }) {
        print("  \(kind.padding(toLength: 40, withPad: " ", startingAt: 0)) \(count)")
      }
      print("  invariant violations: \(summary.violations.count)")
      for (invariant, count) in summary.byInvariant.sorted(by: { $0.key < $1.key }) {
        print("    \(invariant): \(count)")
      }
      for violation in summary.violations.prefix(10) { print("    - \(violation)") }
    }
    if !summary.violations.isEmpty { throw ExitCode(1) }
  }
}

/// What one trial found.
struct TrialResult: Sendable {
  var kind: String
  var restarts: Int
  var violations: [(invariant: String, detail: String)]
}

final class CrashResults: @unchecked Sendable {
  private let lock = NSLock()
  private var results: [TrialResult] = []

  func add(_ result: TrialResult) {
    lock.lock()
    results.append(result)
    lock.unlock()
  }

  func summary() -> (
    trials: Int, restarts: Int, kinds: [String: Int], byInvariant: [String: Int], violations: [String]
  ) {
    lock.lock()
    defer { lock.unlock() }
    var kinds: [String: Int] = [:]
    var byInvariant: [String: Int] = [:]
    var violations: [String] = []
    for result in results {
      kinds[result.kind, default: 0] += 1
      for violation in result.violations {
        byInvariant[violation.invariant, default: 0] += 1
        violations.append("\(result.kind): \(violation.invariant): \(violation.detail)")
      }
    }
    return (results.count, results.reduce(0) { $0 + $1.restarts }, kinds, byInvariant, violations)
  }
}

/// One trial: a fresh folder, one story, one kill.
struct CrashTrial {
  let index: Int
  let seed: UInt64
  let executable: String

  /// Writes of the story: (1) add A, (2) add R, (3) replace R by R2, (4) promotion, plus
  /// one at start when the state is first created; steps × the first five writes.
  var crashStep: (step: WriteStep, write: Int)? {
    let stepCount = WriteStep.allCases.count
    let stepTrials = stepCount * 5
    // Half the trials crash at a step, half at a random instant.
    guard index % 2 == 0 else { return nil }
    let n = (index / 2) % stepTrials
    return (WriteStep.allCases[n % stepCount], n / stepCount + 1)
  }

  func run() -> TrialResult {
    var random = SplitMix64(seed: seed)
    let crash = crashStep
    let kind = crash.map { "step \($0.step.rawValue) of write \($0.write)" } ?? "SIGKILL at a random instant"
    var violations: [(String, String)] = []
    func violation(_ invariant: String, _ detail: String) { violations.append((invariant, detail)) }
    guard let folder = try? BenchFolder("crash-\(index)") else {
      return TrialResult(kind: kind, restarts: 0, violations: [("setup", "cannot make the folder")])
    }
    let prefix = "CR\(seed % 1_000_000_007)-\(index)"
    let serials = (a: prefix + "-A", r: prefix + "-R", r2: prefix + "-R2")
    let start = now()
    let expiry = start + .milliseconds(1500)
    func key(_ serial: String, _ nbf: Timestamp, _ exp: Timestamp) -> String {
      (try? KeyParser.sign(
        LicenseClaims(
          issuer: "bench", serial: serial, issuedAt: start, notBefore: nbf, expiresAt: exp,
          product: EngineConfiguration.defaultProduct, edition: .standard, scheme: .vmCount, osType: .server,
          licenseType: .commercial, units: 4), with: folder.issuer)) ?? ""
    }
    let keys = (
      a: key(serials.a, start - .days(1), expiry), r: key(serials.r, start, start + .days(90)),
      r2: key(serials.r2, start, start + .days(91))
    )

    // The random kill: an instant from the start to just after the expiry.
    let agent: TrialAgent
    do {
      agent = try TrialAgent(
        executable, folder: folder, crash: crash,
        killAfter: crash == nil ? Double(random.next() % 1_700_000) / 1_000_000 : nil)
    } catch {
      return TrialResult(kind: kind, restarts: 0, violations: [("setup", "\(error)")])
    }
    var acknowledged: Set<String> = []
    func ensureRunning() -> Bool { agent.ensureRunning() }
    /// The serials of the server slot's active and reserve key, as the agent reports them.
    func slotSerials() -> (active: String?, reserve: String?) {
      guard let client = try? VarlinkClient(path: folder.socket, timeoutSeconds: 5),
        case .success(let status)? = try? client.call("io.licenseagent.Agent.GetStatus"),
        case .array(let slots)? = status["slots"], let slot = slots.first?.objectValue
      else { return (nil, nil) }
      return (
        slot["active"]?.objectValue?["serial"]?.stringValue,
        slot["reserve"]?.objectValue?["serial"]?.stringValue
      )
    }
    func add(_ serial: String, _ text: String, role: String) {
      guard let client = try? VarlinkClient(path: folder.socket, timeoutSeconds: 5),
        let reply = try? client.call(
          "io.licenseagent.Agent.AddKey", ["key": .string(text), "role": .string(role)])
      else { return }
      if case .success = reply { acknowledged.insert(serial) }
    }

    // The story, redone after a kill as far as the state does not show it.
    for _ in 0..<20 {
      guard ensureRunning() else { break }
      let (active, reserve) = slotSerials()
      let now = now()
      if active == nil && now < expiry {
        add(serials.a, keys.a, role: "active")
        continue
      }
      if active == serials.a && reserve == nil && !acknowledged.contains(serials.r) && now < expiry {
        add(serials.r, keys.r, role: "reserve")
        continue
      }
      if active == serials.a && reserve != serials.r2 && now < expiry {
        add(serials.r2, keys.r2, role: "reserve")
        continue
      }
      break
    }
    // The expiry, and the kill if it has not come yet.
    sleepUntil(expiry + .milliseconds(250))
    if crash == nil { sleepUntil(start + .milliseconds(1800)) }
    agent.cancelKill()
    guard ensureRunning() else {
      violation("loads", "the agent did not answer after a restart")
      agent.stop(SIGKILL)
      return TrialResult(kind: kind, restarts: agent.restarts, violations: violations)
    }
    usleep(200_000)
    let (active, reserve) = slotSerials()
    agent.stop(SIGTERM)

    // The state on disk.
    let state = try? FileStateStore(directory: folder.root + "/state").load().state
    if state == nil { violation("loads", "state.json does not load") }
    if let state, !state.outbox.isEmpty {
      violation("unannounced", "\(state.outbox.count) events left in the outbox")
    }

    // Keys: what the agent acknowledged is there, or was promoted.
    let r2Added = acknowledged.contains(serials.r2) || active == serials.r2
    if acknowledged.contains(serials.r2), active != serials.r2 {
      violation("lost", "R2 was acknowledged but the active key is \(active ?? "none")")
    }
    if acknowledged.contains(serials.r), !acknowledged.contains(serials.r2), active != serials.r,
      active != serials.r2
    {
      violation("lost", "R was acknowledged but the active key is \(active ?? "none")")
    }
    let reserveAdded = acknowledged.contains(serials.r) || acknowledged.contains(serials.r2)
    if acknowledged.contains(serials.a), active == nil, reserveAdded {
      violation("lost", "A and a reserve were acknowledged but the slot holds nothing")
    }
    if reserve != nil { violation("missing", "a reserve \(reserve!) is still waiting after the expiry") }

    // The journal.
    _ = try? runCommand("/bin/journalctl", ["--sync"])
    let entries = Self.journalEntries(serials: [serials.a, serials.r, serials.r2])
    let promoted = entries.filter { $0["MESSAGE_ID"] == EventKind.keyPromoted.messageID }
    if promoted.count > 1 { violation("twice", "\(promoted.count) KEY_PROMOTED") }
    if r2Added && active == serials.r2 && promoted.isEmpty {
      violation("missing", "R2 active without KEY_PROMOTED")
    }
    if r2Added && active != serials.r2 {
      violation("missing", "R2 was added but is not active after the expiry")
    }
    for entry in promoted {
      let delay = entry["LICENSE_DELAY_USEC"].flatMap { Int64($0) } ?? -1
      let at = entry["__REALTIME_TIMESTAMP"].flatMap { Int64($0) } ?? 0
      if delay < 0 || at < expiry.microseconds {
        violation("early", "KEY_PROMOTED delay \(delay) µs, at \(at)")
      }
    }
    for twice in announcedTwice(entries) { violation("twice", twice) }
    let addedA = entries.filter {
      $0["MESSAGE_ID"] == EventKind.activeAdded.messageID && $0["LICENSE_SERIAL"] == serials.a
    }
    if acknowledged.contains(serials.a) && addedA.count != 1 {
      violation("unannounced", "ACTIVE_ADDED(A) in the journal \(addedA.count) times")
    }
    let addedR2 = entries.filter {
      $0["MESSAGE_ID"] == EventKind.reserveAdded.messageID && $0["LICENSE_SERIAL"] == serials.r2
    }
    if acknowledged.contains(serials.r2) && addedR2.count != 1 {
      violation("unannounced", "RESERVE_ADDED(R2) in the journal \(addedR2.count) times")
    }
    return TrialResult(kind: kind, restarts: agent.restarts, violations: violations)
  }

  /// The agent's journal entries about these serials.
  static func journalEntries(serials: [String]) -> [[String: String]] {
    guard
      let output = try? runCommand(
        "/bin/journalctl",
        ["-o", "json", "--no-pager", "SYSLOG_IDENTIFIER=license-agent"]
          + serials.map { "LICENSE_SERIAL=\($0)" })
    else { return [] }
    return output.split(separator: "\n").compactMap { line in
      JSONValue.parse(Array(line.utf8))?.objectValue?.compactMapValues(\.stringValue)
    }
  }
}

/// A trial's agent in its folder, logging to the journal: started with the crash hook set
/// to kill it at `crash` (a step of the N-th state write), or SIGKILLed `killAfter` seconds
/// after its start; restarted (without the hook) by ``ensureRunning()``.
final class TrialAgent {
  let executable: String
  let environment: [String: String]
  let socket: String
  private(set) var pid: pid_t
  private(set) var restarts = 0
  private let killer: DispatchWorkItem

  init(_ executable: String, folder: BenchFolder, crash: (step: WriteStep, write: Int)?, killAfter: Double?)
    throws
  {
    self.executable = executable
    var environment = agentEnvironment(folder)
    environment["LICENSE_AGENT_LOG"] = "journal"
    self.environment = environment
    socket = folder.socket
    var first = environment
    if let crash { first["LICENSE_AGENT_CRASH_AT"] = "\(crash.step.rawValue):\(crash.write)" }
    let pid = try spawn(executable, [], environment: first)
    self.pid = pid
    killer = DispatchWorkItem { kill(pid, SIGKILL) }
    if let killAfter { DispatchQueue.global().asyncAfter(deadline: .now() + killAfter, execute: killer) }
  }

  /// Restarts the agent (without the crash hook) when it died, and says whether it answers.
  func ensureRunning() -> Bool {
    ensureAgentRunning(
      pid: &pid, restarts: &restarts, executable: executable, environment: environment, socket: socket)
  }

  func cancelKill() { killer.cancel() }

  /// Ends the agent with `signal` and waits for it.
  func stop(_ signal: Int32) {
    kill(pid, signal)
    waitForExit(pid)
  }
}

/// The "twice" invariant: each event of a transition (`LICENSE_TRANSITION` and
/// `MESSAGE_ID`) that the journal has more than once.
func announcedTwice(_ entries: [[String: String]]) -> [String] {
  var seen: [String: Int] = [:]
  for entry in entries {
    guard let transition = entry["LICENSE_TRANSITION"], let id = entry["MESSAGE_ID"] else { continue }
    seen[transition + " " + id, default: 0] += 1
  }
  return seen.filter { $0.value > 1 }.map { "\($0.key) announced \($0.value) times" }.sorted()
}

/// Runs a command and returns its standard output.
func runCommand(_ path: String, _ arguments: [String]) throws -> String {
  let process = Process()
  process.executableURL = URL(fileURLWithPath: path)
  process.arguments = arguments
  let out = Pipe()
  process.standardOutput = out
  process.standardError = FileHandle.nullDevice
  try process.run()
  let data = out.fileHandleForReading.readDataToEndOfFile()
  process.waitUntilExit()
  return String(decoding: data, as: UTF8.self)
}

/// A small seeded generator, so that a run can be repeated with --seed.
struct SplitMix64 {
  var state: UInt64
  init(seed: UInt64) { state = seed }
  mutating func next() -> UInt64 {
    state &+= 0x9E37_79B9_7F4A_7C15
    var z = state
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
  }
}

/// Restarts a trial's agent (without the crash hook) when it died, until it answers
/// GetStatus; false when it does not come up.
func ensureAgentRunning(
  pid: inout pid_t, restarts: inout Int, executable: String, environment: [String: String], socket: String
) -> Bool {
  var status: Int32 = 0
  var dead = waitpid(pid, &status, WNOHANG) == pid
  for _ in 0..<5 {
    if dead {
      guard let restarted = try? spawn(executable, [], environment: environment) else { return false }
      pid = restarted
      restarts += 1
      dead = false
    }
    for _ in 0..<400 {
      if let client = try? VarlinkClient(path: socket, timeoutSeconds: 5),
        case .success? = try? client.call("io.licenseagent.Agent.GetStatus")
      {
        return true
      }
      if waitpid(pid, &status, WNOHANG) == pid {
        dead = true
        break
      }
      usleep(5000)
    }
    if !dead { return false }
  }
  return false
}
