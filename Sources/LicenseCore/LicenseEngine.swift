import SimpleJSON

/// What the runtime must do after the engine decided: make the new state durable, announce
/// events, and sleep until the next instant.
public enum Action: Sendable, Equatable {
  /// Persist the decision's state (it carries transition `transitionID`) before anything
  /// else, then acknowledge the outbox once the events are sent (P2: durable before visible).
  case persist(transitionID: UInt64)
  /// Send one journal event.
  case emit(JournalEvent)
  /// Arm the wall-clock timer at this instant (nil: nothing to wait for).
  case wake(Wake?)
  /// Ask the activation server, through the activation client, for the key that continues
  /// the licence of a slot (C2). The result comes back as `activationSucceeded` or
  /// `activationFailed`.
  case activate(ActivationRequest)
}

/// One renewal attempt to make.
public struct ActivationRequest: Sendable, Equatable {
  public var slot: Slot
  public var code: ActivationCode
  /// The serial of the key to continue (`currentSerial` of the request).
  public var currentSerial: String?
  /// 1 for the first attempt (at the instant of expiry, or at the drawn instant ahead).
  public var attempt: Int
  /// True for a request ahead of expiry (C6): the body carries `"ahead": true` and
  /// `currentExpiresAt`, and a key obtained becomes the slot's pending renewal.
  public var ahead: Bool
  /// The expiry of the key to continue (`currentExpiresAt`), for a request ahead.
  public var currentExpiresAt: Timestamp?

  public init(
    slot: Slot, code: ActivationCode, currentSerial: String?, attempt: Int, ahead: Bool = false,
    currentExpiresAt: Timestamp? = nil
  ) {
    self.slot = slot
    self.code = code
    self.currentSerial = currentSerial
    self.attempt = attempt
    self.ahead = ahead
    self.currentExpiresAt = currentExpiresAt
  }
}

/// How a renewal attempt failed, as the contract's table classifies it.
public enum ActivationFailure: Sendable, Equatable {
  /// Network, timeout, 408/429/5xx, plugin exit 75: retried (C3), honouring `retryAfter`.
  case transient(error: String, retryAfter: TimeSpan?)
  /// Invalid, blocked, exhausted or expired code, or an unusable reply: not retried (C3), alert (C4).
  case permanent(error: String)
  /// `not_yet_available`: the vendor has not opened the code's next period yet (C6); retried
  /// inside the window, never sooner than `retryAfter`; after `exp`, transient.
  case notYetAvailable(retryAfter: TimeSpan?)

  /// What the client reported (`not_yet_available` for that answer), bounded: it is text
  /// from outside, kept in the state and shown with every status.
  public var error: String {
    switch self {
    case .transient(let error, _), .permanent(let error): return Self.stored(error)
    case .notYetAvailable: return "not_yet_available"
    }
  }

  /// The longest error text kept: a code, ": ", and a server's message.
  public static let maximumErrorLength = ExternalText.codeLimit + 2 + ExternalText.messageLimit

  /// `error` as it is kept and shown.
  public static func stored(_ error: String) -> String {
    ExternalText.bounded(error, limit: maximumErrorLength)
  }
  /// The server's `Retry-After`, if any.
  public var retryAfter: TimeSpan? {
    switch self {
    case .transient(_, let retryAfter), .notYetAvailable(let retryAfter): return retryAfter
    case .permanent: return nil
    }
  }
  public var isNotYetAvailable: Bool {
    if case .notYetAvailable = self { return true } else { return false }
  }
}

/// The next instant the agent must act, and why (for `agentctl status` and the timer).
public struct Wake: Sendable, Equatable {
  public enum Reason: Sendable, Equatable {
    /// The active key of `slot` expires; `takeover` says what happens then.
    case expiry(slot: Slot, serial: String, takeover: Takeover)
    /// An EXPIRING_SOON threshold of the active key of `slot` is reached.
    case warning(slot: Slot, serial: String, threshold: String)
    /// The next renewal attempt of `slot` is due.
    case renewal(slot: Slot, serial: String, attempt: Int)
    /// The next attempt to renew the active key `serial` of `slot` ahead of its expiry (C6).
    case renewalAhead(slot: Slot, serial: String, attempt: Int)
    /// The alert delay after the expiry of `serial` ends without a renewal (C4).
    case alert(slot: Slot, serial: String)
  }
  public var at: Timestamp
  public var reason: Reason
}

