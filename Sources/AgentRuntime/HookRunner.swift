import AgentSettings
import Dispatch
import FoundationEssentials
import Glibc
import LicenseCore
import Logging
import SimpleJSON
import StandardIO
import Synchronization
import Systemd

/// A durable change as subscribers (Monitor) and hooks receive it: its event, with the
/// transition the journal names it by; none for a change that logs nothing (a usage report
/// within its band, a confirmation), which subscribers get with the status alone.
public struct DurableChange: Sendable, Equatable {
  public var event: JournalEvent?
  public var transition: String?

  /// The event as the journal has it: MESSAGE, MESSAGE_ID, PRIORITY, SYSLOG_IDENTIFIER,
  /// LICENSE_EVENT, the `LICENSE_*` fields and LICENSE_TRANSITION.
  public var journalObject: [String: String]? {
    guard let event else { return nil }
    var object: [String: String] = [:]
    for (name, value) in journalFields(of: event, transition: transition) { object[name] = value }
    return object
  }
}

/// Runs the programs of `hooks.d/` after each durable change (N3): each with the event as
/// JSON on standard input and `LICENSE_EVENT`, `LICENSE_SLOT`, `LICENSE_SERIAL` (and
/// `LICENSE_TRANSITION`) in its environment; one at a time, in name order, on a queue of
/// their own (never the agent's: a hook never delays or undoes a change), each supervised
/// as activation clients are: a timeout, its own process group (and cgroup under systemd),
/// and whatever it leaves behind killed. A failing hook is logged, at most once a minute per
/// hook and kind of failure, with the count of those not logged.
///
/// Changes wait in a bounded queue: past ``maximumBacklog`` (hooks slower than the changes),
/// the oldest are given to no hook, and that is logged.
final class HookRunner: Sendable {
  static let maximumBacklog = 256
  /// What a hook may write on standard output and error that is kept (for the log).
  static let maximumOutput = 4096

  private let queue = DispatchQueue(label: "license-agent.hooks", qos: Agent.queueQoS)
  private let directory: String
  private struct Pending {
    var changes: [DurableChange] = []
    var running = false
    var dropped = 0
    var timeout = AgentConfiguration.defaultHookTimeout
    var logger: Logger?
    /// Warnings about hooks, once a minute per hook and kind.
    var lines = RateLimitedLog<String>()
  }
  private let pending = Mutex(Pending())

  init(directory: String) { self.directory = directory }

  /// The timeout and logger hooks run with from now (start, reload).
  func configure(timeout: TimeSpan, logger: Logger) {
    pending.withLock {
      $0.timeout = timeout
      $0.logger = logger
    }
  }

  /// Queues `changes` for the hooks (from the agent's queue: returns at once).
  func run(_ all: [DurableChange]) {
    // Hooks are given events: a change that logs nothing has nothing to give them.
    let changes = all.filter { $0.event != nil }
    guard !changes.isEmpty else { return }
    let start = pending.withLock { state -> Bool in
      state.changes += changes
      if state.changes.count > Self.maximumBacklog {
        let excess = state.changes.count - Self.maximumBacklog
        state.changes.removeFirst(excess)
        state.dropped += excess
      }
      guard !state.running else { return false }
      state.running = true
      return true
    }
    if start { queue.async { self.drain() } }
  }

