import Dispatch
import Foundation
import LicenseCore
import LicenseStorage
import LicenseTestSupport
import Logging
import SimpleJSON
import Synchronization
import SystemClock
import Systemd
import Testing

@testable import AgentRuntime
@testable import Varlink

/// The agent's runtime with in-memory twins (store, clock, timer, journal sink, notifier):
/// the order in which a decision is carried out, the storage-retry path, the outbox replay
/// after a crash between steps, and the promotion at the timer. No real time: the clock is
/// set by the test and the timer is fired by the test.
@Suite struct AgentRuntimeTests {
  /// Everything the twins saw, in order: `save[KINDS IN THE OUTBOX]`, `send KIND`.
  final class Log: Sendable {
    private let entries = Mutex<[String]>([])
    func append(_ entry: String) { entries.withLock { $0.append(entry) } }
    var all: [String] { entries.withLock { $0 } }
    func clear() { entries.withLock { $0.removeAll() } }
  }

  final class MemoryStore: StateStore {
    let log: Log
    private let stored: Mutex<(state: LicenseState, failures: Int)>
    init(log: Log, state: LicenseState = LicenseState()) {
      self.log = log
      stored = Mutex((state, 0))
    }
    var state: LicenseState { stored.withLock { $0.state } }
    /// The next `count` saves fail as a full disk would.
    func fail(_ count: Int) { stored.withLock { $0.failures = count } }
    func load() throws(StateStoreError) -> LoadedState { LoadedState(state: state, recovery: nil) }
    func save(_ state: LicenseState) throws(StateStoreError) {
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

  final class RecordingSink: EventSink {
    let log: Log
    let delivered: Set<String>
    private let sent = Mutex<[(event: JournalEvent, transition: String?)]>([])
    init(log: Log, alreadyDelivered: Set<String> = []) {
      self.log = log
      delivered = alreadyDelivered
    }
    private let arrivals = DispatchSemaphore(value: 0)
    var events: [JournalEvent] { sent.withLock { $0.map(\.event) } }
    func send(_ event: JournalEvent, transition: String?) -> EventDelivery {
      log.append("send \(event.kind.rawValue)")
      sent.withLock { $0.append((event, transition)) }
      arrivals.signal()
      return .delivered
    }
    /// Waits until an event of `kind` has been sent (a renewal's outcome comes back from the
    /// activation queue); false if none came within `seconds`, which only a hang would take.
    func wait(for kind: EventKind, seconds: Double = 10) -> Bool {
      let deadline = DispatchTime.now() + seconds
      while !events.contains(where: { $0.kind == kind }) {
        if arrivals.wait(timeout: deadline) == .timedOut { return false }
      }
      return true
    }
    /// What a journal holds: what this sink was sent, and what `alreadyDelivered` names as
    /// "<transition> <KIND> <slot>" (sent by an earlier process).
    func wasDelivered(_ event: JournalEvent, transition: String) -> Bool? {
      delivered.contains("\(transition) \(event.kind.rawValue) \(event[field: "LICENSE_SLOT"] ?? "")")
        || sent.withLock { $0.contains { $0.event == event && $0.transition == transition } }
    }
  }

  final class ManualClock: WallClock {
    private let instant: Mutex<Timestamp>
    init(_ start: Timestamp) { instant = Mutex(start) }
    func now() -> Timestamp { instant.withLock { $0 } }
    func set(_ value: Timestamp) { instant.withLock { $0 = value } }
  }

  final class ManualTimer: WallClockTimer, Sendable {
    private let state = Mutex<(deadline: Timestamp?, handler: (@Sendable () -> Void)?)>((nil, nil))
    func install(_ handler: @escaping @Sendable () -> Void) { state.withLock { $0.handler = handler } }
    func arm(at instant: Timestamp?) { state.withLock { $0.deadline = instant } }
    var deadline: Timestamp? { state.withLock { $0.deadline } }
    /// What the real timer does at its deadline: runs the handler (call on the agent's queue).
    func fire() { state.withLock { $0.handler }?() }
  }

  struct QuietNotifier: Notifier {
    func notify(_ assignments: String) {}
  }

  /// The activation server's answers, one per attempt, in order; records the requests.
  final class ScriptedClient: ActivationClient {
    private let script: Mutex<(answers: [ActivationOutcome], requests: [String])>
    init(_ answers: [ActivationOutcome]) { script = Mutex((answers, [])) }
    var requests: [String] { script.withLock { $0.requests } }
    func activate(code: ActivationCode, currentSerial: String?, ahead: Bool, currentExpiresAt: Timestamp?)
      -> ActivationOutcome
    {
      script.withLock {
        $0.requests.append(
          "\(code.hint) \(currentSerial ?? "-")" + (ahead ? " ahead \(currentExpiresAt?.rfc3339 ?? "?")" : "")
        )
        return $0.answers.isEmpty
          ? .failure(.transient(error: "no answer", retryAfter: nil)) : $0.answers.removeFirst()
      }
    }
  }

  /// An agent on twins, started, in a temporary runtime folder (for its socket).
  struct Fixture {
    let log = Log()
    let issuer: TestIssuer
    let clock = ManualClock(TestIssuer.t0)
    let timer = ManualTimer()
    let store: MemoryStore
    let sink: RecordingSink
    let agent: Agent
    let folder = makeTemporaryDirectory("agent-runtime")

    init(
      state: LicenseState = LicenseState(), alreadyDelivered: Set<String> = [],
      client: ScriptedClient = ScriptedClient([]), issuer: TestIssuer = TestIssuer(),
      renewBefore: TimeSpan = .seconds(0), renewSpread: TimeSpan = .seconds(0)
    ) throws {
      self.issuer = issuer
      store = MemoryStore(log: log, state: state)
      sink = RecordingSink(log: log, alreadyDelivered: alreadyDelivered)
      let paths = AgentPaths(
        configurationDirectory: folder, stateDirectory: folder, runtimeDirectory: folder)
      let timer = self.timer
      // The metrics go to the test's folder, never to the machine's node_exporter directory.
      var configuration = AgentConfiguration()
      configuration.metricsTextfile = folder + "/license-agent.prom"
      // Renewal at expiry (C2–C4) unless a test asks for renewal ahead (C6).
      configuration.activation.renewBefore = renewBefore
      configuration.activation.renewSpread = renewSpread
      agent = Agent(
        paths: paths, configuration: configuration, trust: issuer.trust, store: store, sink: sink,
        clock: clock, notifier: QuietNotifier(),
        logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }),
        makeActivationClient: { _, _ in client },
        makeTimer: { _, handler in
          timer.install(handler)
          return timer
        })
      try agent.start()
    }

