/// How a key reached the SVM.
public enum KeyOrigin: String, Sendable, Codable, Equatable {
  /// Added by an operator as a key (`agentctl add-key`, `AddKey`).
  case key
  /// Obtained from the activation server with an activation code, which the key keeps
  /// (rule C1) to renew itself at expiry (C2).
  case activationCode = "activation-code"
}

/// A key held in a slot, with where it came from.
public struct InstalledKey: Sendable, Equatable, Codable {
  public var key: LicenseKey
  public var origin: KeyOrigin
  /// When the key was added to the SVM (as active or as reserve).
  public var addedAt: Timestamp
  /// When a reserve key became active by promotion (P1).
  public var promotedAt: Timestamp?
  /// The code a key obtained with an activation code keeps (a secret: see ``ActivationCode``).
  public var activationCode: ActivationCode?

  public init(
    key: LicenseKey, origin: KeyOrigin, addedAt: Timestamp, promotedAt: Timestamp? = nil,
    activationCode: ActivationCode? = nil
  ) {
    self.key = key
    self.origin = origin
    self.addedAt = addedAt
    self.promotedAt = promotedAt
    self.activationCode = activationCode
  }

  public var claims: LicenseClaims { key.claims }
  public var serial: String { key.serial }
  public var expiresAt: Timestamp { key.claims.expiresAt }
}

/// The key a lapsed slot last had: the slot stays "expired" until a new active key arrives.
public struct ExpiredKey: Sendable, Equatable, Codable {
  public var serial: String
  public var expiresAt: Timestamp
  public var scheme: Scheme
}

/// The renewal of a slot whose code-mode key expired with no reserve (rules C2–C4): the
/// retry schedule survives restarts because it is part of the state.
public struct RenewalState: Sendable, Equatable, Codable {
  /// The code to renew with (a secret).
  public var code: ActivationCode
  /// The key that expired, and when (the alert delay counts from this instant).
  public var expiredSerial: String
  public var expiredAt: Timestamp
  /// Failed attempts so far.
  public var attempts: Int
  /// When the next attempt is due; nil once a permanent failure stopped the retries.
  public var nextAttemptAt: Timestamp?
  /// The last failure, as the client reported it (`code_blocked`, `connection refused`...).
  public var lastError: String?
  /// MANUAL_ACTIVATION_REQUIRED was raised (once) and is pending.
  public var alertRaised: Bool
  /// When the attempt under way started; set while the client runs. An attempt found under
  /// way at start-up was interrupted by a crash and is made again.
  public var attemptStartedAt: Timestamp?

  public init(
    code: ActivationCode, expiredSerial: String, expiredAt: Timestamp, attempts: Int = 0,
    nextAttemptAt: Timestamp?,
    lastError: String? = nil, alertRaised: Bool = false, attemptStartedAt: Timestamp? = nil
  ) {
    self.code = code
    self.expiredSerial = expiredSerial
    self.expiredAt = expiredAt
    self.attempts = attempts
    self.nextAttemptAt = nextAttemptAt
    self.lastError = lastError
    self.alertRaised = alertRaised
    self.attemptStartedAt = attemptStartedAt
  }
}

/// The renewal ahead of expiry of a slot's code-mode active key (rule C6): the first request
/// is made at an instant drawn once per key and persisted here, so that a restart (of one SVM
/// or of a whole fleet) does not draw again; failures are retried inside the window, without
/// an alert, until the key obtained ahead is stored as the slot's pending renewal.
public struct AheadRenewal: Sendable, Equatable, Codable {
  /// The active key this renewal continues.
  public var serial: String
  /// Where, in the window, the first request falls: uniform in [0, 1), drawn once per key.
  public var draw: Double
  /// When the agent first saw the key (it was added, renewed or promoted, or the agent was
  /// upgraded): a window already open then is drawn in what is left of it.
  public var since: Timestamp
  /// Failed attempts so far.
  public var attempts: Int
  /// When the next attempt is due after a failure; nil before the first attempt (due at the
  /// drawn instant) and once the renewal ahead stopped.
  public var nextAttemptAt: Timestamp?
  /// True once no attempt is left before the key's expiry (a permanent refusal, or the next
  /// retry would fall at or after `exp`): renewal at expiry (C2–C4) takes over.
  public var stopped: Bool
  /// The last failure, as the client reported it.
  public var lastError: String?
  /// MANUAL_ACTIVATION_REQUIRED was raised after a permanent refusal ahead.
  public var alertRaised: Bool
  /// When the attempt under way started (see ``RenewalState/attemptStartedAt``).
  public var attemptStartedAt: Timestamp?

