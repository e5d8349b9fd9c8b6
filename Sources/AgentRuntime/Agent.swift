import ControlInterface
import Dispatch
import FoundationEssentials
import Glibc
import LicenseCore
import LicenseStorage
import Logging
import SimpleJSON
import SystemClock
import Systemd
import Varlink

/// Sends service-manager notifications (READY, STATUS, WATCHDOG, ...).
public protocol Notifier: Sendable {
  func notify(_ assignments: String)
}

extension ServiceNotifier: Notifier {}

/// Why the agent could not start: the message names the file and what to do.
public struct AgentStartError: Error, Sendable, CustomStringConvertible {
  public var description: String
}

/// The running agent: an actor whose executor is one serial queue (``DispatchQueueExecutor``),
/// so that the compiler checks that its state is reached only from there; the timer, the
/// clock watch, the control socket and the watchdog are Dispatch sources on that queue,
/// whose handlers enter the actor with `assumeIsolated` (checked at run time). Every input
/// goes through the rules engine, and each decision is carried out in one order: persist
/// (durable), announce (journal), acknowledge the outbox, re-arm the timer, update STATUS=.
public actor Agent: DispatchQueueActor {
  public static let version = ProductVersion.current

  public nonisolated let executor = DispatchQueueExecutor(
    queue: DispatchQueue(label: "license-agent", qos: Agent.queueQoS))

  /// The quality of service of every queue of the agent's (its own, the control socket's,
  /// the activation and metrics queues, the daemon's service and signal queues). One for
  /// all: libdispatch gives each its thread priority (nice), and a worker thread created
  /// from a thread of a lower one would have to lower its nice value, which an unprivileged
  /// process may not do (`Failed to set thread priority for worker thread`, errno 13, in
  /// the journal; the unit's `LimitNICE=` allows it where the service manager may raise
  /// that limit, not in every container).
  public static let queueQoS = DispatchQoS.userInteractive
  public nonisolated let paths: AgentPaths
  private var configuration: AgentConfiguration
  private var engine: LicenseEngine { didSet { publishView() } }
  private var state = LicenseState() { didSet { publishView() } }
  private let store: StateStore
  private let sink: EventSink
  private let clock: WallClock
  private let notifier: Notifier
  private var logger: Logger
  private var timer: (any WallClockTimer)?
  private var clockMonitor: ClockChangeMonitor?
  private var watchdog: DispatchSourceTimer?
  private var server: VarlinkServer?
  /// The control socket's half (``ControlPlane``), on a queue of its own.
  private var control: ControlPlane?
  private var adminGroupID: gid_t? { didSet { publishView() } }
  /// While the state cannot be written, time processing is retried with this delay.
  private var persistRetry: TimeSpan?
  /// Activation attempts run here, one at a time, off the agent's queue (they block).
  private let activationQueue = DispatchQueue(label: "license-agent.activation", qos: Agent.queueQoS)
  /// Slots whose renewal attempt is under way.
  private var attemptsInFlight: Set<Slot> = []
  /// Makes the activation client from the configuration (replaceable by tests).
  private let makeActivationClient: @Sendable (AgentConfiguration, Logger) -> ActivationClient
  /// Whether this process reaps every exited child (the daemon, whose children are all its
  /// activation clients): not in a test process, whose other children are Foundation's.
  private let reapsChildren: Bool
  private var reaper: DispatchSourceSignal?
  /// Makes the wall-clock timer on the agent's queue (a manual twin in the runtime's tests).
  private let makeTimer: @Sendable (DispatchQueue, @escaping @Sendable () -> Void) -> any WallClockTimer
  private(set) var startedAt: Timestamp { didSet { publishView() } }

  public init(
    paths: AgentPaths, configuration: AgentConfiguration, trust: TrustStore, store: StateStore,
    sink: EventSink,
    clock: WallClock = SystemWallClock(), notifier: Notifier = ServiceNotifier(), logger: Logger,
    makeActivationClient: @escaping @Sendable (AgentConfiguration, Logger) -> ActivationClient = Agent
      .execClient,
    makeTimer: @escaping @Sendable (DispatchQueue, @escaping @Sendable () -> Void) -> any WallClockTimer = {
      DispatchWallClockTimer(queue: $0, handler: $1)
    },
    reapsChildren: Bool = false
  ) {
    self.reapsChildren = reapsChildren
    self.makeActivationClient = makeActivationClient
    self.makeTimer = makeTimer
    self.paths = paths
    self.configuration = configuration
    self.engine = LicenseEngine(configuration: configuration.engine, trust: trust)
    self.store = store
    self.sink = sink
    self.clock = clock
    self.notifier = notifier
    self.logger = logger
    self.startedAt = clock.now()
  }

  // MARK: - Lifecycle

  /// Loads the state, catches up on what passed while the agent was down (P3), starts the
  /// timer, the clock watch, the control socket and the watchdog, then sends READY=1.
  /// `announceReady: false` leaves READY=1 to the caller (``announceReady()``), for when
  /// the process must finish installing its signal handlers first.
  /// Called from synchronous code (the daemon's start-up, tests): blocks until done.
  public nonisolated func start(announceReady: Bool = true) throws(AgentStartError) {
    let result: Result<Void, AgentStartError> = sync { agent in
      do {
        try agent.startIsolated(announceReady: announceReady)
        return .success(())
      } catch let error as AgentStartError {
        return .failure(error)
      } catch {
        return .failure(AgentStartError(description: "\(error)"))
      }
    }
    try result.get()
  }

  /// READY=1 with the current STATUS=. From async code (the service group) it hops onto the
  /// agent's queue without blocking a thread of the caller's executor.
  public func announceReady() { notifier.notify("READY=1\nSTATUS=\(statusLine())") }

  private func startIsolated(announceReady: Bool) throws {
    startedAt = clock.now()
    let loaded: LoadedState
    do {
      loaded = try store.load()
    } catch {
      throw AgentStartError(description: error.description)
    }
    state = loaded.state
    if let recovery = loaded.recovery {
      announce(JournalEvent.stateRecovered(error: recovery.error, file: paths.stateDirectory + "/state.json"))
      logger.warning(
        "State file recovered from its last good copy",
        metadata: ["damaged_copy": "\(recovery.quarantinedFile)"])
    }
    // A new boot, or a state the last run did not close: the journal may have lost events
    // it took (a power cut before journald synced them), which are checked below.
    let boot = Self.bootID()
    let unclean = !state.closedCleanly || state.openedInBoot != boot
    if state.stateID.isEmpty { state.stateID = UUID().uuidString.lowercased() }
    state.openedInBoot = boot
    state.closedCleanly = false
    do { try store.save(state) } catch { throw AgentStartError(description: error.description) }
    // What the journal took before this start (not what the outbox's replay sends now,
    // which the journal may not show yet: each of those gets its own check later). What
    // it took in the last seconds before a crash is looked for a few seconds from now:
    // journald may not have written it yet.
    let takenBefore = unclean ? state.delivered.filter { !$0.replayed } : []
    let settled = clock.now() - Self.journalSettleDelay
    redeliverOutbox()
    if unclean {
      let due = monotonicMilliseconds() + Self.journalSettleDelay.microseconds / 1000
      verifications += takenBefore.filter { $0.deliveredAt > settled }.map { ($0.event, due) }
      checkDelivered(takenBefore.filter { $0.deliveredAt <= settled }.map(\.event), afterUncleanStop: true)
    }
    resolveAdminGroup()

    let timer = makeTimer(queue) { [weak self] in self?.assumeIsolated { $0.timerFired() } }
    self.timer = timer
    clockMonitor = ClockChangeMonitor(queue: queue) { [weak self] delta in
      self?.assumeIsolated { $0.clockStepped(by: delta) }
    }
    if clockMonitor == nil {
      logger.warning("Cannot watch for clock changes (timerfd); deadlines still hold")
    }

    // P3: promote or expire what passed while the agent was not running, then schedule.
    let now = clock.now()
    carryOut(engine.timeReached(now: now, state: state), decidedAt: now)
    // Renewal attempts a crash interrupted are made again.
    for request in engine.interruptedAttempts(state) { startAttempt(request) }

    // The control socket runs on a queue of its own (ControlPlane): nothing a client does
    // waits in front of the timer, the clock watch or the watchdog on this one.
    let control = ControlPlane(
      view: currentView(), clock: clock, logger: logger, version: Self.version,
      forward: { [weak self] call, peer, respond in
        guard let self else { return }
        self.queue.async {
          self.assumeIsolated { agent in
            if let reply = agent.handle(call, peer: peer, respond: respond) { respond(reply) }
          }
        }
      })
    self.control = control
    let server = VarlinkServer(
      path: paths.socketPath, executor: control.executor,
      info: VarlinkServiceInfo(
        vendor: "license-agent", product: "license-agent", version: Self.version,
        url: "https://github.com/license-agent/license-agent"),
      interfaces: [
        VarlinkInterface(
          name: AgentInterface.name, description: AgentInterface.description, methods: AgentInterface.methods
        ) { call, peer, respond in
          // The server shares the control plane's executor: its handlers run where it is.
          control.assumeIsolated { $0.handle(call, peer: peer, respond: respond) }
        }
      ],
      // Root and the admin group keep capacity of their own and have no per-UID limit.
      isPrivileged: { peer in control.isAdmin(peer) },
      onDrop: { reason, peer in control.assumeIsolated { $0.connectionDropped(reason, peer: peer) } })
    do {
      try server.sync { try $0.start() }
    } catch {
      throw AgentStartError(
        description:
          "\(error); check that \(paths.runtimeDirectory) exists and is writable (RuntimeDirectory=)"
      )
    }
    self.server = server
    startWatchdog()
    startReaper()
    checkMetricsDirectory()
    scheduleMetrics()
    if announceReady { notifier.notify("READY=1\nSTATUS=\(statusLine())") }
    scheduleTrim()
    // Once more when the rest of start-up (the service group, signal handlers) is done:
    // a single deferred call, not a recurring timer.
    queue.asyncAfter(deadline: .now() + 2) { MemoryTrim.releaseExecutablePages() }
    logger.info(
      "license-agent started",
      metadata: [
        "state_directory": "\(paths.stateDirectory)", "socket": "\(paths.socketPath)",
        "version": "\(Self.version)",
      ])
  }

  /// Stops everything; STOPPING=1 first, as systemd expects. The state is marked closed
  /// cleanly (a start that does not find it so checks what the journal took).
  public func stop() {
    notifier.notify("STOPPING=1")
    state.closedCleanly = true
    saveCounted(state)
    verificationTimer?.cancel()
    verificationTimer = nil
    server?.sync { $0.stop() }
    server = nil
    control = nil
    timer?.arm(at: nil)
    timer = nil
    clockMonitor = nil
    removeMetrics()
    watchdog?.cancel()
    watchdog = nil
    reaper?.cancel()
    reaper = nil
    logger.info("license-agent stopped")
  }

  /// SIGHUP: rereads the configuration and the trust directory. An invalid configuration
  /// keeps the old one, loudly. Called from the signal's queue: the work is queued on the
  /// agent's, and the caller does not wait.
  public nonisolated func requestReload() {
    queue.async { self.assumeIsolated { $0.reload() } }
  }

  public func reload() {
    var monotonic = timespec()
    clock_gettime(CLOCK_MONOTONIC, &monotonic)
    let usec = UInt64(monotonic.tv_sec) * 1_000_000 + UInt64(monotonic.tv_nsec) / 1000
    notifier.notify("RELOADING=1\nMONOTONIC_USEC=\(usec)\nSTATUS=Reloading configuration")
    do {
      let newConfiguration = try AgentConfiguration.load(path: paths.configurationFile)
      let (trust, problems) = TrustDirectory.load(paths.trustDirectory)
      for problem in problems {
        logger.error(
          "Ignored a file of the trust directory",
          metadata: ["file": "\(problem.file)", "problem": "\(problem.problem)"])
      }
      configuration = newConfiguration
      engine = LicenseEngine(configuration: newConfiguration.engine, trust: trust)
      resolveAdminGroup()
      if newConfiguration.metricsTextfile != metricsFile {
        removeMetrics()
        checkMetricsDirectory()
      }
      logger.notice(
        "Configuration reloaded",
        metadata: ["file": "\(paths.configurationFile)", "trusted_issuers": "\(trust.keys.count)"])
      let now = clock.now()
      carryOut(engine.timeReached(now: now, state: state), decidedAt: now)
      notifier.notify("READY=1\nSTATUS=\(statusLine())")
    } catch {
      logger.error(
        "Invalid configuration: the previous configuration stays in force; fix the file and reload again",
        metadata: ["error": "\(error)"])
      notifier.notify(
        "READY=1\nSTATUS=Configuration error, previous configuration kept: \(error) | \(statusLine())")
    }
  }

  // MARK: - Time

  private func timerFired() {
    let now = clock.now()
    // The core decides; a timer that fired early finds nothing due and is re-armed.
    carryOut(engine.timeReached(now: now, state: state), decidedAt: now)
  }

  func clockStepped(by delta: Int64) {
    let now = clock.now()
    logger.notice("System clock changed", metadata: ["delta_usec": "\(delta)"])
    carryOut(engine.clockChanged(deltaMicroseconds: delta, now: now, state: state), decidedAt: now)
  }

  // MARK: - Carrying out decisions

  /// The one funnel for the engine's decisions: every action is taken apart by an
  /// exhaustive switch (an action the engine adds does not compile until it is handled
  /// here), then carried out in one order: persist (durable), announce (the outbox, exactly
  /// once), start renewal attempts, re-arm the timer, update STATUS=. Returns the storage
  /// error when the state could not be written: then nothing was announced or started and
  /// the in-memory state is unchanged.
  @discardableResult
  private func carryOut<Success>(_ decision: Decision<Success>, decidedAt: Timestamp) -> StateStoreError? {
    var transition: UInt64?
    var events: [JournalEvent] = []
    var activations: [ActivationRequest] = []
    var wake: Wake??
    for action in decision.actions {
      switch action {
      case .persist(let id): transition = id
      case .emit(let event): events.append(event)
      case .wake(let next): wake = .some(next)
      case .activate(let request): activations.append(request)
      }
    }
    if let transition {
      do {
        try store.save(decision.state)
      } catch {
        logger.critical(
          "Cannot write the state: the change is not made and will be retried",
          metadata: ["error": "\(error)"])
        stateWriteFailures += 1
        schedulePersistRetry()
        notifier.notify("STATUS=\(statusLine())")
        scheduleMetrics()
        return error
      }
      let durableAt = clock.now()
      persistRetry = nil
      state = decision.state
      // The events of the transition are in its outbox, and go out from there; an event
      // that is no transition's (CLOCK_CHANGED, when the step also promoted) goes out first,
      // in the decision's order. (Found by scripts/vm-proof: a real clock step past an
      // expiry promoted, but its CLOCK_CHANGED was never sent.)
      recordPromotionDelays(transition: transition, durableAt: durableAt, decidedAt: decidedAt)
      for event in events where event.transitionID == nil { announce(event) }
      deliverOutbox()
    } else {
      // Nothing to write: no change waits for the disk any more (a failed operator request
      // was refused to its caller), so the timer goes back to the next instant that matters.
      persistRetry = nil
      for event in events { announce(event) }
    }
    for request in activations { startAttempt(request) }
    // The decision's own next instant, or (a refusal names none) the plan of the state.
    if persistRetry == nil { timer?.arm(at: (wake ?? engine.nextWake(state))?.at) }
    notifier.notify("STATUS=\(statusLine())")
    scheduleMetrics()
    scheduleTrim()
    return nil
  }

  private var trimPending = false

  /// Code pages are kept while the agent acts again within this span.
  static let trimQuietPeriod = TimeSpan.seconds(60)

  /// Once the queue has nothing else to do, releases the code pages this burst of work
  /// touched (``MemoryTrim``), so that the idle agent stays small. Never delays a reply or
  /// an announcement: it runs after them. Not while the agent acts again soon (promotions a
  /// moment apart, a renewal retrying): the next burst would fault every page back in, and
  /// those minor faults were the tail of the promotion delay (docs/PERFORMANCE.md); the
  /// pages are released after the last burst of the series.
  private func scheduleTrim() {
    if let next = engine.nextWake(state)?.at, next < clock.now() + Self.trimQuietPeriod { return }
    guard !trimPending else { return }
    trimPending = true
    queue.async { [weak self] in
      self?.assumeIsolated { $0.trimPending = false }
      MemoryTrim.releaseExecutablePages()
    }
  }

  private func schedulePersistRetry() {
    let delay =
      persistRetry.map { TimeSpan(microseconds: min($0.microseconds * 2, TimeSpan.seconds(60).microseconds)) }
      ?? .seconds(1)
    persistRetry = delay
    timer?.arm(at: clock.now() + delay)
  }

  /// KEY_PROMOTED says how late the promotion became durable, which is known only once it
  /// is: the measured delay is written into the outbox (a second durable write) before
  /// anything is announced, so that the journal receives exactly what the outbox holds,
  /// whether the event is sent now or replayed after a crash. If that write fails, the
  /// outbox keeps the delay measured to the decision, and that is what is sent.
  private func recordPromotionDelays(transition: UInt64, durableAt: Timestamp, decidedAt: Timestamp) {
    var measured = state
    var changed = false
    for index in measured.outbox.indices {
      let event = measured.outbox[index]
      guard event.transitionID == transition, event.kind == .keyPromoted,
        let core = event[field: "LICENSE_DELAY_USEC"].flatMap(Int64.init)
      else { continue }
      // From the expired key's exp to the moment the promotion became durable.
      let delay = core + durableAt.microseconds(since: decidedAt)
      measured.outbox[index].set("LICENSE_DELAY_USEC", String(delay))
      if let slot = event[field: "LICENSE_SLOT"].flatMap(Slot.init(rawValue:)) {
        measured.counters[slot, default: SlotCounters()].lastPromotionDelayMicroseconds = delay
      }
      changed = true
    }
    if changed, saveCounted(measured) { state = measured }
  }

  /// Retries of the outbox while the journal refuses events: at most this many, 250 ms
  /// doubling (about 8 s in all), then the events go to standard error.
  static let maximumDeliveryRetries = 5
  private var deliveryRetries = 0
  private var deliveryRetryScheduled = false
  private let console = ConsoleEventSink()

  /// Sends the outbox in order, each event exactly as it is stored, and acknowledges
  /// (removes, then writes the state) only what the journal took. An event the journal
  /// refuses stops the round and is retried later (bounded); nothing taken is sent again.
  /// Where there is no journal at all, or once the retries are spent, events go to
  /// standard error instead (systemd puts that in the journal, without the fields).
  private func deliverOutbox() {
    var remaining = state.outbox[...]
    var refused: Int32?
    var taken: [JournalEvent] = []
    while let event = remaining.first {
      let name = event.transitionID.map(state.transitionName)
      switch sink.send(event, transition: name) {
      case .delivered:
        taken.append(event)
        remaining.removeFirst()
      case .unavailable:
        console.send(event, transition: name)
        remaining.removeFirst()
      case .refused(let errno):
        if deliveryRetries < Self.maximumDeliveryRetries {
          refused = errno
        } else {
          logger.critical(
            "The journal keeps refusing an event: it is written to standard error instead",
            metadata: ["event": "\(event.kind.rawValue)", "errno": "\(errno)"])
          console.send(event, transition: name)
          remaining.removeFirst()
        }
      }
      if refused != nil { break }
    }
    if remaining.count != state.outbox.count {
      // In memory at once, so that this process never sends an event twice; on disk as the
      // acknowledgement (if that write fails, a restart's replay finds them in the journal).
      // What the journal took is kept a while, to be checked against it.
      state.outbox = Array(remaining)
      recordDelivered(taken)
      saveCounted(state)
    }
    guard let refused else {
      deliveryRetries = 0
      return
    }
    guard !deliveryRetryScheduled else { return }
    deliveryRetryScheduled = true
    let delay = 250 << deliveryRetries
    deliveryRetries += 1
    logger.warning(
      "The journal refused an event; it stays in the outbox and is sent again",
      metadata: ["errno": "\(refused)", "retry_in_ms": "\(delay)", "retry": "\(deliveryRetries)"])
    queue.asyncAfter(deadline: .now() + .milliseconds(delay)) { [weak self] in
      self?.assumeIsolated { agent in
        agent.deliveryRetryScheduled = false
        agent.deliverOutbox()
      }
    }
  }

  /// An event of no state change (a refusal, a clock change, a recovery): sent at once;
  /// standard error when the journal does not take it.
  private func announce(_ event: JournalEvent) {
    if sink.send(event, transition: nil) != .delivered { console.send(event, transition: nil) }
  }

  /// At start: the events of transitions persisted but not acknowledged before a crash are
  /// sent, except those the journal shows were sent already (exactly once).
  private func redeliverOutbox() {
    guard !state.outbox.isEmpty else { return }
    let before = state.outbox.count
    let loaded = state
    state.outbox.removeAll { event in
      guard let name = event.transitionID.map(loaded.transitionName) else { return false }
      return sink.wasDelivered(event, transition: name) == true
    }
    logger.notice(
      "Events of an interrupted change are replayed",
      metadata: ["replayed": "\(state.outbox.count)", "already_delivered": "\(before - state.outbox.count)"])
    if state.outbox.count != before { saveCounted(state) }
    deliverOutbox()
  }

  // MARK: - Events the journal lost (contract §4, LICENSE_REPLAYED)

  /// How long after an event is taken the journal is asked whether it holds it: past
  /// journald's rate-limit window (`RateLimitIntervalSec=`, 30 s by default), whose drops
  /// `sd_journal_sendv` reports as success; by then journald has written what it did take.
  static let journalCheckDelay = TimeSpan.seconds(35)
  /// How long journald may take to write what it took (it writes asynchronously).
  static let journalSettleDelay = TimeSpan.seconds(5)
  /// Delivered events are kept for checking this long at most.
  static let deliveredRetention = TimeSpan.days(1)
  private var verificationTimer: DispatchSourceTimer?
  /// Events to look for in the journal, with when (monotonic milliseconds).
  private var verifications: [(event: JournalEvent, due: Int64)] = []

  /// This machine's boot id, or "" when it cannot be read.
  static func bootID() -> String {
    (MemoryTrim.readCloseOnExec("/proc/sys/kernel/random/boot_id") ?? "").trimmingWhitespace()
  }

  /// The events the journal took: kept in the state (the newest ``LicenseState/maximumDelivered``,
  /// for at most ``deliveredRetention``), and each looked for in the journal once
  /// ``journalCheckDelay`` has passed. Only where the journal can be read back.
  private func recordDelivered(_ events: [JournalEvent]) {
    guard !events.isEmpty else { return }
    let now = clock.now()
    state.delivered += events.map { DeliveredEvent(event: $0, deliveredAt: now) }
    state.delivered.removeAll { $0.deliveredAt + Self.deliveredRetention < now }
    if state.delivered.count > LicenseState.maximumDelivered {
      state.delivered.removeFirst(state.delivered.count - LicenseState.maximumDelivered)
    }
    let due = monotonicMilliseconds() + Self.journalCheckDelay.microseconds / 1000
    verifications += events.map { ($0, due) }
    armVerification()
  }

  static let replayedField = "LICENSE_REPLAYED"
  /// How many times an event lost by the journal is sent again at most.
  static let maximumSends = 3

  private func armVerification() {
    guard let first = verifications.map(\.due).min() else {
      verificationTimer?.cancel()
      verificationTimer = nil
      return
    }
    if verificationTimer == nil {
      let timer = DispatchSource.makeTimerSource(queue: queue)
      timer.setEventHandler { [weak self] in self?.assumeIsolated { $0.checkDueDeliveries() } }
      verificationTimer = timer
      timer.resume()
    }
    let wait = max(first - monotonicMilliseconds(), 0)
    verificationTimer?.schedule(deadline: .now() + .milliseconds(Int(wait)), leeway: .milliseconds(500))
  }

  /// The events whose check is due (``journalCheckDelay`` after they were taken).
  private func checkDueDeliveries() {
    let now = monotonicMilliseconds()
    let due = verifications.filter { $0.due <= now }.map(\.event)
    verifications.removeAll { $0.due <= now }
    checkDelivered(due, afterUncleanStop: false)
  }

  /// Looks for delivered events in the journal (by every field and the transition, from
  /// this agent's user and unit only: ``JournalEventSink``) and sends again, with
  /// `LICENSE_REPLAYED=1`, those it does not hold: after an unclean stop, every one taken
  /// before it; else those whose check is due. An event the journal cannot be asked about
  /// is left alone (nothing is sent twice on a guess).
  private func checkDelivered(_ due: [JournalEvent], afterUncleanStop: Bool) {
    var lost: [JournalEvent] = []
    for event in due {
      guard let id = event.transitionID,
        let index = state.delivered.firstIndex(where: { $0.event == event && !$0.replayed })
      else { continue }
      guard sink.wasDelivered(event, transition: state.transitionName(id)) == false else { continue }
      state.delivered[index].replayed = true
      var copy = event
      copy.set(Self.replayedField, "1")
      // A copy the journal lost too (its rate limit still dropping) is sent again, at most
      // `maximumSends` times in all: only ever while the journal does not hold it.
      let sent = state.delivered.count { $0.event == copy }
      guard sent < Self.maximumSends else {
        logger.critical(
          "The journal keeps losing an event: it is not sent again",
          metadata: ["event": "\(event.kind.rawValue)", "sent": "\(sent + 1)"])
        continue
      }
      lost.append(copy)
    }
    armVerification()
    guard !lost.isEmpty else { return }
    logger.warning(
      "The journal does not hold events it took: they are sent again with LICENSE_REPLAYED=1",
      metadata: [
        "events": "\(lost.map(\.kind.rawValue).joined(separator: ","))",
        "after": "\(afterUncleanStop ? "an unclean stop" : "the rate-limit window")",
      ])
    // Through the outbox, as any announcement: durable first, then sent exactly once.
    state.outbox += lost
    saveCounted(state)
    deliverOutbox()
  }

  // MARK: - Renewal (C2–C4)

  /// The default client: the shipped HTTPS client program or the site's command, run through
  /// the exec protocol; its standard error goes to the journal.
  public static func execClient(_ configuration: AgentConfiguration, _ logger: Logger) -> ActivationClient {
    let activation = configuration.activation
    let command =
      activation.client == .exec ? activation.command : [ExecActivationClient.shippedHTTPSClient()]
    return ExecActivationClient(
      command: command, url: activation.url, proxy: activation.proxy, caFile: activation.caFile,
      timeout: activation.attemptTimeout, product: configuration.product,
      machineID: ExecActivationClient.machineID(), cgroups: attemptCgroups,
      logStderr: { text in logger.warning("Activation client: \(text)") })
  }

  /// The cgroup subtree systemd delegates to the unit (`Delegate=yes`), where every attempt
  /// runs in a cgroup of its own; nil outside systemd (attempts end by their process group).
  public static let attemptCgroups = AttemptCgroups.delegated(
    environment: ProcessInfo.processInfo.environment)

  /// Runs one renewal attempt off the queue; its outcome goes back through the engine.
  private func startAttempt(_ request: ActivationRequest) {
    guard !attemptsInFlight.contains(request.slot) else { return }
    attemptsInFlight.insert(request.slot)
    let client = makeActivationClient(configuration, logger)
    logger.info(
      "Renewal attempt",
      metadata: [
        "slot": "\(request.slot.rawValue)", "attempt": "\(request.attempt)",
        "code_hint": "\(request.code.hint)", "ahead": "\(request.ahead)",
      ])
    activationQueue.async { [weak self] in
      let outcome = client.activate(
        code: request.code, currentSerial: request.currentSerial, ahead: request.ahead,
        currentExpiresAt: request.currentExpiresAt)
      guard let self else { return }
      self.queue.async { self.assumeIsolated { $0.finishAttempt(request, outcome) } }
    }
  }

  private func finishAttempt(_ request: ActivationRequest, _ outcome: ActivationOutcome) {
    attemptsInFlight.remove(request.slot)
    let now = clock.now()
    switch outcome {
    case .key(let text):
      carryOut(
        engine.activationSucceeded(
          slot: request.slot, key: text, ahead: request.ahead, now: now, state: state),
        decidedAt: now)
    case .failure(let failure):
      carryOut(
        engine.activationFailed(
          slot: request.slot, failure: failure, ahead: request.ahead, jitter: Double.random(in: 0..<1),
          now: now, state: state),
        decidedAt: now)
    }
    // An attempt the engine started while this one was under way (the expiry came during a
    // request ahead, C6: the renewal at expiry) waited for it; it is made now.
    for pending in engine.interruptedAttempts(state) where pending.slot == request.slot {
      startAttempt(pending)
    }
  }

  /// Manual activation (C5): obtains the key for `code` and adds it like AddKey, keeping the
  /// code. Answers through `respond` once the activation server has answered.
  private func activate(code: ActivationCode, role: Role, respond: VarlinkResponder) {
    let client = makeActivationClient(configuration, logger)
    logger.info("Manual activation", metadata: ["role": "\(role.rawValue)", "code_hint": "\(code.hint)"])
    activationQueue.async { [weak self] in
      let outcome = client.activate(code: code, currentSerial: nil, ahead: false, currentExpiresAt: nil)
      guard let self else { return }
      self.queue.async {
        self.assumeIsolated {
          $0.finishActivation(code: code, role: role, outcome: outcome, respond: respond)
        }
      }
    }
  }

  private func finishActivation(
    code: ActivationCode, role: Role, outcome: ActivationOutcome, respond: VarlinkResponder
  ) {
    switch outcome {
    case .failure(let failure):
      let error = failure.error
      let transient: Bool
      if case .permanent = failure { transient = false } else { transient = true }
      let advice =
        transient
        ? "The activation server could not be reached or was busy; nothing was changed. Try again later."
        : "The activation server refused the code …\(code.hint); nothing was changed. Check the code with the vendor."
      respond(
        .failure(
          VarlinkError(
            AgentInterface.activationFailed,
            ["error": .string(error), "message": .string(advice), "transient": .bool(transient)])))
    case .key(let text):
      let now = clock.now()
      let decision = engine.addKey(text, role: role, code: code, now: now, state: state)
      switch decision.result {
      case .failure(let violation):
        carryOut(decision, decidedAt: now)
        respond(.failure(Self.error(violation)))
      case .success(let added):
        if let failure = carryOut(decision, decidedAt: now) {
          respond(.failure(Self.storageFailure(failure)))
        } else {
          respond(.success(varlinkParameters(AddKeyReply(added, checkOnly: false))))
        }
      }
    }
  }

  // MARK: - Metrics (contract §8)

  /// Failed writes of the state since start (`license_agent_state_write_failures_total`).
  private var stateWriteFailures = 0

  /// A write of the state besides a decision's own (the outbox's acknowledgement, the
  /// measured promotion delay): a failure is only counted, the next write carries it.
  @discardableResult
  private func saveCounted(_ state: LicenseState) -> Bool {
    do {
      try store.save(state)
      return true
    } catch {
      stateWriteFailures += 1
      return false
    }
  }

  /// Where the metrics go: the configured textfile, unless its directory was missing.
  private var metricsFile: String?
  private var metricsPending = false
  private var metricsFailureLogged = false
  /// The file is written here, off the agent's queue: a slow or failing disk never delays
  /// a promotion or a reply. (Internal: tests wait on it.)
  nonisolated let metricsQueue = DispatchQueue(label: "license-agent.metrics", qos: Agent.queueQoS)

  /// At start and on reload: a textfile whose directory does not exist (node_exporter not
  /// installed) is not written, and the agent says so once.
  private func checkMetricsDirectory() {
    metricsFile = nil
    metricsFailureLogged = false
    guard let path = configuration.metricsTextfile else { return }
    let directory = MetricsFile.directory(of: path)
    var info = stat()
    guard stat(directory, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR else {
      logger.notice(
        "Metrics are not written: their directory does not exist (install prometheus-node-exporter, or set [metrics] textfile, \"\" to turn this off)",
        metadata: ["directory": "\(directory)", "textfile": "\(path)"])
      return
    }
    metricsFile = path
  }

  /// Writes the metrics once the current burst of work is done (one write for many
  /// changes), after every announcement: the text is made here, from the state, and
  /// written on the metrics queue.
  private func scheduleMetrics() {
    guard metricsFile != nil, !metricsPending else { return }
    metricsPending = true
    queue.async { [weak self] in self?.assumeIsolated { $0.writeMetrics() } }
  }

  private func writeMetrics() {
    metricsPending = false
    guard let path = metricsFile else { return }
    let text = MetricsText.render(
      state: state, engine: engine, version: Self.version, product: configuration.product,
      stateWriteFailures: stateWriteFailures)
    let queue = self.queue
    metricsQueue.async { [weak self] in
      let result = MetricsFile.write(text, to: path)
      let agent = self
      queue.async { agent?.assumeIsolated { $0.metricsWritten(result, path: path) } }
    }
  }

  /// A failure is logged once, not on every change; once a write succeeds again, so is that.
  private func metricsWritten(_ result: Result<Void, MetricsFile.WriteError>, path: String) {
    switch result {
    case .success:
      if metricsFailureLogged {
        metricsFailureLogged = false
        logger.notice("Metrics are written again", metadata: ["textfile": "\(path)"])
      }
    case .failure(let error):
      guard !metricsFailureLogged else { return }
      metricsFailureLogged = true
      logger.warning(
        "Cannot write the metrics file; licensing goes on, and this is not logged again until a write succeeds",
        metadata: ["textfile": "\(path)", "error": "\(error.description)"])
    }
  }

  /// At stop: the file goes, so that monitoring sees the agent is down (the unit's
  /// ExecStopPost does the same after a crash). After a write under way, on the metrics
  /// queue; waited for at most a second, so that a stuck disk never holds this queue.
  private func removeMetrics() {
    guard let path = metricsFile else { return }
    metricsFile = nil
    let removed = DispatchSemaphore(value: 0)
    metricsQueue.async {
      MetricsFile.remove(path)
      removed.signal()
    }
    _ = removed.wait(timeout: .now() + 1)
  }

  // MARK: - Status

  /// One line for systemd's STATUS=: `server: KS-1 until 2026-12-31 09:00 UTC, reserve ready; ...`.
  func statusLine() -> String {
    if persistRetry != nil { return "ERROR: cannot write the state in \(paths.stateDirectory); retrying" }
    let parts = state.slotsInUse.map { slot -> String in
      let slotState = state[slot]
      if let active = slotState.active {
        let until = String(active.expiresAt.rfc3339.prefix(16).map { $0 == "T" ? " " : $0 }) + " UTC"
        return "\(slot.rawValue): \(active.serial) until \(until), "
          + (slotState.reserve != nil ? "reserve ready" : "no reserve")
      }
      return "\(slot.rawValue): EXPIRED (\(slotState.expired?.serial ?? "?"))"
    }
    return parts.isEmpty ? "No licence key; add one with agentctl add-key" : parts.joined(separator: "; ")
  }

  /// The status reply (call on `queue`).
  func status() -> StatusReply {
    StatusBuilder.build(
      state: state, engine: engine, now: clock.now(), version: Self.version, startedAt: startedAt)
  }

  // MARK: - Control

  private func resolveAdminGroup() {
    adminGroupID = configuration.adminGroup.withCString { name in getgrnam(name)?.pointee.gr_gid }
    if adminGroupID == nil {
      logger.notice(
        "The admin group does not exist: only root may change keys",
        metadata: ["admin_group": "\(configuration.adminGroup)"])
    }
  }

  /// What the control plane reads without this queue (``ControlView``).
  private func currentView() -> ControlView {
    ControlView(
      state: state, engine: engine, startedAt: startedAt, adminGroup: configuration.adminGroup,
      adminGroupID: adminGroupID)
  }

  /// After every change: the control plane answers from this (a copy of values, no lock
  /// held while it builds a reply).
  private func publishView() {
    guard let control else { return }
    let view = currentView()
    control.view.withLock { $0 = view }
  }

  private func isAdmin(_ peer: PeerCredentials) -> Bool {
    peer.uid == 0 || peer.uid == getuid() || (adminGroupID.map(peer.isMember) ?? false)
  }

  /// Carries out a call of `io.licenseagent.Agent` of root or the admin group that changes
  /// the state, or asks for the status (on `queue`); nil when `respond` will. The control
  /// plane answers the others, refuses non-admins (and logs that, at a bounded rate) and
  /// forwards only these; the check here is a second one.
  func handle(_ call: VarlinkCall, peer: PeerCredentials, respond: VarlinkResponder) -> VarlinkReply? {
    guard isAdmin(peer) else {
      return .failure(Self.permissionDenied(call.member, adminGroup: configuration.adminGroup))
    }
    switch call.member {
    case "GetStatus":
      if let error = call.unexpectedParameter() { return .failure(error) }
      return .success(varlinkParameters(status()))
    case "Activate":
      if let error = call.unexpectedParameter(allowed: ["code", "role"]) { return .failure(error) }
      guard let text = call.parameters["code"]?.stringValue else {
        return .failure(.invalidParameter("code"))
      }
      guard let role = call.parameters["role"]?.stringValue.flatMap(Role.init(rawValue:)) else {
        return .failure(.invalidParameter("role"))
      }
      // Checked for shape here: a malformed code never reaches the network.
      guard let code = ActivationCode(text) else {
        return .failure(Self.error(ActivationCode.formatViolation()))
      }
      activate(code: code, role: role, respond: respond)
      return nil
    case "AddKey":
      let parameters: KeyCallParameters
      switch KeyCallParameters.parse(call) {
      case .success(let parsed): parameters = parsed
      case .failure(let error): return .failure(error)
      }
      let role = parameters.role
      let now = clock.now()
      let decision = engine.addKey(
        parameters.key, role: role, replaceScheme: parameters.replaceScheme, now: now, state: state)
      switch decision.result {
      case .failure(let violation):
        carryOut(decision, decidedAt: now)
        logger.notice(
          "Key refused",
          metadata: [
            "role": "\(role.rawValue)", "rule": "\(violation.ruleAndCode)", "peer_uid": "\(peer.uid)",
          ])
        return .failure(Self.error(violation))
      case .success(let added):
        if let failure = carryOut(decision, decidedAt: now) { return .failure(Self.storageFailure(failure)) }
        logger.info(
          "Key added",
          metadata: ["role": "\(role.rawValue)", "serial": "\(added.key.serial)", "peer_uid": "\(peer.uid)"])
        return .success(varlinkParameters(AddKeyReply(added, checkOnly: false)))
      }
    case "RemoveReserve":
      if let error = call.unexpectedParameter(allowed: ["slot"]) { return .failure(error) }
      guard let slot = call.parameters["slot"]?.stringValue.flatMap(Slot.init(rawValue:)) else {
        return .failure(.invalidParameter("slot"))
      }
      let removed = state[slot].reserve
      let now = clock.now()
      let decision = engine.removeReserve(slot: slot, now: now, state: state)
      switch decision.result {
      case .failure(let violation): return .failure(Self.error(violation))
      case .success:
        if let failure = carryOut(decision, decidedAt: now) { return .failure(Self.storageFailure(failure)) }
        return .success(varlinkParameters(RemoveReserveReply(removed: KeyInfo(removed!))))
      }
    default:
      return .failure(.methodNotFound(call.method))
    }
  }

  static func permissionDenied(_ method: String, adminGroup: String) -> VarlinkError {
    VarlinkError(
      AgentInterface.permissionDenied,
      [
        "message": .string(
          "\(method) changes the licence state: run it as root or as a member of the group \"\(adminGroup)\"."
        )
      ])
  }

  static func error(_ violation: RuleViolation) -> VarlinkError {
    var parameters: [String: JSONValue] = [
      "rule": .string(violation.rule.rawValue), "code": .string(violation.code),
      "message": .string(violation.message),
    ]
    if let reason = violation.reason { parameters["reason"] = .string(reason) }
    if let serial = violation.serial { parameters["serial"] = .string(serial) }
    return VarlinkError(AgentInterface.ruleViolation, parameters)
  }

  static func storageFailure(_ error: StateStoreError) -> VarlinkError {
    VarlinkError(
      AgentInterface.storageFailure, ["message": .string("Nothing was changed: \(error.description)")])
  }

  // MARK: - Children

  /// As the subreaper of its activation clients, the daemon reaps whatever exits, on the
  /// activation queue, which also runs the attempts (so never while an attempt waits for
  /// its own child): a process that escaped an attempt (outside systemd, `setsid`) is not
  /// left a zombie when it exits later.
  private func startReaper() {
    guard reapsChildren else { return }
    if let cgroups = Self.attemptCgroups {
      logger.info(
        "Activation attempts run each in a cgroup of their own, ended whole",
        metadata: ["cgroup": "\(cgroups.folder)"])
    } else {
      logger.info("Activation attempts run each in a process group of their own (no delegated cgroup)")
    }
    let source = DispatchSource.makeSignalSource(signal: SIGCHLD, queue: activationQueue)
    source.setEventHandler { _ = reapExitedChildren() }
    reaper = source
    source.resume()
  }

  // MARK: - Watchdog

  private func startWatchdog() {
    guard let timeout = ServiceNotifier.watchdogTimeout() else { return }
    // A little more often than half the timeout, systemd's advice: the largest gap between
    // two pings stays under half of it, jitter included.
    let interval = DispatchTimeInterval.microseconds(Int(timeout * 45 / 100))
    let source = DispatchSource.makeTimerSource(queue: queue)
    // Pinged from the agent's own queue: a stuck agent stops pinging and is restarted.
    source.setEventHandler { [notifier] in notifier.notify("WATCHDOG=1") }
    source.schedule(deadline: .now() + interval, repeating: interval, leeway: .milliseconds(10))
    watchdog = source
    source.resume()
  }
}
