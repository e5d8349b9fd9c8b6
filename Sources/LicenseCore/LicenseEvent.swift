/// The journal events the rules produce (contract §4), as values carrying their data. The
/// engine decides in these; ``rendered`` (EventRendering.swift, the one place that writes
/// messages and fields) turns one into the journal entry the outbox keeps and sends.
public enum LicenseEvent: Sendable, Equatable {
  case keyPromoted(KeyPromoted)
  case reserveAdded(ReserveAdded)
  case reserveRejected(RuleViolation)
  case reserveDropped(ReserveDropped)
  case activeAdded(ActiveAdded)
  case expiringSoon(ExpiringSoon)
  case licenseExpired(LicenseExpired)
  case activationAttemptFailed(AttemptFailed)
  case activationRenewed(ActivationRenewed)
  case manualActivationRequired(ManualActivationRequired)
  /// The wall clock was stepped (T1), by this many microseconds (signed).
  case clockChanged(deltaMicroseconds: Int64)
  /// The state file was unreadable and its last good copy restored.
  case stateRecovered(error: String, file: String)
  /// LICENSE_USAGE_HIGH or LICENSE_LIMIT_EXCEEDED, by the band entered (U2).
  case usageGraded(UsageGraded)
  /// A key the agent holds was blocked by its issuer (B2, B3).
  case keyBlocked(KeyBlocked)
  /// An expected consumer did not confirm the new active key in time (N2).
  case consumerNotUpdated(ConsumerNotUpdated)

  public var kind: EventKind {
    switch self {
    case .keyPromoted: return .keyPromoted
    case .reserveAdded: return .reserveAdded
    case .reserveRejected: return .reserveRejected
    case .reserveDropped: return .reserveDropped
    case .activeAdded: return .activeAdded
    case .expiringSoon: return .expiringSoon
    case .licenseExpired: return .licenseExpired
    case .activationAttemptFailed: return .activationAttemptFailed
    case .activationRenewed: return .activationRenewed
    case .manualActivationRequired: return .manualActivationRequired
    case .clockChanged: return .clockChanged
    case .stateRecovered: return .stateRecovered
    case .usageGraded(let e): return e.band == .high ? .licenseUsageHigh : .licenseLimitExceeded
    case .keyBlocked: return .keyBlocked
    case .consumerNotUpdated: return .consumerNotUpdated
    }
  }
}

/// A key as events name it: its serial and expiry.
public struct KeyRef: Sendable, Equatable {
  public var serial: String
  public var expiresAt: Timestamp

  public init(serial: String, expiresAt: Timestamp) {
    self.serial = serial
    self.expiresAt = expiresAt
  }

  public init(_ key: LicenseKey) { self.init(serial: key.serial, expiresAt: key.claims.expiresAt) }
  public init(_ key: InstalledKey) { self.init(key.key) }
}

/// Why a promotion came after `exp`: the agent was not running, or the wall clock was
/// stepped past it (the words of KEY_PROMOTED differ; the delay is the same measure).
public enum Lateness: Sendable, Equatable {
  case downtime
  case clockStep
}

/// KEY_PROMOTED (P1, P3; C6 for a pending key).
public struct KeyPromoted: Sendable, Equatable {
  public enum Source: Sendable, Equatable {
    case reserve
    /// The key obtained ahead with the activation code whose hint this is.
    case pending(codeHint: String?)
  }
  public var slot: Slot
  /// The key now active.
  public var key: KeyRef
  public var source: Source
  /// The key that expired.
  public var previous: KeyRef
  /// From `previous`'s `exp` to the decision, in microseconds: what the words say.
  public var lateness: Int64
  public var cause: Lateness
  /// `LICENSE_DELAY_USEC`: from `exp` to the promotion being durable, once measured
  /// (``LicenseEngine/measuringPromotions(of:durableAfter:)``); the decision's until then.
  public var delay: Int64
  /// U3: the new key licenses fewer units than the slot uses.
  public var unitsShort: UnitsShort?
  /// B2: the previous key was blocked; `previous.expiresAt` is the end of its grace.
  public var graceEnded = false