    func stop() {
      agent.sync { $0.stop() }
      removeTemporaryDirectory(folder)
    }

    /// AddKey as root, answered on the agent's queue.
    @discardableResult
    func add(_ key: String, _ role: String) -> VarlinkReply? {
      agent.sync {
        $0.handle(
          VarlinkCall(
            method: "io.licenseagent.Agent.AddKey", parameters: ["key": .string(key), "role": .string(role)]),
          peer: PeerCredentials(uid: 0, gid: 0, pid: 1, groups: []), respond: VarlinkResponder { _ in })
      }
    }

    /// Activate as root with the code ABCDE-12345-FGHIJ-67890; true once it was answered (the
    /// activation client runs off the agent's queue).
    func activate() -> Bool {
      let answered = DispatchSemaphore(value: 0)
      agent.sync {
        _ = $0.handle(
          VarlinkCall(
            method: "io.licenseagent.Agent.Activate",
            parameters: ["code": .string("ABCDE-12345-FGHIJ-67890"), "role": .string("active")]),
          peer: PeerCredentials(uid: 0, gid: 0, pid: 1, groups: []),
          respond: VarlinkResponder { _ in answered.signal() })
      }
      return answered.wait(timeout: .now() + 10) == .success
    }

    /// An active key "A" expiring at `exp` and a reserve "R" that follows it for 90 days.
    func keyPair(expiring exp: Timestamp) {
      add(issuer.key("A", exp: exp), "active")
      add(issuer.key("R", exp: exp + .days(90)), "reserve")
    }

