import AgentRuntime
import Dispatch
import LicenseCore
import LicenseStorage
import Synchronization
import SystemClock
import Systemd

// The runtime's twins: a state store in memory, a journal sink that records, a clock and a
// wall-clock timer the test sets and fires, a notifier that says nothing, an activation
// client that answers from a script. No real time, no real disk: the order in which the
// agent carries out a decision is what the tests see.

/// Everything the twins saw, in order: `save[KINDS IN THE OUTBOX]`, `send KIND`.
public final class Log: Sendable {
  public init() {}
  private let entries = Mutex<[String]>([])
  public func append(_ entry: String) { entries.withLock { $0.append(entry) } }
  public var all: [String] { entries.withLock { $0 } }
  public func clear() { entries.withLock { $0.removeAll() } }
}

public final class MemoryStore: StateStore {
  public let log: Log
  private let stored: Mutex<(state: LicenseState, failures: Int)>
  public init(log: Log, state: LicenseState = LicenseState()) {
    self.log = log
    stored = Mutex((state, 0))
  }
  public var state: LicenseState { stored.withLock { $0.state } }
  /// The next `count` saves fail as a full disk would.
  public func fail(_ count: Int) { stored.withLock { $0.failures = count } }
  public func load() throws(StateStoreError) -> LoadedState { LoadedState(state: state, recovery: nil) }
  public func save(_ state: LicenseState) throws(StateStoreError) {
    let failed = stored.withLock { stored -> Bool in
      if stored.failures > 0 {
        stored.failures -= 1
        return true
      }
      stored.state = state
      return false
    }
    if failed {
      log.append("save failed")
      throw StateStoreError(file: "memory", problem: "is full", remedy: "free some room")
    }
    log.append("save[\(state.outbox.map(\.kind.rawValue).joined(separator: ","))]")
  }
}

public final class RecordingSink: EventSink {
  public let log: Log
  public let delivered: Set<String>
  private let sent = Mutex<[(event: JournalEvent, transition: String?)]>([])
  public init(log: Log, alreadyDelivered: Set<String> = []) {
    self.log = log
    delivered = alreadyDelivered
  }
  private let arrivals = DispatchSemaphore(value: 0)
  public var events: [JournalEvent] { sent.withLock { $0.map(\.event) } }
  public func send(_ event: JournalEvent, transition: String?) -> EventDelivery {
    log.append("send \(event.kind.rawValue)")
    sent.withLock { $0.append((event, transition)) }
    arrivals.signal()
    return .delivered
  }
  /// Waits until an event of `kind` has been sent (a renewal's outcome comes back from the
  /// activation queue); false if none came within `seconds`, which only a hang would take.
  public func wait(for kind: EventKind, seconds: Double = 10) -> Bool {
    let deadline = DispatchTime.now() + seconds
    while !events.contains(where: { $0.kind == kind }) {
      if arrivals.wait(timeout: deadline) == .timedOut { return false }
    }
    return true
  }
  /// What a journal holds: what this sink was sent, and what `alreadyDelivered` names as
  /// "<transition> <KIND> <slot>" (sent by an earlier process).
  public func wasDelivered(_ event: JournalEvent, transition: String) -> Bool? {
    delivered.contains("\(transition) \(event.kind.rawValue) \(event[field: .slot] ?? "")")
      || sent.withLock { $0.contains { $0.event == event && $0.transition == transition } }
  }
}

public final class ManualClock: WallClock {
  private let instant: Mutex<Timestamp>
  public init(_ start: Timestamp) { instant = Mutex(start) }
  public func now() -> Timestamp { instant.withLock { $0 } }
  public func set(_ value: Timestamp) { instant.withLock { $0 = value } }
}

public final class ManualTimer: WallClockTimer, Sendable {
  public init() {}
  private let state = Mutex<(deadline: Timestamp?, handler: (@Sendable () -> Void)?)>((nil, nil))
  public func install(_ handler: @escaping @Sendable () -> Void) { state.withLock { $0.handler = handler } }
  public func arm(at instant: Timestamp?) { state.withLock { $0.deadline = instant } }
  public var deadline: Timestamp? { state.withLock { $0.deadline } }
  /// What the real timer does at its deadline: runs the handler (call on the agent's queue).
  public func fire() { state.withLock { $0.handler }?() }
}

public struct QuietNotifier: Notifier {
  public init() {}
  public func notify(_ assignments: String) {}
}

/// The activation server's answers, one per attempt, in order; records the requests.
public final class ScriptedClient: ActivationClient {
  private let script: Mutex<(answers: [ActivationOutcome], requests: [String])>
  public init(_ answers: [ActivationOutcome]) { script = Mutex((answers, [])) }
  public var requests: [String] { script.withLock { $0.requests } }
  public func activate(code: ActivationCode, currentSerial: String?, kind: RenewalKind) -> ActivationOutcome {
    script.withLock {
      var request = "\(code.hint) \(currentSerial ?? "-")"
      if case .ahead(let currentExpiresAt) = kind { request += " ahead \(currentExpiresAt.rfc3339)" }
      $0.requests.append(request)
      return $0.answers.isEmpty
        ? .failure(.transient(error: "no answer", retryAfter: nil)) : $0.answers.removeFirst()
    }
  }
}

/// The monotonic twin: records the delay it is armed with, and fires when the test says.
public final class ManualDelayTimer: DelayTimer, Sendable {
  private let state = Mutex<(delay: TimeSpan?, handler: (@Sendable () -> Void)?)>((nil, nil))
  public init() {}
  public func install(_ handler: @escaping @Sendable () -> Void) { state.withLock { $0.handler = handler } }
  public func arm(after delay: TimeSpan?) { state.withLock { $0.delay = delay } }
  /// The delay it is armed with; nil when disarmed.
  public var delay: TimeSpan? { state.withLock { $0.delay } }
  /// What the real timer does when the delay has passed (call on the agent's queue).
  public func fire() {
    let handler = state.withLock { state -> (@Sendable () -> Void)? in
      state.delay = nil
      return state.handler
    }
    handler?()
  }
}