  public init(slot: Slot, key: KeyRef, source: Source, previous: KeyRef, lateness: Int64, cause: Lateness) {
    self.slot = slot
    self.key = key
    self.source = source
    self.previous = previous
    self.lateness = lateness
    self.cause = cause
    self.delay = lateness
  }
}

/// RESERVE_ADDED (R9 when it replaced one).
public struct ReserveAdded: Sendable, Equatable {
  public var slot: Slot
  public var key: KeyRef
  public var replacedSerial: String?
  /// The active key it follows.
  public var active: KeyRef
  /// U3: it licenses fewer units than the slot uses.
  public var unitsShort: UnitsShort?
}

/// ACTIVE_ADDED (A3; A2 when a scheme change removed keys).
public struct ActiveAdded: Sendable, Equatable {
  public var slot: Slot
  public var key: KeyRef
  public var replacedSerial: String?
  public var removedSerials: [String]
}

/// RESERVE_DROPPED: a reserve, or a key obtained ahead, that will not take over.
public struct ReserveDropped: Sendable, Equatable {
  public enum Reason: Sendable, Equatable {
    /// A4: it cannot follow the new active key (the rule and code that say why).
    case cannotFollow(newActive: KeyRef, rule: String)
    /// An operator removed it; `renewsWithCode` when the active key renews itself instead.
    case removedByOperator(activeSerial: String?, renewsWithCode: Bool)
    /// C6: the key obtained ahead, replaced by the reserve an operator added.
    case replacedByOperator(activeSerial: String?, reserveSerial: String)
    /// P4 for a key obtained ahead: it expired before it could take over from `active`.
    case expiredBeforeTakeover(active: KeyRef, codeHint: String?)
    /// B3: its issuer blocked it (since, why).
    case blocked(activeSerial: String, since: Timestamp, why: String)
    /// B2: valid only from `validFrom`, after the end of the grace of the blocked `active`
    /// key, which renews with its activation code at once instead.
    case notValidAtGraceEnd(active: KeyRef, validFrom: Timestamp)
  }
  public var slot: Slot
  public var key: KeyRef
  public var reason: Reason
}

/// EXPIRING_SOON (W1).
public struct ExpiringSoon: Sendable, Equatable {
  /// What happens at `exp`, in the message's words.
  public enum Then: Sendable, Equatable {
    case reserve(serial: String)
    case pending(serial: String)
    /// Renewal ahead: the next request falls at this instant, before `exp`.
    case renewAhead(nextRequestAt: Timestamp)
    case renewAtExpiry
    case nothing
  }
  public var slot: Slot
  public var key: KeyRef
  public var threshold: TimeSpan
  /// What is left of the key at the decision.
  public var left: TimeSpan
  public var then: Then

  public var takeover: Takeover {
    switch then {
    case .reserve: return .reserve
    case .pending: return .pendingRenewal
    case .renewAhead, .renewAtExpiry: return .activationCode
    case .nothing: return .none
    }
  }
}

/// LICENSE_EXPIRED (P4, P6; B2 at the end of a blocked key's grace).
public struct LicenseExpired: Sendable, Equatable {
  public var slot: Slot
  /// The key that expired (`expiresAt`: the instant it counted as expired).
  public var key: KeyRef
  /// A reserve that had itself expired, and was not promoted.
  public var expiredReserve: KeyRef?
  /// B2: the key was blocked and its grace ended.
  public var graceEnded: Bool = false
  /// B2: the key that takes over once it is valid (`expiresAt` here: its `nbf`).
  public var takesOverLater: KeyRef?
}

/// KEY_BLOCKED (B2, B3): a list blocks a key the agent holds.
public struct KeyBlocked: Sendable, Equatable {
  public enum Role: String, Sendable, Equatable {
    case active, reserve, pending
  }
  public var slot: Slot
  public var key: KeyRef
  public var role: Role
  public var since: Timestamp
  public var reason: String
  /// An active key's grace end, and what takes over then.
  public var graceEndsAt: Timestamp?
  public var then: ExpiringSoon.Then?
}