/// What takes over when an active key expires (`LICENSE_TAKEOVER`).
public enum Takeover: String, Sendable, Equatable {
  case reserve
  /// The key already obtained ahead with the activation code (C6).
  case pendingRenewal = "pending-renewal"
  case activationCode = "activation-code"
  case none

  /// `LICENSE_TAKEOVER` of EXPIRING_SOON, whose vocabulary (contract §4) has no
  /// `pending-renewal`: a pending renewal came from the activation code.
  public var journalValue: String { self == .pendingRenewal ? Takeover.activationCode.rawValue : rawValue }
}

/// What a `removeReserve` request removed.
public struct ReserveRemoved: Sendable, Equatable {
  public var slot: Slot
  public var serial: String
  public init(slot: Slot, serial: String) {
    self.slot = slot
    self.serial = serial
  }
}

/// The result of a request that processes time (promotions, expiries, warnings, renewal
/// outcomes): the decision's state and actions say what happened, possibly nothing.
public struct TimeProcessed: Sendable, Equatable {
  public init() {}
}

/// What an accepted key did, for the reply to the operator.
public struct AddedKey: Sendable, Equatable {
  public var slot: Slot
  public var role: Role
  public var key: LicenseKey
  /// The key this one replaced in the same role (A3, R9).
  public var replacedSerial: String?
  /// A reserve dropped because the new active key outlives it (A4).
  public var droppedReserveSerial: String?
  /// Keys of another scheme removed by a confirmed scheme change (A2).
  public var removedSerials: [String]
  /// True when the same key already held that role: nothing changed.
  public var unchanged: Bool
}

/// The engine's answer to one input: the new state, the actions, and the result, typed
/// per request (`addKey` answers an ``AddedKey``, `removeReserve` a ``ReserveRemoved``,
/// time and renewal inputs ``TimeProcessed``), so a caller never handles a result its
/// request cannot have.
public struct Decision<Success: Sendable & Equatable>: Sendable, Equatable {
  public var state: LicenseState
  public var actions: [Action]
  public var result: Result<Success, RuleViolation>

  /// The events to send, in order.
  public var events: [JournalEvent] {
    actions.compactMap { if case .emit(let event) = $0 { return event } else { return nil } }
  }
  /// The transition to persist, if the state changed.
  public var persistedTransition: UInt64? {
    actions.lazy.compactMap { if case .persist(let id) = $0 { return id } else { return nil } }.first
  }
  /// The next instant to wake at.
  public var wake: Wake? {
    for case .wake(let wake) in actions { return wake }
    return nil
  }
}

/// Settings the rules depend on.
public struct EngineConfiguration: Sendable, Equatable {
  /// The product keys must be for (`product` claim).
  public var product: String
  /// EXPIRING_SOON thresholds before `exp` (W1).
  public var warningThresholds: [TimeSpan]
  /// Renewal backoff (C3) and alert delay (C4).
  public var retryInitial: TimeSpan
  public var retryMax: TimeSpan
  public var alertAfter: TimeSpan
  /// Renewal ahead of expiry (C6): the window of the first request starts `renewBefore`
  /// before `exp` and lasts `renewSpread`; a zero `renewBefore` turns it off.
  public var renewBefore: TimeSpan
  public var renewSpread: TimeSpan

  public static let defaultProduct = "svm-protection"
  public static let defaultWarningThresholds: [TimeSpan] = [.days(30), .days(7), .days(1), .hours(1)]

