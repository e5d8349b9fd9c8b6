/// How a key reached the SVM (the wire's `source`).
public enum KeyOrigin: String, Sendable, Codable, Equatable {
  /// Added by an operator as a key (`agentctl add-key`, `AddKey`).
  case key
  /// Obtained from the activation server with an activation code, which the key keeps
  /// (rule C1) to renew itself at expiry (C2).
  case activationCode = "activation-code"
}

/// A key held in a slot, with where it came from.
public struct InstalledKey: Sendable, Equatable {
  public var key: LicenseKey
  /// When the key was added to the SVM (as active or as reserve), or obtained ahead.
  public var addedAt: Timestamp
  /// When a reserve key became active by promotion (P1).
  public var promotedAt: Timestamp?
  /// The code a key obtained with an activation code keeps (a secret: see ``ActivationCode``);
  /// nil for a key an operator added.
  public var activationCode: ActivationCode?

  public init(
    key: LicenseKey, addedAt: Timestamp, promotedAt: Timestamp? = nil, activationCode: ActivationCode? = nil
  ) {
    self.key = key
    self.addedAt = addedAt
    self.promotedAt = promotedAt
    self.activationCode = activationCode
  }

  public var origin: KeyOrigin { activationCode == nil ? .key : .activationCode }
  public var claims: LicenseClaims { key.claims }
  public var serial: String { key.serial }
  public var expiresAt: Timestamp { key.claims.expiresAt }
}

/// The key a lapsed slot last had: the slot stays "expired" until a new active key arrives.
public struct ExpiredKey: Sendable, Equatable, Codable {
  public var serial: String
  public var expiresAt: Timestamp
  public var scheme: Scheme

  public init(serial: String, expiresAt: Timestamp, scheme: Scheme) {
    self.serial = serial
    self.expiresAt = expiresAt
    self.scheme = scheme
  }

  public init(_ key: InstalledKey) {
    self.init(serial: key.serial, expiresAt: key.expiresAt, scheme: key.claims.scheme)
  }
}

/// The attempts of a renewal with an activation code, at expiry (C2–C4) or ahead of it
/// (C6): one shape for both, whose retry policy alone differs (``RenewalKind``). Part of
/// the state, so that the schedule survives restarts.
public struct RenewalAttempts: Sendable, Equatable {
  /// When the next attempt is made.
  public enum Schedule: Sendable, Equatable {
    /// Ahead only: the first request falls at the instant drawn for the key.
    case atDraw
    /// The next attempt is due at this instant.
    case due(Timestamp)
    /// An attempt is under way since this instant. One found so at start-up was interrupted
    /// by a crash and is made again.
    case underWay(since: Timestamp)
    /// No attempt is left: a permanent failure (at expiry or ahead), or, ahead, none before
    /// the key's expiry (the renewal at expiry takes over then).
    case stopped
  }

  /// Failed attempts so far.
  public var failures: Int
  public var schedule: Schedule
  /// The last failure, as the client reported it (bounded: text from outside).
  public var lastError: String?
  /// MANUAL_ACTIVATION_REQUIRED was raised (once) and is pending.
  public var alertRaised: Bool

  public init(failures: Int = 0, schedule: Schedule, lastError: String? = nil, alertRaised: Bool = false) {
    self.failures = failures
    self.schedule = schedule
    self.lastError = lastError
    self.alertRaised = alertRaised
  }

  public var isStopped: Bool { schedule == .stopped }
  public var isUnderWay: Bool { underWaySince != nil }
  /// When the attempt under way started.
  public var underWaySince: Timestamp? {
    if case .underWay(let since) = schedule { return since } else { return nil }
  }
  /// The instant of the next attempt, when one is scheduled at an instant of its own.
  public var dueAt: Timestamp? { if case .due(let at) = schedule { return at } else { return nil } }
}

