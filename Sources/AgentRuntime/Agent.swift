import AgentSettings
import ControlInterface
import Dispatch
import FoundationEssentials
import Glibc
import LicenseCore
import LicenseStorage
import Logging
import SimpleJSON
import StandardIO
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
/// clock watch and the watchdog are Dispatch sources on that queue, whose handlers enter
/// the actor with `assumeIsolated` (checked at run time). The control socket runs on a queue
/// of its own (``ControlEndpoint``), so that no client delays the licensing timeline.
///
/// This file holds the lifecycle, time and the funnel: every input goes through the rules
/// engine, and each decision is carried out in one order (persist, announce, acknowledge,
/// re-arm the timer, update STATUS=). The concerns around it are values the actor owns,
/// each in its file: ``OutboxCourier`` (the journal, exactly once), ``RenewalRunner``
/// (activation attempts), ``MetricsPublisher`` (the textfile), ``ControlEndpoint`` (the
/// control socket).
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
  /// The metrics file is written here, off the agent's queue (tests wait on it).
  nonisolated let metricsQueue = DispatchQueue(label: "license-agent.metrics", qos: Agent.queueQoS)

  private var configuration: AgentConfiguration
  private var engine: LicenseEngine { didSet { viewChanged = true } }
  private var state = LicenseState() { didSet { viewChanged = true } }
  private(set) var startedAt: Timestamp { didSet { viewChanged = true } }
  /// The control plane's view is behind the agent's state: it is published (once) when
  /// the work in hand is done (``publishView()``).
  private var viewChanged = false
  /// Durable changes not yet given to Monitor's subscribers and the hooks (N1, N3): given
  /// with the view, once the work in hand is done.
  private var pendingChanges: [DurableChange] = []
  private let hooks: HookRunner
  /// The last STATUS= sent to the service manager: a decision that does not change it sends
  /// nothing (PID 1 is not told the same line for every call of a busy client).
  private var lastStatus: String?
  private let store: StateStore
  private let clock: WallClock
  private let notifier: Notifier
  private var logger: Logger
  /// Makes the wall-clock timer on the agent's queue (a manual twin in the runtime's tests).
  private let makeTimer: @Sendable (DispatchQueue, @escaping @Sendable () -> Void) -> any WallClockTimer
  private var timer: (any WallClockTimer)?
  private var clockMonitor: ClockChangeMonitor?
  private var watchdog: DispatchSourceTimer?
  /// Makes the monotonic timer of the state-write retry (a manual twin in the tests).
  private let makeDelayTimer: @Sendable (DispatchQueue, @escaping @Sendable () -> Void) -> any DelayTimer
  /// While the state cannot be written, time processing is retried after this delay, on the
  /// monotonic clock (a duration), and the wall-clock timer waits.
  private var persistRetry: TimeSpan?
  private var persistRetryTimer: (any DelayTimer)?
  /// Failed writes of the state since start (`license_agent_state_write_failures_total`).
  private var stateWriteFailures = 0
  private var trimPending = false

  private var courier: OutboxCourier
  private var renewals: RenewalRunner
  private var metrics: MetricsPublisher
  private var control = ControlEndpoint()

  public init(
    paths: AgentPaths, configuration: AgentConfiguration, trust: TrustStore, store: StateStore,
    sink: EventSink,
    clock: WallClock = SystemWallClock(), notifier: Notifier = ServiceNotifier(), logger: Logger,
    makeActivationClient: @escaping @Sendable (AgentConfiguration, Logger) -> ActivationClient = Agent
      .execClient,
    makeTimer: @escaping @Sendable (DispatchQueue, @escaping @Sendable () -> Void) -> any WallClockTimer = {
      DispatchWallClockTimer(queue: $0, handler: $1)
    },
    makeDelayTimer: @escaping @Sendable (DispatchQueue, @escaping @Sendable () -> Void) -> any DelayTimer = {
      DispatchDelayTimer(queue: $0, handler: $1)
    },
    reapsChildren: Bool = false
  ) {
    self.paths = paths
    self.configuration = configuration
    self.engine = LicenseEngine(configuration: configuration.engine, trust: trust)
    self.store = store
    self.clock = clock
    self.notifier = notifier
    self.logger = logger
    self.makeTimer = makeTimer
    self.makeDelayTimer = makeDelayTimer
    self.startedAt = clock.now()
    self.courier = OutboxCourier(sink: sink)
    self.renewals = RenewalRunner(
      queue: DispatchQueue(label: "license-agent.activation", qos: Agent.queueQoS),
      makeClient: makeActivationClient, reapsChildren: reapsChildren)
    self.metrics = MetricsPublisher(queue: metricsQueue)
    self.hooks = HookRunner(directory: paths.hooksDirectory)
  }

  // MARK: - Lifecycle

  /// Loads the state, catches up on what passed while the agent was down (P3), starts the
  /// timer, the clock watch, the control socket and the watchdog, then sends READY=1.
  /// `announceReady: false` leaves READY=1 to the caller (``announceReady()``), for when
  /// the process must finish installing its signal handlers first.
  /// Called from synchronous code (the daemon's start-up, tests): blocks until done.
  public nonisolated func start(announceReady: Bool = true) throws(AgentStartError) {
    let result: Result<Void, AgentStartError> = sync { agent in
      do throws(AgentStartError) {
        try agent.startIsolated(announceReady: announceReady)
        return .success(())
      } catch {
        return .failure(error)
      }
    }
    try result.get()
  }

  /// READY=1 with the current STATUS=. From async code (the service group) it hops onto the
  /// agent's queue without blocking a thread of the caller's executor.
  public func announceReady() {
    notifier.notify("READY=1\nSTATUS=\(statusLine())")
    lastStatus = nil
  }

  private func startIsolated(announceReady: Bool) throws(AgentStartError) {
    startedAt = clock.now()
    let loaded: LoadedState
    do {
      loaded = try store.load()
    } catch {
      throw AgentStartError(description: error.description)
    }
    state = loaded.state
    if let recovery = loaded.recovery {
      courier.announce(
        LicenseEvent.stateRecovered(error: recovery.error, file: paths.stateDirectory + "/state.json")
          .rendered)
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
    // Also writes a state of an older schema back in the current one, durably.
    do { try store.save(state) } catch { throw AgentStartError(description: error.description) }
    // What the journal took before this start (not what the outbox's replay sends now,
    // which the journal may not show yet: each of those gets its own check later). What
    // it took in the last seconds before a crash is looked for a few seconds from now:
    // journald may not have written it yet.
    let takenBefore = unclean ? state.delivered.filter { !$0.replayed } : []
    let settled = clock.now() - OutboxCourier.journalSettleDelay
    if courier.dropAlreadyDelivered(&state, logger: logger) { saveCounted(state) }
    deliverOutbox()
    if unclean {
      courier.schedule(
        takenBefore.filter { $0.deliveredAt > settled }.map(\.event), after: OutboxCourier.journalSettleDelay)
      sendAgainWhatTheJournalLost(
        takenBefore.filter { $0.deliveredAt <= settled }.map(\.event), after: "an unclean stop")
    }
    control.resolveAdminGroup(configuration.adminGroup, logger: logger)
    hooks.configure(timeout: configuration.hookTimeout, logger: logger)

    let timer = makeTimer(queue) { [weak self] in self?.assumeIsolated { $0.timerFired() } }
    self.timer = timer
    persistRetryTimer = makeDelayTimer(queue) { [weak self] in self?.assumeIsolated { $0.timerFired() } }
    clockMonitor = ClockChangeMonitor(queue: queue) { [weak self] delta in
      self?.assumeIsolated { $0.clockStepped(by: delta) }
    }
    if clockMonitor == nil {
      logger.warning("Cannot watch for clock changes (timerfd); deadlines still hold")
    }

    // P3: promote or expire what passed while the agent was not running, then schedule.
    let now = clock.now()
    carryOut(engine.timeReached(now: now, state: state), decidedAt: now)
    // N2: the consumers the configuration expects are tracked from now on.
    carryOut(engine.consumersReconfigured(now: now, state: state), decidedAt: now)
    // B1: the blocklists of the directory.
    readBlocklists()
    // Renewal attempts a crash interrupted are made again.
    for request in engine.interruptedAttempts(state) { startAttempt(request) }

    // The control socket runs on a queue of its own: nothing a client does waits in front
    // of the timer, the clock watch or the watchdog on this one.
    try control.start(
      paths: paths, view: currentView(), clock: clock, logger: logger, version: Self.version,
      forward: { [weak self] call, peer, respond, verified in
        guard let self else { return }
        self.queue.async {
          self.assumeIsolated { agent in
            if let reply = agent.serve(call, peer: peer, respond: respond, verified: verified) {
              respond(reply)
            }
          }
        }
      })
    startWatchdog()
    renewals.startReaping(logger: logger)
    metrics.configure(configuration.metricsTextfile, logger: logger)
    scheduleMetrics()
    if announceReady { notifier.notify("READY=1\nSTATUS=\(statusLine())") }
    lastStatus = nil
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
    courier.checkTimer?.cancel()
    courier.checkTimer = nil
    control.stop()
    timer?.arm(at: nil)
    timer = nil
    clockMonitor = nil
    cancelPersistRetry()
    persistRetryTimer = nil
    metrics.remove()
    watchdog?.cancel()
    watchdog = nil
    renewals.stop()
    logger.info("license-agent stopped")
  }

  /// SIGHUP: rereads the configuration and the trust directory. An invalid configuration
  /// keeps the old one, loudly. Called from the signal's queue: the work is queued on the
  /// agent's, and the caller does not wait.
  public nonisolated func requestReload() {
    queue.async { self.assumeIsolated { $0.reload() } }
  }

  public func reload() {
    notifier.notify(
      "RELOADING=1\nMONOTONIC_USEC=\(MonotonicClock.microseconds())\nSTATUS=Reloading configuration")
    lastStatus = nil
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
      control.resolveAdminGroup(configuration.adminGroup, logger: logger)
      hooks.configure(timeout: configuration.hookTimeout, logger: logger)
      publishView()
      if newConfiguration.metricsTextfile != metrics.file {
        metrics.remove()
        metrics.configure(newConfiguration.metricsTextfile, logger: logger)
      }
      logger.notice(
        "Configuration reloaded",
        metadata: ["file": "\(paths.configurationFile)", "trusted_issuers": "\(trust.keys.count)"])
      let now = clock.now()
      carryOut(engine.timeReached(now: now, state: state), decidedAt: now)
      carryOut(engine.consumersReconfigured(now: now, state: state), decidedAt: now)
      readBlocklists()
      notifier.notify("READY=1\nSTATUS=\(statusLine())")
      lastStatus = nil
    } catch {
      logger.error(
        "Invalid configuration: the previous configuration stays in force; fix the file and reload again",
        metadata: ["error": "\(error)"])
      notifier.notify(
        "READY=1\nSTATUS=Configuration error, previous configuration kept: \(error) | \(statusLine())")
      lastStatus = nil
    }
  }

  /// This machine's boot id, or "" when it cannot be read.
  static func bootID() -> String {
    String(decoding: StandardStream.readFile("/proc/sys/kernel/random/boot_id") ?? [], as: UTF8.self)
      .trimmingWhitespace()
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

  /// The one funnel for the engine's decisions, carried out in one order: persist
  /// (durable), measure the promotions, announce (the outbox, exactly once), start renewal
  /// attempts, re-arm the timer at the state's next instant, update STATUS=. Returns the
  /// storage error when the state could not be written: then nothing was announced or
  /// started and the in-memory state is unchanged.
  @discardableResult
  private func carryOut<Success>(_ decision: Decision<Success>, decidedAt: Timestamp) -> StateStoreError? {
    if decision.persistedTransition != nil {
      do {
        try store.save(decision.state)
      } catch {
        logger.critical(
          "Cannot write the state: the change is not made and will be retried",
          metadata: ["error": "\(error)"])
        stateWriteFailures += 1
        schedulePersistRetry()
        notifyStatus()
        scheduleMetrics()
        return error
      }
      let durableAfter = clock.now().microseconds(since: decidedAt)
      cancelPersistRetry()
      state = decision.state
      // KEY_PROMOTED says how late the promotion became durable, which is known only once
      // it is: the measured delay goes into the outbox (a second durable write) before
      // anything is announced, so that the journal receives exactly what the outbox holds,
      // whether sent now or replayed after a crash. If that write fails, the outbox keeps
      // the delay measured to the decision, and that is what is sent.
      if let measured = engine.measuringPromotions(of: decision, durableAfter: durableAfter),
        saveCounted(measured)
      {
        state = measured
      }
      // An event that is no transition's (CLOCK_CHANGED, when the step also promoted) goes
      // out first, in the decision's order; the transition's go out from its outbox. (Found
      // by scripts/vm-proof: a real clock step past an expiry promoted, but its
      // CLOCK_CHANGED was never sent.)
      for case .emit(let event, nil) in decision.actions { courier.announce(event.rendered) }
      // N1, N3: what this change announces, as durable as it is, for the subscribers and
      // the hooks (given once the work in hand is done, after the journal has it).
      if let id = decision.persistedTransition {
        let transition = state.transitionName(id)
        let before = pendingChanges.count
        pendingChanges += decision.actions.compactMap { action in
          guard case .emit(let event, nil) = action else { return nil }
          return DurableChange(event: event.rendered, transition: nil)
        }
        pendingChanges += state.outbox.filter { $0.transitionID == id }.map {
          DurableChange(event: $0, transition: transition)
        }
        // A change that logs nothing (a usage report within its band, a confirmation) still
        // reaches the subscribers, with the status after it.
        if pendingChanges.count == before {
          pendingChanges.append(DurableChange(event: nil, transition: transition))
        }
      }
      deliverOutbox()
    } else {
      // Nothing to write: no change waits for the disk any more (a failed operator request
      // was refused to its caller), so the timer goes back to the next instant that matters.
      cancelPersistRetry()
      for event in decision.events { courier.announce(event.rendered) }
    }
    for request in decision.activations { startAttempt(request) }
    if persistRetry == nil { timer?.arm(at: engine.nextWake(state)?.at) }
    publishView()
    notifyStatus()
    scheduleMetrics()
    scheduleTrim()
    return nil
  }

  /// STATUS= for the service manager, when it changed.
  private func notifyStatus() {
    let line = statusLine()
    guard line != lastStatus else { return }
    lastStatus = line
    notifier.notify("STATUS=\(line)")
  }

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

  /// The state could not be written: time is processed again after 1 s, doubling to 60 s,
  /// measured on the monotonic clock; the wall-clock timer waits meanwhile (its deadline
  /// may be past: it would fire at once, again and again).
  private func schedulePersistRetry() {
    let delay =
      persistRetry.map { TimeSpan(microseconds: min($0.microseconds * 2, TimeSpan.seconds(60).microseconds)) }
      ?? .seconds(1)
    persistRetry = delay
    persistRetryTimer?.arm(after: delay)
    timer?.arm(at: nil)
  }

  private func cancelPersistRetry() {
    persistRetryTimer?.arm(after: nil)
    persistRetry = nil
  }

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

  // MARK: - The outbox (OutboxCourier)

  /// A round of delivery; its acknowledgement made durable; a refused round retried.
  private func deliverOutbox() {
    let round = courier.deliver(&state, now: clock.now(), logger: logger)
    // Subscribers and hooks get the changes as soon as the journal has them, not after the
    // acknowledgement's write below (a whole fsync later).
    publishView()
    if round.acknowledged {
      saveCounted(state)
      armJournalChecks()
    }
    guard let delay = round.retryAfterMilliseconds else { return }
    queue.asyncAfter(deadline: .now() + .milliseconds(delay)) { [weak self] in
      self?.assumeIsolated { agent in
        agent.courier.retryScheduled = false
        agent.deliverOutbox()
      }
    }
  }

  private func armJournalChecks() {
    guard let due = courier.nextCheck else {
      courier.checkTimer?.cancel()
      courier.checkTimer = nil
      return
    }
    if courier.checkTimer == nil {
      let timer = DispatchSource.makeTimerSource(queue: queue)
      timer.setEventHandler { [weak self] in
        self?.assumeIsolated { agent in
          agent.sendAgainWhatTheJournalLost(agent.courier.dueChecks(), after: "the rate-limit window")
        }
      }
      courier.checkTimer = timer
      timer.resume()
    }
    let wait = max(due - MonotonicClock.milliseconds(), 0)
    courier.checkTimer?.schedule(deadline: .now() + .milliseconds(Int(wait)), leeway: .milliseconds(500))
  }

  /// Events the journal took and no longer holds are sent again, with `LICENSE_REPLAYED=1`,
  /// through the outbox like any announcement: durable first, then sent exactly once.
  private func sendAgainWhatTheJournalLost(_ due: [JournalEvent], after: String) {
    let copies = courier.lost(due, in: &state, logger: logger)
    armJournalChecks()
    guard !copies.isEmpty else { return }
    logger.warning(
      "The journal does not hold events it took: they are sent again with LICENSE_REPLAYED=1",
      metadata: ["events": "\(copies.map(\.kind.rawValue).joined(separator: ","))", "after": "\(after)"])
    state.outbox += copies
    saveCounted(state)
    deliverOutbox()
  }

  // MARK: - Renewal (RenewalRunner)

  /// The default client: the shipped HTTPS client program or the site's command, run through
  /// the exec protocol; its standard error goes to the journal.
  public static func execClient(_ configuration: AgentConfiguration, _ logger: Logger) -> ActivationClient {
    let activation = configuration.activation
    let command =
      activation.client == .exec ? activation.command : [ExecActivationClient.shippedHTTPSClient()]
    return ExecActivationClient(
      command: command, url: activation.url, proxy: activation.proxy, caFile: activation.caFile,
      timeout: activation.attemptTimeout, product: configuration.product,
      machineID: ExecActivationClient.machineID(), cgroups: RenewalRunner.attemptCgroups,
      logStderr: { text in logger.warning("Activation client: \(text)") })
  }

  /// Runs one renewal attempt off the queue; its outcome goes back through the engine.
  private func startAttempt(_ request: ActivationRequest) {
    renewals.start(request, configuration: configuration, logger: logger) { [weak self] outcome in
      guard let self else { return }
      self.queue.async { self.assumeIsolated { $0.finishAttempt(request, outcome) } }
    }
  }

  private func finishAttempt(_ request: ActivationRequest, _ outcome: ActivationOutcome) {
    renewals.finished(request.slot)
    let now = clock.now()
    carryOut(
      engine.activationFinished(
        request, outcome: outcome, jitter: Double.random(in: 0..<1), now: now, state: state),
      decidedAt: now)
    // An attempt the engine started while this one was under way (the expiry came during a
    // request ahead, C6: the renewal at expiry) waited for it; it is made now.
    for pending in engine.interruptedAttempts(state) where pending.slot == request.slot {
      startAttempt(pending)
    }
  }

  // MARK: - Blocklists (B1)

  /// The lists of the blocklist directory: per issuer, only the verified list with the
  /// highest sequence is given to the engine (kept when newer than the issuer's list the
  /// state has), so that a reload applies one list per issuer, never an older one on the way
  /// to a newer. A file older than the kept list (a newer one came through the control
  /// interface) is normal and said once at info; a file that cannot be verified is an error
  /// naming it. File names and problems are bounded text from outside.
  private func readBlocklists() {
    let (lists, problems) = BlocklistDirectory.load(paths.blocklistDirectory)
    func ignored(_ file: String, _ problem: String, code: String? = nil) {
      var metadata: Logger.Metadata = [
        "file": "\(ExternalText.bounded(file, limit: ExternalText.messageLimit))",
        "problem": "\(ExternalText.bounded(problem, limit: ExternalText.messageLimit))",
      ]
      if let code { metadata["code"] = "\(code)" }
      logger.error("Ignored a file of the blocklist directory", metadata: metadata)
    }
    for problem in problems { ignored(problem.file, problem.problem) }
    // Each file read once: a kept list known by its digest, any other verified. Per issuer,
    // the newest (by sequence, then name) is the one given to the engine; nothing when that
    // is the list already kept.
    var newest: [String: (file: String, sequence: Int, list: Blocklist?)] = [:]
    func offer(_ issuer: String, _ file: String, _ sequence: Int, _ list: Blocklist?) {
      if let best = newest[issuer], (best.sequence, best.file) >= (sequence, file) { return }
      newest[issuer] = (file, sequence, list)
    }
    for (file, text) in lists {
      if let kept = engine.keptBlocklist(text, in: state) {
        offer(kept.issuer, file, kept.sequence, nil)
        continue
      }
      switch engine.verifiedBlocklist(text) {
      case .failure(let violation): ignored(file, violation.message, code: violation.code)
      case .success(let list): offer(list.issuer, file, list.sequence, list)
      }
    }
    for issuer in newest.keys.sorted() {
      guard let (file, _, candidate) = newest[issuer], let list = candidate else { continue }
      let now = clock.now()
      let decision = engine.addBlocklist(list, now: now, state: state)
      switch decision.result {
      case .failure(let violation) where violation.code == "blocklist_rollback":
        logger.info(
          "A blocklist file is not newer than the list kept; it is ignored",
          metadata: [
            "file": "\(ExternalText.bounded(file, limit: ExternalText.messageLimit))",
            "message": "\(ExternalText.bounded(violation.message, limit: ExternalText.messageLimit))",
          ])
      case .failure(let violation): ignored(file, violation.message, code: violation.code)
      case .success(let added):
        if !added.unchanged, carryOut(decision, decidedAt: now) == nil { logBlocklist(added, from: file) }
      }
    }
  }

  private func logBlocklist(_ added: BlocklistAdded, from source: String) {
    logger.notice(
      "Blocklist kept",
      metadata: [
        "issuer": "\(added.issuer)", "sequence": "\(added.sequence)", "entries": "\(added.entries)",
        "blocks": "\(added.blocks.map(\.serial).joined(separator: " "))", "source": "\(source)",
      ])
  }

  // MARK: - Control (ControlEndpoint)

  /// What the control plane reads without this queue (``ControlView``).
  private func currentView() -> ControlView {
    ControlView(
      state: state, engine: engine, startedAt: startedAt, adminGroup: configuration.adminGroup,
      adminGroupID: control.adminGroupID)
  }

  /// After a burst of changes (the end of a decision, a reload, the start): the control plane
  /// answers other users from a copy, published once for the burst.
  private func publishView() {
    guard viewChanged || !pendingChanges.isEmpty else { return }
    viewChanged = false
    let changes = pendingChanges
    pendingChanges = []
    control.publish(currentView(), changes: changes)
    hooks.run(changes)
  }

  /// A call of root or the admin group, on this queue, in order with the agent's work;
  /// nil when `respond` will answer (after the activation server has).
  func serve(
    _ call: VarlinkCall, peer: PeerCredentials, respond: VarlinkResponder, verified: Blocklist? = nil
  )
    -> VarlinkReply?
  {
    let request: ControlRequest
    switch control.decode(call, peer: peer, adminGroup: configuration.adminGroup) {
    case .failure(let error): return .failure(error)
    case .success(let decoded): request = decoded
    }
    let now = clock.now()
    switch request {
    case .getStatus:
      return .success(varlinkParameters(status()))
    case .checkKey(let checked):
      return ControlEndpoint.checkKey(checked, engine: engine, state: state, now: now)
    case .addKey(let added):
      return addKey(
        added.key, role: added.role, replaceScheme: added.replaceScheme ?? false, code: nil, peer: peer)
    case .removeReserve(let slot):
      let decision = engine.removeReserve(slot: slot, now: now, state: state)
      switch decision.result {
      case .failure(let violation): return .failure(ControlEndpoint.error(violation))
      case .success(let removed):
        if let failure = carryOut(decision, decidedAt: now) {
          return .failure(ControlEndpoint.storageFailure(failure))
        }
        return .success(varlinkParameters(RemoveReserveReply(removed: KeyInfo(removed.key))))
      }
    case .addBlocklist(let request):
      // B1: a blocklist; B3: what it blocks here is dropped or listed.
      // Verified by the control plane when its issuer key is still trusted (a reload may have
      // removed it since); else read here.
      let decision =
        if let verified, engine.trust.keys[verified.kid] != nil {
          engine.addBlocklist(verified, now: now, state: state)
        } else {
          engine.addBlocklist(request.blocklist, now: now, state: state)
        }
      switch decision.result {
      case .failure(let violation): return .failure(ControlEndpoint.error(violation))
      case .success(let added):
        if let failure = carryOut(decision, decidedAt: now) {
          return .failure(ControlEndpoint.storageFailure(failure))
        }
        if !added.unchanged { logBlocklist(added, from: "the control interface (peer uid \(peer.uid))") }
        return .success(varlinkParameters(AddBlocklistReply(added)))
      }
    case .confirm(let request):
      // N2: what the consumer enforces; clears a pending CONSUMER_NOT_UPDATED.
      let decision = engine.confirm(
        consumer: request.consumer, slot: request.slot, serial: request.serial, now: now, state: state)
      switch decision.result {
      case .failure(let violation): return .failure(ControlEndpoint.error(violation))
      case .success(let confirmed):
        if let failure = carryOut(decision, decidedAt: now) {
          return .failure(ControlEndpoint.storageFailure(failure))
        }
        if confirmed.current {
          logger.info(
            "Consumer confirmed the active key",
            metadata: [
              "consumer": "\(confirmed.consumer)", "slot": "\(confirmed.slot.rawValue)",
              "serial": "\(confirmed.serial)",
            ])
        }
        return .success(varlinkParameters(ConfirmReply(confirmed)))
      }
    case .reportUsage(let report):
      // U1: the consumer's usage; graded (U2) in the same decision.
      let decision = engine.reportUsage(slot: report.slot, units: report.units, now: now, state: state)
      switch decision.result {
      case .failure(let violation): return .failure(ControlEndpoint.error(violation))
      case .success(let recorded):
        if let failure = carryOut(decision, decidedAt: now) {
          return .failure(ControlEndpoint.storageFailure(failure))
        }
        return .success(
          varlinkParameters(ReportUsageReply(recorded, licensed: state[report.slot]?.active?.claims.units)))
      }
    case .activate(let code, let role):
      // Manual activation (C5): the key for `code`, added like AddKey, keeping the code.
      renewals.activate(code: code, role: role, configuration: configuration, logger: logger) {
        [weak self] outcome in
        guard let self else { return }
        self.queue.async {
          self.assumeIsolated { agent in
            switch outcome {
            case .failure(let failure):
              respond(.failure(ControlEndpoint.activationFailed(failure, code: code)))
            case .key(let text):
              respond(agent.addKey(text, role: role, replaceScheme: false, code: code, peer: peer))
            }
          }
        }
      }
      return nil
    }
  }

  /// The activation task (A, R): `text` added in `role`, with the code it came from.
  private func addKey(
    _ text: String, role: Role, replaceScheme: Bool, code: ActivationCode?, peer: PeerCredentials
  )
    -> VarlinkReply
  {
    let now = clock.now()
    let decision = engine.addKey(
      text, role: role, replaceScheme: replaceScheme, code: code, now: now, state: state)
    switch decision.result {
    case .failure(let violation):
      carryOut(decision, decidedAt: now)
      logger.notice(
        "Key refused",
        metadata: ["role": "\(role.rawValue)", "rule": "\(violation.ruleAndCode)", "peer_uid": "\(peer.uid)"])
      return .failure(ControlEndpoint.error(violation))
    case .success(let added):
      if let failure = carryOut(decision, decidedAt: now) {
        return .failure(ControlEndpoint.storageFailure(failure))
      }
      logger.info(
        "Key added",
        metadata: ["role": "\(role.rawValue)", "serial": "\(added.key.serial)", "peer_uid": "\(peer.uid)"])
      return .success(varlinkParameters(AddKeyReply(added, checkOnly: false)))
    }
  }

  // MARK: - Metrics (MetricsPublisher)

  /// Writes the metrics once the current burst of work is done (one write for many
  /// changes), after every announcement: the text is made here, from the state, and
  /// written on the metrics queue.
  private func scheduleMetrics() {
    guard metrics.needsWrite() else { return }
    queue.async { [weak self] in self?.assumeIsolated { $0.writeMetrics() } }
  }

  private func writeMetrics() {
    let text = MetricsText.render(
      state: state, engine: engine, version: Self.version, product: configuration.product,
      stateWriteFailures: stateWriteFailures)
    metrics.write(text) { [weak self] result, path in
      guard let agent = self else { return }
      agent.queue.async { agent.assumeIsolated { $0.metrics.written(result, path: path, logger: $0.logger) } }
    }
  }

  // MARK: - Status

  /// One line for systemd's STATUS=: `server: KS-1 until 2026-12-31 09:00 UTC, reserve ready; ...`.
  func statusLine() -> String {
    if persistRetry != nil { return "ERROR: cannot write the state in \(paths.stateDirectory); retrying" }
    let parts = state.slotsInUse.compactMap { slot -> String? in
      switch state[slot] {
      case nil: return nil
      case .held(let held)? where held.isLapsed:
        return "\(slot.rawValue): EXPIRED (\(held.active.serial) blocked, grace ended)"
      case .held(let held)?:
        let until = String(held.endsAt.rfc3339.prefix(16).map { $0 == "T" ? " " : $0 }) + " UTC"
        let blocked = held.blocked == nil ? "" : " (BLOCKED)"
        return "\(slot.rawValue): \(held.active.serial)\(blocked) until \(until), "
          + (held.reserve != nil ? "reserve ready" : "no reserve")
      case .lapsed(let lapsed)?:
        return "\(slot.rawValue): EXPIRED (\(lapsed.expired.serial))"
      }
    }
    return parts.isEmpty ? "No licence key; add one with agentctl add-key" : parts.joined(separator: "; ")
  }

  /// The status reply (call on `queue`).
  func status() -> StatusReply {
    StatusBuilder.build(
      state: state, engine: engine, now: clock.now(), version: Self.version, startedAt: startedAt)
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