  public init(
    product: String = defaultProduct, warningThresholds: [TimeSpan] = defaultWarningThresholds,
    retryInitial: TimeSpan = .seconds(5), retryMax: TimeSpan = .minutes(10),
    alertAfter: TimeSpan = .minutes(30), renewBefore: TimeSpan = .days(7), renewSpread: TimeSpan = .days(3)
  ) {
    self.product = product
    self.warningThresholds = warningThresholds
    self.retryInitial = retryInitial
    self.retryMax = retryMax
    self.alertAfter = alertAfter
    self.renewBefore = renewBefore
    self.renewSpread = renewSpread
  }
}

/// The licensing rules of `rules.md` as a pure state machine.
///
/// Every input is a value (the state, the key text, the current time) and every output is
/// a ``Decision``; nothing here reads a clock, a file or the network, so each rule is
/// tested at its exact boundaries in microseconds.
public struct LicenseEngine: Sendable {
  public var configuration: EngineConfiguration
  public var trust: TrustStore

  public init(configuration: EngineConfiguration = EngineConfiguration(), trust: TrustStore) {
    self.configuration = configuration
    self.trust = trust
  }

  /// The next instant the agent must act: the earliest expiry or pending warning threshold.
  public func nextWake(_ state: LicenseState) -> Wake? {
    state.slotsInUse.compactMap { nextWake(state, slot: $0) }.min { $0.at < $1.at }
  }

  /// The next instant `slot` needs the agent (the metrics' next action per slot).
  public func nextWake(_ state: LicenseState, slot: Slot) -> Wake? {
    var best: Wake?
    func consider(_ wake: Wake) {
      if best == nil || wake.at < best!.at { best = wake }
    }
    if let renewal = state[slot].renewal {
      if let due = renewal.nextAttemptAt {
        consider(
          Wake(
            at: due,
            reason: .renewal(slot: slot, serial: renewal.expiredSerial, attempt: renewal.attempts + 1)))
      }
      if !renewal.alertRaised {
        consider(
          Wake(
            at: renewal.expiredAt + configuration.alertAfter,
            reason: .alert(slot: slot, serial: renewal.expiredSerial)))
      }
    }
    guard let active = state[slot].active else { return best }
    if let due = aheadAttemptDue(state[slot]) {
      consider(
        Wake(
          at: due,
          reason: .renewalAhead(
            slot: slot, serial: active.serial, attempt: (state[slot].ahead?.attempts ?? 0) + 1)))
    }
    consider(
      Wake(
        at: active.expiresAt,
        reason: .expiry(slot: slot, serial: active.serial, takeover: takeover(state[slot]))))
    for threshold in configuration.warningThresholds
    where !state[slot].warned.contains(threshold.description) {
      consider(
        Wake(
          at: active.expiresAt - threshold,
          reason: .warning(slot: slot, serial: active.serial, threshold: threshold.description)))
    }
    return best
  }

  /// What takes over when the slot's active key expires; for a slot already expired, its
  /// renewal with the activation code while it goes on (nothing once it stopped).
  public func takeover(_ slot: SlotState) -> Takeover {
    if slot.active == nil {
      guard let renewal = slot.renewal, renewal.nextAttemptAt != nil || renewal.attemptStartedAt != nil else {
        return .none
      }
      return .activationCode
    }
    if slot.reserve != nil { return .reserve }
    if slot.pending != nil { return .pendingRenewal }
    return slot.active?.activationCode != nil ? .activationCode : .none
  }

  // MARK: - Committing

  /// Gives the events the next transition id, stores them in the outbox and orders the
  /// actions: persist first, then announce, then sleep (P2).
  func commit<Success>(
    _ state: LicenseState, events: [JournalEvent], result: Result<Success, RuleViolation>, now: Timestamp
  )
    -> Decision<Success>
  {
    var next = withAheadRecords(state, now: now)
    next.lastTransitionID += 1
    let id = next.lastTransitionID
    let stamped = events.map { event -> JournalEvent in
      var copy = event
      copy.transitionID = id
      return copy
    }
    next.outbox.append(contentsOf: stamped)
    return Decision(
      state: next, actions: [.persist(transitionID: id)] + stamped.map(Action.emit) + [.wake(nextWake(next))],
      result: result)
  }
}