/// The renewal ahead of expiry of a held slot's code-mode active key (rule C6): the first
/// request is made at an instant drawn once per key and persisted here, so that a restart
/// (of one SVM or of a whole fleet) does not draw again; failures are retried inside the
/// window, without an alert, until the key obtained ahead becomes the slot's pending key.
/// It always concerns the slot's active key (the record lives beside it).
public struct AheadRenewal: Sendable, Equatable, Codable {
  /// Where, in the window, the first request falls: uniform in [0, 1), drawn once per key.
  public var draw: Double
  /// When the agent first saw the key (it was added, renewed or promoted, or the agent was
  /// upgraded): a window already open then is drawn in what is left of it.
  public var since: Timestamp
  public var attempts: RenewalAttempts

  public init(draw: Double, since: Timestamp, attempts: RenewalAttempts = RenewalAttempts(schedule: .atDraw))
  {
    self.draw = draw
    self.since = since
    self.attempts = attempts
  }
}

/// What takes over from a held slot's active key when it expires: at most one of these
/// (an operator's reserve takes precedence over renewal ahead, rule C6).
public enum Successor: Sendable, Equatable {
  case none
  /// The operator's reserve key (R1–R9), promoted at `exp` (P1).
  case reserve(InstalledKey)
  /// The active key came from an activation code: the next key is being asked for ahead.
  case renewingAhead(AheadRenewal)
  /// The key obtained ahead with the activation code, promoted at `exp` as a reserve is.
  case pending(InstalledKey)
}

/// The block of a held slot's active key (rule B2): its issuer blocked it, and it keeps
/// working until the end of the grace, an instant fixed when the agent learned of the block
/// and persisted, so that neither a restart nor a clock step moves it.
public struct ActiveBlock: Sendable, Equatable, Codable {
  /// When the issuer blocked it, and why (the list's words, bounded).
  public var since: Timestamp
  public var reason: String
  /// When the agent learned of the block.
  public var learnedAt: Timestamp
  /// The end of the grace: the key counts as expired at this instant.
  public var graceEndsAt: Timestamp
  /// The grace ended while what takes over was not yet valid (its `nbf` is later): the slot
  /// is expired since then (LICENSE_EXPIRED was logged) until that key takes over.
  public var lapsedAt: Timestamp?

  public init(
    since: Timestamp, reason: String, learnedAt: Timestamp, graceEndsAt: Timestamp, lapsedAt: Timestamp? = nil
  ) {
    self.since = since
    self.reason = reason
    self.learnedAt = learnedAt
    self.graceEndsAt = graceEndsAt
    self.lapsedAt = lapsedAt
  }
}

/// A slot whose active key is valid (until time is processed past its `exp`, or past the
/// end of its grace when it is blocked).
public struct HeldSlot: Sendable, Equatable {
  public var active: InstalledKey
  /// The EXPIRING_SOON thresholds already logged, or already passed when the active key
  /// arrived (W1: never twice, never late).
  public var warned: Set<TimeSpan>
  public var successor: Successor
  /// The active key's block, when its issuer blocked it (B2).
  public var blocked: ActiveBlock?

  public init(
    active: InstalledKey, warned: Set<TimeSpan> = [], successor: Successor = .none,
    blocked: ActiveBlock? = nil
  ) {
    self.active = active
    self.warned = warned
    self.successor = successor
    self.blocked = blocked
  }

  /// When the active key counts as expired: its `exp`, or the end of its grace when it is
  /// blocked and that comes first (B2). Every deadline of the slot counts to this instant.
  public var endsAt: Timestamp {
    guard let grace = blocked?.graceEndsAt else { return active.expiresAt }
    return min(grace, active.expiresAt)
  }

  /// The grace of a blocked active key ended and what takes over is not yet valid: the
  /// slot is expired until then (B2).
  public var isLapsed: Bool { blocked?.lapsedAt != nil }

  /// The active key as a lapsed slot records it: expired at ``endsAt``.
  public var endedKey: ExpiredKey {
    ExpiredKey(serial: active.serial, expiresAt: endsAt, scheme: active.claims.scheme)
  }

  /// The key that takes over at ``endsAt``: the reserve or the key obtained ahead.
  public var successorKey: InstalledKey? { reserve ?? pending }

  public var reserve: InstalledKey? {
    if case .reserve(let key) = successor { return key } else { return nil }
  }
  public var pending: InstalledKey? {
    if case .pending(let key) = successor { return key } else { return nil }
  }
  public var ahead: AheadRenewal? {
    if case .renewingAhead(let renewal) = successor { return renewal } else { return nil }
  }
}