  public init(
    serial: String, draw: Double, since: Timestamp, attempts: Int = 0, nextAttemptAt: Timestamp? = nil,
    stopped: Bool = false, lastError: String? = nil, alertRaised: Bool = false,
    attemptStartedAt: Timestamp? = nil
  ) {
    self.serial = serial
    self.draw = draw
    self.since = since
    self.attempts = attempts
    self.nextAttemptAt = nextAttemptAt
    self.stopped = stopped
    self.lastError = lastError
    self.alertRaised = alertRaised
    self.attemptStartedAt = attemptStartedAt
  }
}

/// One slot: at most one active and one reserve key (rules A3, R9).
public struct SlotState: Sendable, Equatable, Codable {
  public var active: InstalledKey?
  public var reserve: InstalledKey?
  /// Set when the slot's active key expired with nothing to take over (P4, P6).
  public var expired: ExpiredKey?
  /// The EXPIRING_SOON thresholds (`30d`, `7d`, ...) already logged, or already passed when
  /// the active key arrived, for the current active key (W1: never twice, never late).
  public var warned: [String]
  /// Set while the expired code-mode key is being renewed (C2–C4).
  public var renewal: RenewalState?
  /// The renewal ahead of the active key's expiry, while it is being asked for (C6).
  public var ahead: AheadRenewal?
  /// The key obtained ahead with the activation code (C6): it takes over at the active key's
  /// `exp` as a reserve does. `addedAt` is when it was obtained.
  public var pending: InstalledKey?

  public init(
    active: InstalledKey? = nil, reserve: InstalledKey? = nil, expired: ExpiredKey? = nil,
    warned: [String] = [], renewal: RenewalState? = nil, ahead: AheadRenewal? = nil,
    pending: InstalledKey? = nil
  ) {
    self.active = active
    self.reserve = reserve
    self.expired = expired
    self.warned = warned
    self.renewal = renewal
    self.ahead = ahead
    self.pending = pending
  }

  /// True when the slot holds nothing worth keeping.
  public var isEmpty: Bool {
    active == nil && reserve == nil && expired == nil && renewal == nil && ahead == nil && pending == nil
  }

  /// The scheme of whatever the slot holds (keys or the record of an expired one).
  var scheme: Scheme? { active?.claims.scheme ?? reserve?.claims.scheme ?? expired?.scheme }
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
/// transitions not yet confirmed as delivered (the outbox). Persisted whole by the store.
public struct LicenseState: Sendable, Equatable, Codable {
  /// The version of the persisted form; a file with a greater version is refused.
  public static let currentSchemaVersion = 1

  public var schemaVersion: Int
  /// A random id given to the state when it is first saved: with a transition id, it names
  /// a transition uniquely even across a state file started afresh.
  public var stateID: String
  public var slots: [Slot: SlotState]
  /// Every state change gets the next id; events carry it (exactly-once announcements).
  public var lastTransitionID: UInt64
  /// Events of persisted transitions, waiting to be confirmed as sent to the journal.
  public var outbox: [JournalEvent]
  /// Per slot, what the metrics count (promotions, renewal attempts); kept when a slot
  /// empties.
  public var counters: [Slot: SlotCounters]
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
    outbox: [JournalEvent] = [], counters: [Slot: SlotCounters] = [:], delivered: [DeliveredEvent] = []
  ) {
    self.schemaVersion = Self.currentSchemaVersion
    self.stateID = stateID
    self.slots = slots
    self.lastTransitionID = lastTransitionID
    self.outbox = outbox
    self.counters = counters
    self.delivered = delivered
    self.openedInBoot = ""
    self.closedCleanly = true
  }

