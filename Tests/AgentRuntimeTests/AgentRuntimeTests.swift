import AgentSettings
import Dispatch
import Foundation
import LicenseCore
import LicenseStorage
import LicenseTestSupport
import Logging
import RuntimeTestSupport
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
  /// An agent on twins, started, in a temporary runtime folder (for its socket).
  struct Fixture {
    let log = Log()
    let issuer: TestIssuer
    let clock = ManualClock(TestIssuer.t0)
    let timer = ManualTimer()
    /// The monotonic timer of the state-write retry.
    let retryTimer = ManualDelayTimer()
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
      let retryTimer = self.retryTimer
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
        },
        makeDelayTimer: { _, handler in
          retryTimer.install(handler)
          return retryTimer
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
        $0.serve(
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
        _ = $0.serve(
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

    /// The state-write retry's delay has passed, at `instant` on the wall clock.
    func retry(at instant: Timestamp) {
      clock.set(instant)
      agent.queue.sync { retryTimer.fire() }
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
    #expect(last.first?[field: .clockDeltaMicroseconds] == String(step.microseconds(since: TestIssuer.t0)))
    // Its words say the clock moved, not that the agent was down: the event the engine
    // decided for a clock step, an hour after the expiry.
    var expected = LicenseEvent.keyPromoted(
      KeyPromoted(
        slot: .server, key: KeyRef(serial: "R", expiresAt: exp + .days(90)), source: .reserve,
        previous: KeyRef(serial: "A", expiresAt: exp), lateness: TimeSpan.hours(1).microseconds,
        cause: .clockStep)
    ).rendered
    expected.transitionID = last.last?.transitionID
    #expect(last.last?.message == expected.message)
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
    #expect(promoted[field: .delayMicroseconds] == "3000")
    #expect(f.store.state[.server]?.active?.serial == "R")
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
    #expect(f.store.state[.server]?.reserve?.serial == "R")
    // A second later (a duration, on the monotonic clock; the wall-clock timer waits) the
    // agent tries again: nothing is left to write (the request was refused to its
    // caller), so the timer goes back to the expiry.
    #expect(f.retryTimer.delay == .seconds(1))
    #expect(f.timer.deadline == nil)
    f.retry(at: TestIssuer.t0 + .seconds(1))
    #expect(f.timer.deadline == exp)
    // The promotion on a full disk: nothing announced, retried a second later.
    f.store.fail(1)
    f.log.clear()
    f.fire(at: exp)
    #expect(f.log.all == ["save failed"])
    #expect(f.retryTimer.delay == .seconds(1) && f.timer.deadline == nil)
    f.retry(at: exp + .seconds(1))
    #expect(
      f.log.all == ["save failed", "save[KEY_PROMOTED]", "save[KEY_PROMOTED]", "send KEY_PROMOTED", "save[]"])
    let promoted = try #require(f.sink.events.last)
    #expect(promoted[field: .delayMicroseconds] == "1000000")
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
    #expect(f.store.state[.server]?.active?.serial == "A")
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
    let first = try #require(promoted.outbox.first?[field: .slot])
    let f = try Fixture(state: promoted, alreadyDelivered: ["\(name) KEY_PROMOTED \(first)"])
    defer { f.stop() }
    #expect(f.sink.events.map { $0[field: .slot] } == [first == "server" ? "workstation" : "server"])
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
    #expect(f.store.state[.server]?.renewal?.attempts.dueAt == retry - back)
    f.fire(at: retry - back)
    #expect(f.sink.wait(for: .activationRenewed))
    f.agent.queue.sync {}
    #expect(client.requests == ["67890 -", "67890 K-1", "67890 K-1"])
    #expect(f.store.state[.server]?.active?.serial == "K-2")
  }

  @Test func C2_C3_aRenewalAtExpiryIsRetriedAtTheTimerAndRenews() throws {
    let (f, client, exp) = try renewingAgent()
    defer { f.stop() }
    #expect(f.store.state[.server]?.active?.serial == "K-1")
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
    #expect(f.store.state[.server]?.active?.serial == "K-2")
    #expect(f.store.state.outbox.isEmpty)
  }

  /// A state 0.1.0 wrote (schema 1) is written back as schema 2 at start, durably, with
  /// nothing lost, and the agent goes on from it.
  @Test func aStateOfSchema1IsWrittenBackAsSchema2AtStart() throws {
    let folder = makeTemporaryDirectory("agent-schema")
    defer { removeTemporaryDirectory(folder) }
    let fixture =
      URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().path
      + "/LicenseStorageTests/Fixtures/state-v1/held.json"
    let data = try Data(contentsOf: URL(fileURLWithPath: fixture))
    try data.write(to: URL(fileURLWithPath: folder + "/state.json"))
    let original = try JSONDecoder().decode(LicenseStateVersion1.self, from: data)
    let store = try FileStateStore(directory: folder)
    var configuration = AgentConfiguration()
    configuration.metricsTextfile = nil
    let agent = Agent(
      paths: AgentPaths(configurationDirectory: folder, stateDirectory: folder, runtimeDirectory: folder),
      configuration: configuration, trust: TestIssuer().trust, store: store, sink: RecordingSink(log: Log()),
      clock: ManualClock(TestIssuer.t0 + .days(1)), notifier: QuietNotifier(),
      logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
    try agent.start()
    agent.sync { $0.stop() }
    let written = try JSONSerialization.jsonObject(
      with: Data(contentsOf: URL(fileURLWithPath: store.stateFile)))
    #expect((written as? [String: Any])?["schemaVersion"] as? Int == 2)
    // The same slots and counters as 0.1.0's (the outbox was delivered at start).
    let state = try store.load().state
    let read = try JSONDecoder().decode(LicenseState.self, from: data)
    #expect(state[.server]?.reserve?.serial == "KS-R" && state[.workstation]?.ahead != nil)
    #expect(state.slots == read.slots && state.counters == read.counters)
    #expect(read.version1 == original)
  }
}