    /// Sets the clock and fires the timer, as the kernel would at the deadline.
    func fire(at instant: Timestamp) {
      clock.set(instant)
      agent.queue.sync { timer.fire() }
    }
  }

  /// T1 with a promotion in the same decision: the step is announced (CLOCK_CHANGED), then
  /// the promotion, durable first, its words saying the clock moved. Found by
  /// scripts/vm-proof with a real `date -s` in a guest: the CLOCK_CHANGED of a step that also
  /// promoted was dropped (only the outbox was delivered).
  @Test func T1_aClockStepPastAnExpiryAnnouncesTheStepThenThePromotion() throws {
    let f = try Fixture()
    defer { f.stop() }
    let exp = TestIssuer.t0 + .days(2)
    f.keyPair(expiring: exp)
    let step = exp + .hours(1)
    f.clock.set(step)
    f.agent.sync { $0.clockStepped(by: step.microseconds(since: TestIssuer.t0)) }
    let last = f.sink.events.suffix(2)
    #expect(last.map(\.kind) == [.clockChanged, .keyPromoted])
    #expect(last.first?[field: "LICENSE_CLOCK_DELTA_USEC"] == String(step.microseconds(since: TestIssuer.t0)))
    #expect(
      last.last?.message.contains("the system clock was stepped past the expiry: 1 hour after it") == true)
    let log = f.log.all
    let saved = try #require(log.lastIndex { $0.hasPrefix("save[") && $0.contains("KEY_PROMOTED") })
    let announced = try #require(log.lastIndex(of: "send CLOCK_CHANGED"))
    #expect(saved < announced, "durable before visible: \(log)")
  }

  @Test func aDecisionIsPersistedThenAnnouncedThenAcknowledged() throws {
    let f = try Fixture()
    defer { f.stop() }
    f.log.clear()
    let reply = f.add(f.issuer.key("A", exp: TestIssuer.t0 + .days(90)), "active")
    guard case .success? = reply else {
      Issue.record("AddKey: \(String(describing: reply))")
      return
    }
    // Durable with the event in the outbox, then sent, then acknowledged (outbox empty).
    #expect(f.log.all == ["save[ACTIVE_ADDED]", "send ACTIVE_ADDED", "save[]"])
    #expect(f.store.state.outbox.isEmpty)
    // The timer follows the new key: its first warning threshold (30 days before exp).
    #expect(f.timer.deadline == TestIssuer.t0 + .days(60))
  }

  @Test func aPromotionAtTheTimerRecordsItsDelayInTheOutboxBeforeAnnouncingIt() throws {
    let f = try Fixture()
    defer { f.stop() }
    let exp = TestIssuer.t0 + .hours(2)
    f.keyPair(expiring: exp)
    // The last warning before exp (1 h), then exp itself.
    #expect(f.timer.deadline == exp - .hours(1))
    f.fire(at: exp - .hours(1))
    #expect(f.timer.deadline == exp)
    f.log.clear()
    f.fire(at: exp + TimeSpan(microseconds: 3000))
    // The promotion is written, its measured delay written into the outbox, then sent, then
    // acknowledged: what was sent is what the outbox held.
    #expect(f.log.all == ["save[KEY_PROMOTED]", "save[KEY_PROMOTED]", "send KEY_PROMOTED", "save[]"])
    let promoted = try #require(f.sink.events.last)
    #expect(promoted.kind == .keyPromoted)
    #expect(promoted[field: "LICENSE_DELAY_USEC"] == "3000")
    #expect(f.store.state[.server].active?.serial == "R")
  }

  @Test func aStateThatCannotBeWrittenAnnouncesNothingAndIsRetried() throws {
    let f = try Fixture()
    defer { f.stop() }
    let exp = TestIssuer.t0 + .minutes(30)
    f.keyPair(expiring: exp)
    // An operator's AddKey on a full disk: refused, nothing sent, the state as it was.
    f.store.fail(1)
    f.log.clear()
    let refused = f.add(f.issuer.key("R2", exp: exp + .days(120)), "reserve")
    guard case .failure(let error)? = refused else {
      Issue.record("AddKey on a full disk: \(String(describing: refused))")
      return
    }
    #expect(error.name == "io.licenseagent.Agent.StorageFailure")
    #expect(f.log.all == ["save failed"])
    #expect(f.store.state[.server].reserve?.serial == "R")
    // A second later the agent tries again: nothing is left to write (the request was
    // refused to its caller), so the timer goes back to the expiry.
    #expect(f.timer.deadline == TestIssuer.t0 + .seconds(1))
    f.fire(at: TestIssuer.t0 + .seconds(1))
    #expect(f.timer.deadline == exp)
    // The promotion on a full disk: nothing announced, retried a second later.
    f.store.fail(1)
    f.log.clear()
    f.fire(at: exp)
    #expect(f.log.all == ["save failed"])
    #expect(f.timer.deadline == exp + .seconds(1))
    f.fire(at: exp + .seconds(1))
    #expect(
      f.log.all == ["save failed", "save[KEY_PROMOTED]", "save[KEY_PROMOTED]", "send KEY_PROMOTED", "save[]"])
    let promoted = try #require(f.sink.events.last)
    #expect(promoted[field: "LICENSE_DELAY_USEC"] == "1000000")
  }

  @Test(arguments: [false, true])
  func anOutboxLeftByACrashIsSentOnceAtStart(alreadyInTheJournal: Bool) throws {
    // A state persisted with its event, the agent killed before it announced it.
    let issuer = TestIssuer()
    let engine = LicenseEngine(configuration: AgentConfiguration().engine, trust: issuer.trust)
    var initial = LicenseState()
    initial.stateID = "crashed"
    let decision = engine.addKey(
      issuer.key("A", exp: TestIssuer.t0 + .days(90)), role: .active, now: TestIssuer.t0, state: initial)
    #expect(decision.state.outbox.map(\.kind) == [.activeAdded])
    let name = decision.state.transitionName(decision.state.lastTransitionID)
    let f = try Fixture(
      state: decision.state, alreadyDelivered: alreadyInTheJournal ? ["\(name) ACTIVE_ADDED server"] : [])
    defer { f.stop() }
    let sends = f.log.all.filter { $0.hasPrefix("send") }
    #expect(sends == (alreadyInTheJournal ? [] : ["send ACTIVE_ADDED"]))
    #expect(f.store.state.outbox.isEmpty)
    #expect(f.store.state[.server].active?.serial == "A")
  }

  /// One decision that promotes two slots leaves one transition with two KEY_PROMOTED events;
  /// a crash after the first reached the journal sends only the second at start (found by
  /// the power-cut replay: the replay used to take the kind alone for the event, and lost
  /// the second announcement).
  @Test func aCrashBetweenTwoEventsOfOneKindInOneTransitionSendsTheSecondOnly() throws {
    let issuer = TestIssuer()
    let engine = LicenseEngine(configuration: AgentConfiguration().engine, trust: issuer.trust)
    let exp = TestIssuer.t0 + .days(1)
    var state = LicenseState()
    state.stateID = "two-slots"
    for (slot, name) in [(Slot.server, "S"), (.workstation, "W")] {
      for (role, suffix, until) in [(Role.active, "1", exp), (.reserve, "2", exp + .days(90))] {
        let decision = engine.addKey(
          issuer.key(name + suffix, slot: slot, exp: until), role: role, now: TestIssuer.t0, state: state)
        state = decision.state
        state.outbox = []
      }
    }
    let promoted = engine.timeReached(now: exp, state: state).state
    #expect(promoted.outbox.map(\.kind) == [.keyPromoted, .keyPromoted])
    let name = promoted.transitionName(promoted.lastTransitionID)
    let first = try #require(promoted.outbox.first?[field: "LICENSE_SLOT"])
    let f = try Fixture(state: promoted, alreadyDelivered: ["\(name) KEY_PROMOTED \(first)"])
    defer { f.stop() }
    #expect(f.sink.events.map { $0[field: "LICENSE_SLOT"] } == [first == "server" ? "workstation" : "server"])
    #expect(f.store.state.outbox.isEmpty)
  }

  /// A code-mode agent whose key K-1 (activated) expires at `exp`; the server then fails
  /// once (transient) and gives K-2 at the retry.
  func renewingAgent() throws -> (Fixture, ScriptedClient, Timestamp) {
    let issuer = TestIssuer()
    let exp = TestIssuer.t0 + .hours(2)
    let client = ScriptedClient([
      .key(issuer.key("K-1", exp: exp)),  // the manual activation
      .failure(.transient(error: "upstream busy", retryAfter: nil)),  // at exp
      .key(issuer.key("K-2", exp: exp + .days(365))),  // the retry
    ])
    let f = try Fixture(client: client, issuer: issuer)
    #expect(f.activate())
    return (f, client, exp)
  }

  /// T1 with C3 in the runtime: after a step of the clock backward, the retry comes after the
  /// delay it had left, at the timer, and is made (the state the timer was armed from is the
  /// state the agent keeps). Found by scripts/vm-proof in a real guest: no attempt for as
  /// long as the guest ran after a 2-hour step back.
  @Test func C3_T1_aRetryComesAfterItsDelayAcrossAStepBackward() throws {
    let (f, client, exp) = try renewingAgent()
    defer { f.stop() }
    f.fire(at: exp)
    #expect(f.sink.wait(for: .activationAttemptFailed))
    f.agent.queue.sync {}
    let retry = try #require(f.timer.deadline)
    // Two hours back, just after the failure.
    let back = TimeSpan.hours(2)
    f.clock.set(exp - back)
    f.agent.sync { $0.clockStepped(by: -back.microseconds) }
    #expect(f.timer.deadline == retry - back)
    #expect(f.store.state[.server].renewal?.nextAttemptAt == retry - back)
    f.fire(at: retry - back)
    #expect(f.sink.wait(for: .activationRenewed))
    f.agent.queue.sync {}
    #expect(client.requests == ["67890 -", "67890 K-1", "67890 K-1"])
    #expect(f.store.state[.server].active?.serial == "K-2")
  }

  @Test func C2_C3_aRenewalAtExpiryIsRetriedAtTheTimerAndRenews() throws {
    let (f, client, exp) = try renewingAgent()
    defer { f.stop() }
    #expect(f.store.state[.server].active?.serial == "K-1")
    // C2: at exp the server is asked for the key that continues K-1.
    f.fire(at: exp - .hours(1))
    #expect(f.timer.deadline == exp)
    f.fire(at: exp)
    #expect(f.sink.wait(for: .activationAttemptFailed))
    f.agent.queue.sync {}  // the rest of that decision (the timer) is carried out in the same block
    #expect(client.requests == ["67890 -", "67890 K-1"])
    // C3: retried after a delay drawn with full jitter under retry-initial (5 s).
    let retry = try #require(f.timer.deadline)
    #expect(retry >= exp && retry <= exp + .seconds(5), "retry at \(retry), exp \(exp)")
    f.fire(at: retry)
    #expect(f.sink.wait(for: .activationRenewed))
    f.agent.queue.sync {}
    #expect(client.requests == ["67890 -", "67890 K-1", "67890 K-1"])
    #expect(f.store.state[.server].active?.serial == "K-2")
    #expect(f.store.state.outbox.isEmpty)
  }
}