  /// The hooks of the directory, in name order: regular executable files whose names are
  /// letters, digits, `_` and `-` (as run-parts: no `.dpkg-old`, no editor backups), owned by
  /// root or the agent's user and writable by no one else.
  func hooks(logger: Logger?) -> [String] {
    guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return [] }
    return names.sorted().compactMap { name in
      guard !name.isEmpty,
        name.utf8.allSatisfy({
          ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A) || $0 == 0x5F
            || $0 == 0x2D
        })
      else { return nil }
      let path = directory + "/" + name
      var info = stat()
      guard stat(path, &info) == 0, info.st_mode & S_IFMT == S_IFREG, access(path, X_OK) == 0 else {
        return nil
      }
      guard info.st_uid == 0 || info.st_uid == getuid(), info.st_mode & 0o022 == 0 else {
        note(
          "unsafe:\(name)", logger,
          "Hook not run: it must be owned by root (or the agent's user) and writable by no one else",
          ["hook": "\(path)"])
        return nil
      }
      return path
    }
  }

  private func drain() {
    while true {
      let (next, dropped, timeout, logger) = pending.withLock { state in
        let next = state.changes.isEmpty ? nil : state.changes.removeFirst()
        let dropped = state.dropped
        state.dropped = 0
        if next == nil { state.running = false }
        return (next, dropped, state.timeout, state.logger)
      }
      if dropped > 0 {
        note(
          "behind", logger, "Hooks fall behind the changes: the oldest were given to no hook",
          ["changes_not_given": "\(dropped)", "backlog": "\(Self.maximumBacklog)"])
      }
      guard let change = next else { return }
      for hook in hooks(logger: logger) { run(hook, change, timeout: timeout, logger: logger) }
    }
  }

  /// The environment of a hook: only what a program needs of the agent's (PATH, locale, time
  /// zone, the directories systemd gives it), never the rest (a proxy's credentials, a
  /// credentials directory), plus the event's main fields.
  static func environment(for change: DurableChange, timeout: TimeSpan) -> [String: String] {
    let kept: Set<String> = [
      "PATH", "LANG", "LANGUAGE", "TZ", "HOME", "USER", "LOGNAME", "CONFIGURATION_DIRECTORY",
      "STATE_DIRECTORY",
      "RUNTIME_DIRECTORY", "INVOCATION_ID", "JOURNAL_STREAM",
    ]
    var env = ProcessInfo.processInfo.environment.filter { kept.contains($0.key) || $0.key.hasPrefix("LC_") }
    if env["PATH"] == nil { env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" }
    env["LICENSE_EVENT"] = change.event?.kind.rawValue ?? ""
    env["LICENSE_SLOT"] = change.event?[field: .slot] ?? ""
    env["LICENSE_SERIAL"] = change.event?[field: .serial] ?? ""
    env["LICENSE_TRANSITION"] = change.transition ?? ""
    env["LICENSE_HOOK_TIMEOUT_SEC"] = String(max(timeout.microseconds / 1_000_000, 1))
    return env
  }

  private func run(_ hook: String, _ change: DurableChange, timeout: TimeSpan, logger: Logger?) {
    let input = JSONValue.object((change.journalObject ?? [:]).mapValues(JSONValue.string)).serialized + "\n"
    let result = runChild(
      [hook], environment: Self.environment(for: change, timeout: timeout), input: Array(input.utf8),
      timeout: timeout, maximumOutput: Self.maximumOutput, cgroups: RenewalRunner.attemptCgroups)
    let name = String(hook.split(separator: "/").last ?? "")
    var metadata: Logger.Metadata = ["hook": "\(hook)", "event": "\(change.event?.kind.rawValue ?? "")"]
    let stderr = ExternalText.bounded(
      String(decoding: result.stderr, as: UTF8.self).trimmingWhitespace(),
      limit: ExternalText.diagnosticsLimit)
    if !stderr.isEmpty { metadata["stderr"] = "\(stderr)" }
    if let error = result.spawnError {
      note("spawn:\(name)", logger, "Hook could not be started: \(error)", metadata)
    } else if result.timedOut {
      note(
        "timeout:\(name)", logger,
        "Hook killed after \(timeout) ([hooks] timeout), with its whole process group; the change stands",
        metadata)
    } else if result.exitStatus != 0 {
      metadata["exit_status"] = "\(result.exitStatus.map(String.init) ?? "signal")"
      note("failed:\(name)", logger, "Hook failed; the change stands", metadata)
    } else if result.leftoverProcesses {
      let group = RenewalRunner.attemptCgroups == nil ? "process group" : "cgroup"
      note(
        "leftover:\(name)", logger, "Hook exited leaving processes behind in its \(group); they were killed",
        metadata)
    }
  }

  /// A warning about a hook, at most once a minute per hook and kind.
  private func note(_ key: String, _ logger: Logger?, _ message: String, _ metadata: Logger.Metadata) {
    guard let logger else { return }
    let now = MonotonicClock.milliseconds()
    guard case .log(let unlogged) = pending.withLock({ $0.lines.admit(key, now: now) }) else { return }
    var fields = metadata
    fields["not_logged_since_last"] = "\(unlogged)"
    logger.warning("\(message)", metadata: fields)
  }
}