/// Which renewal an attempt belongs to (rule C2 at expiry, C6 ahead of it).
public enum RenewalKind: Sendable, Equatable, Hashable {
  case atExpiry
  /// Ahead of the expiry of the active key, at this instant.
  case ahead(currentExpiresAt: Timestamp)

  public var isAhead: Bool { if case .ahead = self { return true } else { return false } }
}

/// ACTIVATION_ATTEMPT_FAILED (C3; C6 ahead).
public struct AttemptFailed: Sendable, Equatable {
  public var slot: Slot
  /// At expiry the expired key; ahead the active key.
  public var key: KeyRef
  public var attempt: Int
  public var error: String
  /// The next attempt; ahead with none left, the key's expiry (the renewal at expiry).
  public var nextAttemptAt: Timestamp
  public var codeHint: String
  public var ahead: Bool
  /// Ahead: no attempt is left before the expiry.
  public var stoppedAhead: Bool
}

/// ACTIVATION_RENEWED (C4; C6 ahead).
public struct ActivationRenewed: Sendable, Equatable {
  public var slot: Slot
  public var key: LicenseKey
  public var previousSerial: String
  public var attempt: Int
  public var codeHint: String
  public var alertCleared: Bool
  /// Ahead: the active key the new key takes over from.
  public var aheadOf: KeyRef?
}

/// MANUAL_ACTIVATION_REQUIRED (C4; C6 after a permanent refusal ahead).
public struct ManualActivationRequired: Sendable, Equatable {
  public var slot: Slot
  /// At expiry the expired key; ahead the active key.
  public var key: KeyRef
  public var error: String
  public var attempt: Int
  public var codeHint: String
  /// Ahead of the expiry (the agent tries once more at expiry).
  public var ahead: Bool
  /// At expiry: the agent keeps retrying (transient failures past the alert delay).
  public var retrying: Bool
}

/// The names of the journal fields the agent writes (contract §4).
public enum JournalField: String, Sendable, Codable, CaseIterable {
  case slot = "LICENSE_SLOT"
  case serial = "LICENSE_SERIAL"
  case expiresAt = "LICENSE_EXPIRES_AT"
  case previousSerial = "LICENSE_PREVIOUS_SERIAL"
  case delayMicroseconds = "LICENSE_DELAY_USEC"
  case replacedSerial = "LICENSE_REPLACED_SERIAL"
  case removedSerials = "LICENSE_REMOVED_SERIALS"
  case rule = "LICENSE_RULE"
  case reason = "LICENSE_REASON"
  case activeSerial = "LICENSE_ACTIVE_SERIAL"
  case threshold = "LICENSE_THRESHOLD"
  case takeover = "LICENSE_TAKEOVER"
  case attempt = "LICENSE_ATTEMPT"
  case error = "LICENSE_ERROR"
  case nextAttemptAt = "LICENSE_NEXT_ATTEMPT_AT"
  case codeHint = "LICENSE_CODE_HINT"
  case ahead = "LICENSE_AHEAD"
  case clockDeltaMicroseconds = "LICENSE_CLOCK_DELTA_USEC"
  /// An event sent again because the journal lost it.
  case replayed = "LICENSE_REPLAYED"
  /// The transition of an outbox event (`<state id>:<transition id>`), added by the sink.
  case transition = "LICENSE_TRANSITION"
  /// The units a key licenses, and the slot's usage (U2, U3).
  case units = "LICENSE_UNITS"
  case unitsUsed = "LICENSE_UNITS_USED"
  case usagePercent = "LICENSE_USAGE_PERCENT"
  /// A warning an accepted key carries (`reserve_units_short`, U3).
  case warning = "LICENSE_WARNING"
  /// The consumer a CONSUMER_NOT_UPDATED is about, and the last serial it confirmed (N2).
  case consumer = "LICENSE_CONSUMER"
  case confirmedSerial = "LICENSE_CONFIRMED_SERIAL"
  /// KEY_BLOCKED (B2): the blocked key's role, when its issuer blocked it, the grace's end.
  case role = "LICENSE_ROLE"
  case blockedSince = "LICENSE_BLOCKED_SINCE"
  case graceEndsAt = "LICENSE_GRACE_ENDS_AT"
}
