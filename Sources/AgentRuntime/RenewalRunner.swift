import AgentSettings
import Dispatch
import FoundationEssentials
import Glibc
import LicenseCore
import Logging

/// Runs activation attempts (renewals, C2 and C6, and manual activations, C5) one at a
/// time on a queue of their own, off the agent's (they block on a client program), and
/// reaps whatever its clients leave behind. A value owned by the agent's actor; an
/// attempt's outcome goes back to the agent, which decides with the engine.
struct RenewalRunner {
  /// Attempts run here, one at a time.
  let queue: DispatchQueue
  /// Makes the activation client from the configuration (replaceable by tests).
  let makeClient: @Sendable (AgentConfiguration, Logger) -> ActivationClient
  /// Slots whose renewal attempt is under way.
  private var inFlight: Set<Slot> = []
  /// Whether this process reaps every exited child (the daemon, whose children are all its
  /// activation clients): not in a test process, whose other children are Foundation's.
  private let reapsChildren: Bool
  private var reaper: DispatchSourceSignal?

  init(
    queue: DispatchQueue, makeClient: @escaping @Sendable (AgentConfiguration, Logger) -> ActivationClient,
    reapsChildren: Bool
  ) {
    self.queue = queue
    self.makeClient = makeClient
    self.reapsChildren = reapsChildren
  }

  /// Starts `request` unless an attempt of its slot is under way (then the agent makes it
  /// when that one ends); `finished` gets the outcome, on the activation queue.
  mutating func start(
    _ request: ActivationRequest, configuration: AgentConfiguration, logger: Logger,
    finished: @escaping @Sendable (ActivationOutcome) -> Void
  ) {
    guard !inFlight.contains(request.slot) else { return }
    inFlight.insert(request.slot)
    let client = makeClient(configuration, logger)
    logger.info(
      "Renewal attempt",
      metadata: [
        "slot": "\(request.slot.rawValue)", "attempt": "\(request.attempt)",
        "code_hint": "\(request.code.hint)", "ahead": "\(request.kind.isAhead)",
      ])
    queue.async {
      finished(client.activate(code: request.code, currentSerial: request.currentSerial, kind: request.kind))
    }
  }

  /// The attempt of `slot` has ended (its outcome is being decided).
  mutating func finished(_ slot: Slot) { inFlight.remove(slot) }

  /// Manual activation (C5): asks for the key of `code`; `finished` gets the outcome.
  func activate(
    code: ActivationCode, role: Role, configuration: AgentConfiguration, logger: Logger,
    finished: @escaping @Sendable (ActivationOutcome) -> Void
  ) {
    let client = makeClient(configuration, logger)
    logger.info("Manual activation", metadata: ["role": "\(role.rawValue)", "code_hint": "\(code.hint)"])
    queue.async { finished(client.activate(code: code, currentSerial: nil, kind: .atExpiry)) }
  }

  // MARK: - Children

  /// The cgroup subtree systemd delegates to the unit (`Delegate=yes`), where every attempt
  /// runs in a cgroup of its own; nil outside systemd (attempts end by their process group).
  static let attemptCgroups = AttemptCgroups.delegated(environment: ProcessInfo.processInfo.environment)

  /// As the subreaper of its activation clients, the daemon reaps whatever exits, on the
  /// activation queue, which also runs the attempts (so never while an attempt waits for
  /// its own child): a process that escaped an attempt (outside systemd, `setsid`) is not
  /// left a zombie when it exits later.
  mutating func startReaping(logger: Logger) {
    guard reapsChildren else { return }
    if let cgroups = Self.attemptCgroups {
      logger.info(
        "Activation attempts run each in a cgroup of their own, ended whole",
        metadata: ["cgroup": "\(cgroups.folder)"])
    } else {
      logger.info("Activation attempts run each in a process group of their own (no delegated cgroup)")
    }
    ChildReaping.enable()
    let source = DispatchSource.makeSignalSource(signal: SIGCHLD, queue: queue)
    source.setEventHandler { _ = reapExitedChildren() }
    reaper = source
    source.resume()
  }

  mutating func stop() {
    reaper?.cancel()
    reaper = nil
  }
}