/// The renewal of a lapsed slot whose code-mode key expired with nothing to take over
/// (C2–C4). It continues the slot's expired key.
public struct Renewal: Sendable, Equatable, Codable {
  /// The code to renew with (a secret).
  public var code: ActivationCode
  public var attempts: RenewalAttempts

  public init(code: ActivationCode, attempts: RenewalAttempts) {
    self.code = code
    self.attempts = attempts
  }
}

/// A slot whose licence lapsed: its last key expired and nothing valid took over (P4, P6);
/// with an activation code, being renewed (C2).
public struct LapsedSlot: Sendable, Equatable, Codable {
  public var expired: ExpiredKey
  public var renewal: Renewal?

  public init(expired: ExpiredKey, renewal: Renewal? = nil) {
    self.expired = expired
    self.renewal = renewal
  }
}

/// One slot's life: held (an active key and what succeeds it) or lapsed (the expired key,
/// and its renewal at expiry). A slot with neither is not in the state at all.
public enum SlotState: Sendable, Equatable {
  case held(HeldSlot)
  case lapsed(LapsedSlot)

  /// The scheme of whatever the slot holds (its key, or the record of the expired one).
  public var scheme: Scheme {
    switch self {
    case .held(let held): return held.active.claims.scheme
    case .lapsed(let lapsed): return lapsed.expired.scheme
    }
  }

  // Read-only projections (for status, metrics and tests); the cases are the truth.
  public var held: HeldSlot? { if case .held(let held) = self { return held } else { return nil } }
  public var lapsed: LapsedSlot? { if case .lapsed(let lapsed) = self { return lapsed } else { return nil } }
  public var active: InstalledKey? { held?.active }
  public var reserve: InstalledKey? { held?.reserve }
  public var pending: InstalledKey? { held?.pending }
  public var ahead: AheadRenewal? { held?.ahead }
  public var expired: ExpiredKey? { lapsed?.expired }
  public var renewal: Renewal? { lapsed?.renewal }
}

/// What happened to a slot since the state was created, for the metrics (contract §8):
/// kept in the state, so that a restart does not reset the counters.
public struct SlotCounters: Sendable, Equatable, Codable {
  /// Reserves promoted at the active key's expiry (P1, P3).
  public var promotions: Int
  /// `LICENSE_DELAY_USEC` of the last promotion: from `exp` to the promotion being durable.
  public var lastPromotionDelayMicroseconds: Int64?
  /// Renewal attempts (C2, C3) by result.
  public var renewed: Int
  public var transientFailures: Int
  public var permanentFailures: Int

  public init(
    promotions: Int = 0, lastPromotionDelayMicroseconds: Int64? = nil, renewed: Int = 0,
    transientFailures: Int = 0, permanentFailures: Int = 0
  ) {
    self.promotions = promotions
    self.lastPromotionDelayMicroseconds = lastPromotionDelayMicroseconds
    self.renewed = renewed
    self.transientFailures = transientFailures
    self.permanentFailures = permanentFailures
  }
}

/// Everything the agent owns: the slots, the id of the last transition, and the events of
/// transitions not yet confirmed as delivered (the outbox). Persisted whole by the store,
/// as schema ``currentSchemaVersion`` (``LicenseStateCoding``); a state of schema 1 (what
/// 0.1.0 writes) is read too, and can be written back as such for a downgrade.
public struct LicenseState: Sendable, Equatable {
  /// The version of the persisted form; a file with a greater version is refused.
  public static let currentSchemaVersion = 2

