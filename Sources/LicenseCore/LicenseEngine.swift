import SimpleJSON

/// What the runtime must do after the engine decided: make the new state durable, announce
/// events, and start renewal attempts. (The next instant to wake at is not an action: it
/// is ``LicenseEngine/nextWake(_:)`` of the state, whatever the decision.)
public enum Action: Sendable, Equatable {
  /// Persist the decision's state (it carries transition `transitionID`) before anything
  /// else, then acknowledge the outbox once the events are sent (P2: durable before visible).
  case persist(transitionID: UInt64)
  /// Announce one event: from the outbox when it belongs to the persisted transition, at
  /// once when it belongs to none (a rejection, a clock change).
  case emit(LicenseEvent, transitionID: UInt64?)
  /// Ask the activation server, through the activation client, for the key that continues
  /// the licence of a slot (C2, C6). The outcome comes back through
  /// ``LicenseEngine/activationFinished(_:outcome:jitter:now:state:)``.
  case activate(ActivationRequest)
}

/// One renewal attempt to make.
public struct ActivationRequest: Sendable, Equatable {
  public var slot: Slot
  public var code: ActivationCode
  /// The serial of the key to continue (`currentSerial` of the request).
  public var currentSerial: String
  /// 1 for the first attempt (at the instant of expiry, or at the drawn instant ahead).
  public var attempt: Int
  /// At expiry, or ahead of it (C6: the body carries `"ahead": true` and
  /// `currentExpiresAt`, and a key obtained becomes the slot's pending key).
  public var kind: RenewalKind

  public init(slot: Slot, code: ActivationCode, currentSerial: String, attempt: Int, kind: RenewalKind) {
    self.slot = slot
    self.code = code
    self.currentSerial = currentSerial
    self.attempt = attempt
    self.kind = kind
  }
}

/// What an activation attempt gave.
public enum ActivationOutcome: Sendable, Equatable {
  /// The server's key (not yet checked: the engine checks it as A1, or C6 ahead).
  case key(String)
  case failure(ActivationFailure)
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
  public var isPermanent: Bool { if case .permanent = self { return true } else { return false } }
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
    case warning(slot: Slot, serial: String, threshold: TimeSpan)
    /// The next renewal attempt of `slot` is due.
    case renewal(slot: Slot, serial: String, attempt: Int)
    /// The next attempt to renew the active key `serial` of `slot` ahead of its expiry (C6).
    case renewalAhead(slot: Slot, serial: String, attempt: Int)
    /// The alert delay after the expiry of `serial` ends without a renewal (C4).
    case alert(slot: Slot, serial: String)
    /// `consumer` must have confirmed the active key `serial` of `slot` by then (N2).
    case confirmation(slot: Slot, serial: String, consumer: ConsumerName)
  }
  public var at: Timestamp
  public var reason: Reason
}

/// What takes over when an active key expires (`LICENSE_TAKEOVER`, the status's `takeover`).
public enum Takeover: String, Sendable, Equatable, Codable, CaseIterable {
  case reserve
  /// The key already obtained ahead with the activation code (C6).
  case pendingRenewal = "pending-renewal"
  case activationCode = "activation-code"
  case none

  /// `LICENSE_TAKEOVER` of EXPIRING_SOON, whose vocabulary (contract §4) has no
  /// `pending-renewal`: a pending renewal came from the activation code.
  public var journalValue: String { self == .pendingRenewal ? Takeover.activationCode.rawValue : rawValue }
}

/// The licence's health as `agentctl status` exits with it (contract §7).
public enum Health: Int, Sendable, Equatable, Codable, Comparable {
  /// Every slot in use has a valid key and no alert is pending.
  case ok = 0
  /// A key expires within the first warning threshold with nothing to take over.
  case expiringWithoutTakeover = 1
  /// A slot has lapsed, or an alert is pending.
  case lapsedOrAlert = 2

  public static func < (lhs: Health, rhs: Health) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// What a `removeReserve` request removed.
public struct ReserveRemoved: Sendable, Equatable {
  public var slot: Slot
  public var key: InstalledKey
  public init(slot: Slot, key: InstalledKey) {
    self.slot = slot
    self.key = key
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
  /// U3: a reserve licensing fewer units than the slot uses (accepted, with this warning).
  public var unitsShort: UnitsShort?
}

/// The engine's answer to one input: the new state, the actions, and the result, typed
/// per request (`addKey` answers an ``AddedKey``, `removeReserve` a ``ReserveRemoved``,
/// time and renewal inputs ``TimeProcessed``), so a caller never handles a result its
/// request cannot have.
public struct Decision<Success: Sendable & Equatable>: Sendable, Equatable {
  public var state: LicenseState
  public var actions: [Action]
  public var result: Result<Success, RuleViolation>

  /// The decision that changes nothing and announces nothing.
  static func unchanged(_ state: LicenseState, _ result: Result<Success, RuleViolation>) -> Decision {
    Decision(state: state, actions: [], result: result)
  }