  /// Reads a state file; one written before the counters existed has none yet (zero).
  public init(from decoder: Decoder) throws {
    let container = try decoder.container(keyedBy: CodingKeys.self)
    schemaVersion = try container.decode(Int.self, forKey: .schemaVersion)
    stateID = try container.decode(String.self, forKey: .stateID)
    slots = try container.decode([Slot: SlotState].self, forKey: .slots)
    // A state written before text from outside was bounded may hold a long error: bounded
    // as it is read, as it would have been when it entered.
    for (slot, value) in slots {
      slots[slot]?.renewal?.lastError = value.renewal?.lastError.map(ActivationFailure.stored)
      slots[slot]?.ahead?.lastError = value.ahead?.lastError.map(ActivationFailure.stored)
    }
    lastTransitionID = try container.decode(UInt64.self, forKey: .lastTransitionID)
    outbox = try container.decode([JournalEvent].self, forKey: .outbox)
    counters = try container.decodeIfPresent([Slot: SlotCounters].self, forKey: .counters) ?? [:]
    delivered = try container.decodeIfPresent([DeliveredEvent].self, forKey: .delivered) ?? []
    openedInBoot = try container.decodeIfPresent(String.self, forKey: .openedInBoot) ?? ""
    closedCleanly = try container.decodeIfPresent(Bool.self, forKey: .closedCleanly) ?? true
  }

  public subscript(slot: Slot) -> SlotState {
    get { slots[slot] ?? SlotState() }
    set { slots[slot] = newValue.isEmpty ? nil : newValue }
  }

  /// The slots that hold a key or an expiry record, in a fixed order.
  public var slotsInUse: [Slot] { slots.keys.sorted() }

  /// `<state id>:<transition id>`: the journal's `LICENSE_TRANSITION` of an outbox event.
  public func transitionName(_ transitionID: UInt64) -> String { "\(stateID):\(transitionID)" }

  /// The state once the outbox events of transitions up to `transitionID` were delivered.
  public func acknowledging(through transitionID: UInt64) -> LicenseState {
    var copy = self
    copy.outbox.removeAll { ($0.transitionID ?? 0) <= transitionID }
    return copy
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

extension Slot: CodingKeyRepresentable {}

extension LicenseKey: Codable {
  /// Persisted as the compact JWS alone; the claims are read again from it on load, so the
  /// key's text is the single source of truth.
  public init(from decoder: Decoder) throws {
    let text = try decoder.singleValueContainer().decode(String.self)
    do {
      self = try KeyParser.parseUnverified(text)
    } catch {
      throw DecodingError.dataCorrupted(
        .init(codingPath: decoder.codingPath, debugDescription: "stored key is unreadable: \(error)"))
    }
  }

  public func encode(to encoder: Encoder) throws {
    var container = encoder.singleValueContainer()
    try container.encode(compact)
  }
}

extension LicenseState {
  /// Rule R2's advice: an SVM protecting both OS types needs a reserve for each, because a
  /// reserve serves only its own type. The slot without a reserve while the other has one,
  /// and that other slot; nil when the advice does not apply.
  public var reserveMissingForOSType: (missing: Slot, has: Slot)? {
    let server = self[.server]
    let workstation = self[.workstation]
    guard server.active != nil, workstation.active != nil,
      (server.reserve == nil) != (workstation.reserve == nil)
    else { return nil }
    return server.reserve == nil ? (.server, .workstation) : (.workstation, .server)
  }
}