  /// A random id given to the state when it is first saved: with a transition id, it names
  /// a transition uniquely even across a state file started afresh.
  public var stateID: String
  public var slots: [Slot: SlotState]
  /// Every state change gets the next id; events carry it (exactly-once announcements).
  public var lastTransitionID: UInt64
  /// Events of persisted transitions, rendered, waiting to be confirmed as sent to the
  /// journal (replayed byte for byte after a crash).
  public var outbox: [JournalEvent]
  /// Per slot, what the metrics count (promotions, renewal attempts); kept when a slot
  /// empties.
  public var counters: [Slot: SlotCounters]
  /// Per slot in use, the consumer's last usage report (U1): a slot without one has unknown
  /// usage, never zero.
  public var usage: [Slot: UsageReport]
  /// What each consumer confirmed per slot, and the key it is to enforce (N2).
  public var consumers: [ConsumerName: [Slot: ConsumerSlotRecord]]
  /// Per issuer, the blocklist with the highest sequence seen (B1).
  public var blocklists: [String: StoredBlocklist]
  /// The events the journal took lately, oldest first (at most ``maximumDelivered``): the
  /// journal may still lose them (journald writes entries below crit to disk only every
  /// `SyncIntervalSec`, and its rate limit drops entries it reported as taken), so the
  /// runtime checks them against the journal and sends again, once, those it lost.
  public var delivered: [DeliveredEvent]
  /// The boot (`/proc/sys/kernel/random/boot_id`) in which the agent last opened the state,
  /// and whether it closed it cleanly since: a new boot or an unclean close is when the
  /// journal may have lost what it took.
  public var openedInBoot: String
  public var closedCleanly: Bool

  /// How many delivered events are kept for checking.
  public static let maximumDelivered = 64

  public init(
    stateID: String = "", slots: [Slot: SlotState] = [:], lastTransitionID: UInt64 = 0,
    outbox: [JournalEvent] = [], counters: [Slot: SlotCounters] = [:], usage: [Slot: UsageReport] = [:],
    consumers: [ConsumerName: [Slot: ConsumerSlotRecord]] = [:], blocklists: [String: StoredBlocklist] = [:],
    delivered: [DeliveredEvent] = [],
    openedInBoot: String = "", closedCleanly: Bool = true
  ) {
    self.stateID = stateID
    self.slots = slots
    self.lastTransitionID = lastTransitionID
    self.outbox = outbox
    self.counters = counters
    self.usage = usage
    self.consumers = consumers
    self.blocklists = blocklists
    self.delivered = delivered
    self.openedInBoot = openedInBoot
    self.closedCleanly = closedCleanly
  }

  /// The slot's state; nil for a slot not in use. Setting nil empties it.
  public subscript(slot: Slot) -> SlotState? {
    get { slots[slot] }
    set { slots[slot] = newValue }
  }

  /// The slots that hold a key or an expiry record, in a fixed order.
  public var slotsInUse: [Slot] { slots.keys.sorted() }

  /// The held slots, in order, with their state.
  public var heldSlots: [(slot: Slot, held: HeldSlot)] {
    slotsInUse.compactMap { slot in slots[slot]?.held.map { (slot, $0) } }
  }

  /// `<state id>:<transition id>`: the journal's `LICENSE_TRANSITION` of an outbox event.
  public func transitionName(_ transitionID: UInt64) -> String { "\(stateID):\(transitionID)" }

  /// The state once the outbox events of transitions up to `transitionID` were delivered.
  public func acknowledging(through transitionID: UInt64) -> LicenseState {
    var copy = self
    copy.outbox.removeAll { ($0.transitionID ?? 0) <= transitionID }
    return copy
  }

  /// Rule R2's advice: an SVM protecting both OS types needs a reserve for each, because a
  /// reserve serves only its own type. The slot without a reserve while the other has one,
  /// and that other slot; nil when the advice does not apply.
  public var reserveMissingForOSType: (missing: Slot, has: Slot)? {
    guard let server = self[.server]?.held, let workstation = self[.workstation]?.held,
      (server.reserve == nil) != (workstation.reserve == nil)
    else { return nil }
    return server.reserve == nil ? (.server, .workstation) : (.workstation, .server)
  }
}

/// An event the journal took (``LicenseState/delivered``).
public struct DeliveredEvent: Sendable, Equatable, Codable {
  /// The event as it was sent (its transition id included).
  public var event: JournalEvent
  public var deliveredAt: Timestamp
  /// Looked for in the journal and not found, so sent again (a copy with
  /// `LICENSE_REPLAYED=1`, itself an entry here): this one is not looked for again.
  public var replayed: Bool

  public init(event: JournalEvent, deliveredAt: Timestamp, replayed: Bool = false) {
    self.event = event
    self.deliveredAt = deliveredAt
    self.replayed = replayed
  }
}