  /// The events to announce, in order.
  public var events: [LicenseEvent] {
    actions.compactMap { if case .emit(let event, _) = $0 { return event } else { return nil } }
  }
  /// The events as the journal gets them (rendered, with their transition id).
  public var renderedEvents: [JournalEvent] {
    actions.compactMap { action -> JournalEvent? in
      guard case .emit(let event, let transition) = action else { return nil }
      var rendered = event.rendered
      rendered.transitionID = transition
      return rendered
    }
  }
  /// The transition to persist, if the state changed.
  public var persistedTransition: UInt64? {
    actions.lazy.compactMap { if case .persist(let id) = $0 { return id } else { return nil } }.first
  }
  /// The renewal attempts to start.
  public var activations: [ActivationRequest] {
    actions.compactMap { if case .activate(let request) = $0 { return request } else { return nil } }
  }
}

extension Decision where Success == TimeProcessed {
  static func unchanged(_ state: LicenseState) -> Decision { .unchanged(state, .success(TimeProcessed())) }
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
  /// U1: a usage report older than this is stale (shown so; still graded).
  public var usageStaleAfter: TimeSpan
  /// N2: the consumers that must confirm each takeover, and how long they have.
  public var expectedConsumers: [ConsumerName]
  public var confirmWithin: TimeSpan
  /// B2: how long a blocked active key keeps working after the agent learns of the block.
  public var blockingGrace: TimeSpan

  public static let defaultBlockingGrace = TimeSpan.days(8)

  public static let defaultConfirmWithin = TimeSpan.seconds(60)

  public static let defaultUsageStaleAfter = TimeSpan.days(1)
  public static let defaultProduct = "svm-protection"
  public static let defaultWarningThresholds: [TimeSpan] = [.days(30), .days(7), .days(1), .hours(1)]

  public init(
    product: String = defaultProduct, warningThresholds: [TimeSpan] = defaultWarningThresholds,
    retryInitial: TimeSpan = .seconds(5), retryMax: TimeSpan = .minutes(10),
    alertAfter: TimeSpan = .minutes(30), renewBefore: TimeSpan = .days(7), renewSpread: TimeSpan = .days(3),
    usageStaleAfter: TimeSpan = defaultUsageStaleAfter, expectedConsumers: [ConsumerName] = [],
    confirmWithin: TimeSpan = defaultConfirmWithin, blockingGrace: TimeSpan = defaultBlockingGrace
  ) {
    self.product = product
    self.warningThresholds = warningThresholds
    self.retryInitial = retryInitial
    self.retryMax = retryMax
    self.alertAfter = alertAfter
    self.renewBefore = renewBefore
    self.renewSpread = renewSpread
    self.usageStaleAfter = usageStaleAfter
    self.expectedConsumers = expectedConsumers
    self.confirmWithin = confirmWithin
    self.blockingGrace = blockingGrace
  }

  /// The first (largest) warning threshold: inside it, a key with nothing to take over is
  /// the health's `expiringWithoutTakeover`.
  public var firstThreshold: TimeSpan { warningThresholds.max() ?? .days(30) }
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

  /// The next instant the agent must act: the earliest of every slot's.
  public func nextWake(_ state: LicenseState) -> Wake? {
    state.slotsInUse.compactMap { nextWake(state, slot: $0) }.min { $0.at < $1.at }
  }

  /// The next instant `slot` needs the agent (the metrics' next action per slot).
  public func nextWake(_ state: LicenseState, slot: Slot) -> Wake? {
    var wakes: [Wake] = []
    switch state[slot] {
    case nil:
      break
    case .lapsed(let lapsed)?:
      guard let renewal = lapsed.renewal else { break }
      let serial = lapsed.expired.serial
      if let due = renewal.attempts.dueAt {
        wakes.append(
          Wake(at: due, reason: .renewal(slot: slot, serial: serial, attempt: renewal.attempts.failures + 1)))
      }
      if !renewal.attempts.alertRaised {
        wakes.append(
          Wake(
            at: lapsed.expired.expiresAt + configuration.alertAfter,
            reason: .alert(slot: slot, serial: serial)))
      }
    case .held(let held)?:
      let active = held.active
      if let due = aheadAttemptDue(held), let ahead = held.ahead {
        wakes.append(
          Wake(
            at: due,
            reason: .renewalAhead(slot: slot, serial: active.serial, attempt: ahead.attempts.failures + 1)))
      }
      if held.isLapsed, let successor = held.successorKey {
        // B2: the grace ended; what takes over does so at its `nbf`.
        wakes.append(
          Wake(
            at: successor.claims.notBefore,
            reason: .expiry(slot: slot, serial: active.serial, takeover: takeover(held))))
      } else {
        wakes.append(
          Wake(at: held.endsAt, reason: .expiry(slot: slot, serial: active.serial, takeover: takeover(held))))
      }
      for threshold in configuration.warningThresholds
      where !held.warned.contains(threshold) && !held.isLapsed {
        wakes.append(
          Wake(
            at: held.endsAt - threshold,
            reason: .warning(slot: slot, serial: active.serial, threshold: threshold)))
      }
      wakes += confirmationWakes(state, slot: slot)
    }
    // The earliest; on a tie, the first considered (the renewal before the expiry).
    return wakes.enumerated().min { ($0.element.at, $0.offset) < ($1.element.at, $1.offset) }?.element
  }

  /// What takes over when the slot's active key expires; for a lapsed slot, its renewal
  /// with the activation code while it goes on (nothing once it stopped).
  public func takeover(_ slot: SlotState?) -> Takeover {
    switch slot {
    case nil: return .none
    case .lapsed(let lapsed)?:
      guard let renewal = lapsed.renewal, !renewal.attempts.isStopped else { return .none }
      return .activationCode
    case .held(let held)?: return takeover(held)
    }
  }

  public func takeover(_ held: HeldSlot) -> Takeover {
    switch held.successor {
    case .reserve: return .reserve
    case .pending: return .pendingRenewal
    case .renewingAhead: return .activationCode
    case .none: return held.active.activationCode != nil ? .activationCode : .none
    }
  }

  /// When the slot's licence ends with nothing to take over, as far as the SVM knows now:
  /// a lapsed slot's expired key's `exp`; a held slot's active key's with nothing after it,
  /// or its reserve's (after which nothing takes over unless the reserve came with a code).
  /// Nil when an activation code renews the licence (an alert says when it cannot).
  public func lapsesAt(_ slot: SlotState?) -> Timestamp? {
    switch slot {
    case nil: return nil
    case .lapsed(let lapsed)?: return lapsed.expired.expiresAt
    case .held(let held)?:
      switch held.successor {
      case .reserve(let reserve): return reserve.activationCode == nil ? reserve.expiresAt : nil
      case .pending, .renewingAhead: return nil
      case .none: return held.active.activationCode == nil ? held.endsAt : nil
      }
    }
  }

  /// The pending alerts: MANUAL_ACTIVATION_REQUIRED raised and not cleared, per slot.
  public func alertPending(_ slot: SlotState?) -> Bool {
    switch slot {
    case nil: return false
    case .lapsed(let lapsed)?: return lapsed.renewal?.attempts.alertRaised ?? false
    case .held(let held)?: return held.ahead?.attempts.alertRaised ?? false
    }
  }

  /// The health of one slot at `now` (``Health``).
  public func health(_ slot: SlotState?, now: Timestamp) -> Health {
    switch slot {
    case nil: return .ok
    case .lapsed?: return .lapsedOrAlert
    case .held(let held)?:
      if alertPending(slot) || held.isLapsed { return .lapsedOrAlert }
      if takeover(held) == .none
        && held.endsAt.microseconds(since: now) <= configuration.firstThreshold.microseconds
      {
        return .expiringWithoutTakeover
      }
      return .ok
    }
  }

  /// The health of the whole SVM: its worst slot's.
  public func health(_ state: LicenseState, now: Timestamp) -> Health {
    state.slotsInUse.map { health(state[$0], now: now) }.max() ?? .ok
  }

  // MARK: - Committing

  /// Gives the events the next transition id, renders them into the outbox and orders the
  /// actions: persist first, then announce (P2).
  func commit<Success>(
    _ state: LicenseState, events: [LicenseEvent], result: Result<Success, RuleViolation>, now: Timestamp
  )
    -> Decision<Success>
  {
    var next = withAheadRecords(state, now: now)
    let events = events + gradingUsage(&next, now: now)
    trackingConsumers(&next, now: now)
    next.lastTransitionID += 1
    let id = next.lastTransitionID
    next.outbox += events.map { event in
      var rendered = event.rendered
      rendered.transitionID = id
      return rendered
    }
    return Decision(
      state: next, actions: [.persist(transitionID: id)] + events.map { .emit($0, transitionID: id) },
      result: result)
  }

  /// The state after `decision` with each promotion's `LICENSE_DELAY_USEC` measured: from
  /// the expired key's `exp` to the instant the promotion became durable, `durableAfter`
  /// microseconds after the decision. The outbox entry is rendered again from the typed
  /// event (so that the journal gets exactly what the outbox holds, whether sent now or
  /// replayed after a crash) and the slot's counter follows. Nil when nothing was promoted.
  public func measuringPromotions<Success>(of decision: Decision<Success>, durableAfter extra: Int64)
    -> LicenseState?
  {
    var state = decision.state
    var changed = false
    for case .emit(.keyPromoted(var promoted), let transition?) in decision.actions {
      var before = LicenseEvent.keyPromoted(promoted).rendered
      before.transitionID = transition
      promoted.delay = saturatingSum(promoted.lateness, extra)
      var after = LicenseEvent.keyPromoted(promoted).rendered
      after.transitionID = transition
      guard let index = state.outbox.firstIndex(of: before) else { continue }
      state.outbox[index] = after
      state.counters[promoted.slot, default: SlotCounters()].lastPromotionDelayMicroseconds = promoted.delay
      changed = true
    }
    return changed ? state : nil
  }
}
