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
  /// 1 for the attempt at the instant of expiry.
  public var attempt: Int

  public init(slot: Slot, code: ActivationCode, currentSerial: String?, attempt: Int) {
    self.slot = slot
    self.code = code
    self.currentSerial = currentSerial
    self.attempt = attempt
  }
}

/// How a renewal attempt failed, as the contract's table classifies it.
public enum ActivationFailure: Sendable, Equatable {
  /// Network, timeout, 408/429/5xx, plugin exit 75: retried (C3), honouring `retryAfter`.
  case transient(error: String, retryAfter: TimeSpan?)
  /// Invalid, blocked, exhausted or expired code, or an unusable reply: not retried (C3), alert (C4).
  case permanent(error: String)
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
    /// The alert delay after the expiry of `serial` ends without a renewal (C4).
    case alert(slot: Slot, serial: String)
  }
  public var at: Timestamp
  public var reason: Reason
}

/// What takes over when an active key expires (`LICENSE_TAKEOVER`).
public enum Takeover: String, Sendable, Equatable {
  case reserve
  case activationCode = "activation-code"
  case none
}

/// The successful result of a request.
public enum Outcome: Sendable, Equatable {
  /// A key was added (or was already there: `unchanged`).
  case added(AddedKey)
  /// The reserve of a slot was removed.
  case reserveRemoved(slot: Slot, serial: String)
  /// Time was processed (promotions, expiries, warnings), possibly with nothing to do.
  case timeProcessed
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

/// The engine's answer to one input: the new state, the actions, and the result.
public struct Decision: Sendable, Equatable {
  public var state: LicenseState
  public var actions: [Action]
  public var result: Result<Outcome, RuleViolation>

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

  public static let defaultProduct = "svm-protection"
  public static let defaultWarningThresholds: [TimeSpan] = [.days(30), .days(7), .days(1), .hours(1)]

  public init(
    product: String = defaultProduct, warningThresholds: [TimeSpan] = defaultWarningThresholds,
    retryInitial: TimeSpan = .seconds(5), retryMax: TimeSpan = .minutes(10),
    alertAfter: TimeSpan = .minutes(30)
  ) {
    self.product = product
    self.warningThresholds = warningThresholds
    self.retryInitial = retryInitial
    self.retryMax = retryMax
    self.alertAfter = alertAfter
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

  // MARK: - Requests

  /// The activation task: adds `text` as the active key (A1–A5) or as the reserve (R1–R9).
  /// A refused reserve leaves the state untouched and logs RESERVE_REJECTED.
  public func addKey(
    _ text: String, role: Role, replaceScheme: Bool = false, code: ActivationCode? = nil, now: Timestamp,
    state: LicenseState
  ) -> Decision {
    switch plan(text, role: role, replaceScheme: replaceScheme, now: now, state: state) {
    case .failure(let violation):
      var actions: [Action] = []
      if role == .reserve { actions.append(.emit(rejection(violation))) }
      return Decision(state: state, actions: actions, result: .failure(violation))
    case .success(let plan):
      if plan.added.unchanged {
        return Decision(state: state, actions: [.wake(nextWake(state))], result: .success(.added(plan.added)))
      }
      var next = state
      var events: [JournalEvent] = []
      apply(plan, code: code, now: now, to: &next, events: &events)
      return commit(next, events: events, result: .success(.added(plan.added)))
    }
  }

  /// The same checks as ``addKey(_:role:replaceScheme:origin:now:state:)``, changing nothing
  /// and logging nothing: what would happen.
  public func checkKey(
    _ text: String, role: Role, replaceScheme: Bool = false, now: Timestamp, state: LicenseState
  ) -> Result<AddedKey, RuleViolation> {
    plan(text, role: role, replaceScheme: replaceScheme, now: now, state: state).map(\.added)
  }

  /// Removes the reserve key of `slot` (an operator's decision; logged as RESERVE_DROPPED).
  public func removeReserve(slot: Slot, now: Timestamp, state: LicenseState) -> Decision {
    guard let reserve = state[slot].reserve else {
      let violation = RuleViolation(
        rule: .R9, code: "no_reserve",
        message:
          "The \(slot.rawValue) slot has no reserve key; nothing was removed. `agentctl status` lists the reserves.",
        slot: slot)
      return Decision(state: state, actions: [], result: .failure(violation))
    }
    var next = state
    next[slot].reserve = nil
    var fields = keyFields(slot: slot, reserve.key)
    if let active = state[slot].active { fields.append(.init("LICENSE_ACTIVE_SERIAL", active.serial)) }
    fields.append(.init("LICENSE_REASON", "removed-by-operator"))
    let event = JournalEvent(
      .reserveDropped,
      message:
        "Reserve key \(reserve.serial) of the \(slot.rawValue) slot was removed by an operator; nothing will take over when the active key expires unless a new reserve is added (`agentctl add-key --reserve FILE`).",
      fields: fields)
    return commit(
      next, events: [event], result: .success(.reserveRemoved(slot: slot, serial: reserve.serial)))
  }

  /// Time has reached `now`: promotes reserves whose active key expired (P1, P3–P5), marks
  /// slots expired (P4, P6), and logs due EXPIRING_SOON warnings (W1). Idempotent: calling it
  /// again at the same instant, or after a crash replay, finds nothing left to do.
  public func timeReached(now: Timestamp, state: LicenseState) -> Decision {
    var next = state
    var events: [JournalEvent] = []
    var requests: [ActivationRequest] = []
    for slot in state.slotsInUse {
      guard let active = next[slot].active, active.expiresAt <= now else { continue }
      let lateness = now.microseconds(since: active.expiresAt)
      if let reserve = next[slot].reserve, reserve.expiresAt > now {
        // P1: the reserve becomes active; P5: schedules follow it.
        var promoted = reserve
        promoted.promotedAt = now
        next[slot] = SlotState(active: promoted, warned: passedThresholds(of: promoted.expiresAt, at: now))
        var fields = keyFields(slot: slot, reserve.key)
        fields.append(.init("LICENSE_PREVIOUS_SERIAL", active.serial))
        fields.append(.init("LICENSE_DELAY_USEC", String(lateness)))
        let late =
          lateness >= 1_000_000
          ? " (the agent was not running at expiry: \(TimeSpan(microseconds: lateness).inWords) late)" : ""
        events.append(
          JournalEvent(
            .keyPromoted,
            message:
              "Reserve key \(reserve.serial) is now the active \(slot.rawValue) key: \(active.serial) expired at \(active.expiresAt)\(late). The new key expires at \(reserve.expiresAt); add the next reserve before then.",
            fields: fields))
      } else if let code = active.activationCode {
        // C2: no reserve, but a code: renew at once, the first attempt at the instant of
        // expiry (in this same decision: one durable write before the first request).
        next[slot] = SlotState(
          expired: ExpiredKey(
            serial: active.serial, expiresAt: active.expiresAt, scheme: active.claims.scheme),
          renewal: RenewalState(
            code: code, expiredSerial: active.serial, expiredAt: active.expiresAt, nextAttemptAt: nil,
            attemptStartedAt: now))
        requests.append(ActivationRequest(slot: slot, code: code, currentSerial: active.serial, attempt: 1))
      } else {
        // P4 / P6: nothing valid takes over; the slot is expired.
        let reserveNote =
          next[slot].reserve.map {
            " Its reserve \($0.serial) had itself expired at \($0.expiresAt) and was not promoted."
          } ?? ""
        next[slot] = SlotState(
          expired: ExpiredKey(
            serial: active.serial, expiresAt: active.expiresAt, scheme: active.claims.scheme))
        events.append(
          JournalEvent(
            .licenseExpired,
            message:
              "The \(slot.rawValue) licence has expired: key \(active.serial) ended at \(active.expiresAt) and nothing took over.\(reserveNote) Add an active key with `agentctl add-key FILE`.",
            fields: keyFields(slot: slot, active.key)))
      }
    }
    for slot in next.slotsInUse {
      guard var renewal = next[slot].renewal else { continue }
      // C4: not renewed within the alert delay: alert, once.
      if !renewal.alertRaised && now >= renewal.expiredAt + configuration.alertAfter {
        renewal.alertRaised = true
        events.append(manualActivationRequired(slot: slot, renewal: renewal))
      }
      // A retry that is due.
      if let due = renewal.nextAttemptAt, due <= now, renewal.attemptStartedAt == nil {
        renewal.nextAttemptAt = nil
        renewal.attemptStartedAt = now
        requests.append(
          ActivationRequest(
            slot: slot, code: renewal.code, currentSerial: renewal.expiredSerial,
            attempt: renewal.attempts + 1))
      }
      next[slot].renewal = renewal
    }
    for slot in next.slotsInUse {
      guard let active = next[slot].active else { continue }
      let due = configuration.warningThresholds
        .filter { active.expiresAt - $0 <= now && !next[slot].warned.contains($0.description) }
        .sorted()
      guard let mostUrgent = due.first else { continue }
      // After downtime several thresholds may be due at once: log only the most urgent one.
      next[slot].warned.append(contentsOf: due.map(\.description))
      events.append(expiringSoon(slot: slot, active: active, threshold: mostUrgent, state: next, now: now))
    }
    if next == state {
      return Decision(state: state, actions: [.wake(nextWake(state))], result: .success(.timeProcessed))
    }
    var decision = commit(next, events: events, result: .success(.timeProcessed))
    decision.actions += requests.map(Action.activate)
    return decision
  }

  /// Attempts that were under way when the agent stopped (a crash): to make again at start.
  public func interruptedAttempts(_ state: LicenseState) -> [ActivationRequest] {
    state.slotsInUse.compactMap { slot in
      guard let renewal = state[slot].renewal, renewal.attemptStartedAt != nil else { return nil }
      return ActivationRequest(
        slot: slot, code: renewal.code, currentSerial: renewal.expiredSerial, attempt: renewal.attempts + 1)
    }
  }

  /// The activation server gave `text` for the renewal of `slot` (C2): checked as A1 and
  /// installed as the active key, keeping the code; ACTIVATION_RENEWED clears the alert.
  /// A key that fails the checks is a permanent failure (`bad_key_from_server`).
  public func activationSucceeded(slot: Slot, key text: String, now: Timestamp, state: LicenseState)
    -> Decision
  {
    guard let renewal = state[slot].renewal, renewal.attemptStartedAt != nil else {
      // The slot was resolved meanwhile (an operator added a key): nothing to do.
      return Decision(state: state, actions: [.wake(nextWake(state))], result: .success(.timeProcessed))
    }
    let checked = plan(text, role: .active, replaceScheme: false, now: now, state: state)
    guard case .success(let plan) = checked, plan.added.slot == slot, plan.clearSlots.isEmpty else {
      let reason: String
      switch checked {
      case .failure(let violation): reason = violation.ruleAndCode
      case .success(let plan): reason = "a key for the \(plan.added.slot.rawValue) slot"
      }
      return activationFailed(
        slot: slot, failure: .permanent(error: "bad_key_from_server (\(reason))"), jitter: 0, now: now,
        state: state)
    }
    var next = state
    let key = plan.added.key
    next[slot] = SlotState(
      active: InstalledKey(key: key, origin: .activationCode, addedAt: now, activationCode: renewal.code),
      warned: passedThresholds(of: key.claims.expiresAt, at: now))
    var fields = keyFields(slot: slot, key)
    fields += [
      .init("LICENSE_PREVIOUS_SERIAL", renewal.expiredSerial),
      .init("LICENSE_ATTEMPT", String(renewal.attempts + 1)),
      .init("LICENSE_CODE_HINT", renewal.code.hint),
    ]
    let cleared = renewal.alertRaised ? " The manual-activation alert is cleared." : ""
    let event = JournalEvent(
      .activationRenewed,
      message:
        "The \(slot.rawValue) licence was renewed with its activation code (…\(renewal.code.hint)): key \(key.serial) continues \(renewal.expiredSerial), until \(key.claims.expiresAt) (attempt \(renewal.attempts + 1)).\(cleared)",
      fields: fields)
    return commit(next, events: [event], result: .success(.timeProcessed))
  }

  /// A renewal attempt of `slot` failed (C3, C4). Transient: retried after the backoff delay
  /// (`jitter` uniform in [0, 1), given by the caller so that the engine stays pure),
  /// honouring `Retry-After`; permanent: no retry, MANUAL_ACTIVATION_REQUIRED at once.
  public func activationFailed(
    slot: Slot, failure: ActivationFailure, jitter: Double, now: Timestamp, state: LicenseState
  ) -> Decision {
    guard var renewal = state[slot].renewal, renewal.attemptStartedAt != nil else {
      return Decision(state: state, actions: [.wake(nextWake(state))], result: .success(.timeProcessed))
    }
    renewal.attempts += 1
    renewal.attemptStartedAt = nil
    var events: [JournalEvent] = []
    switch failure {
    case .transient(let error, let retryAfter):
      renewal.lastError = error
      let delay = renewalRetryDelay(
        failures: renewal.attempts, initial: configuration.retryInitial, maximum: configuration.retryMax,
        jitter: jitter, retryAfter: retryAfter)
      let nextAttempt = now + delay
      renewal.nextAttemptAt = nextAttempt
      if isLoggedAttempt(renewal.attempts) {
        var fields: [JournalEvent.Field] = [
          .init("LICENSE_SLOT", slot.rawValue), .init("LICENSE_SERIAL", renewal.expiredSerial),
          .init("LICENSE_EXPIRES_AT", renewal.expiredAt.rfc3339),
        ]
        fields += [
          .init("LICENSE_ATTEMPT", String(renewal.attempts)), .init("LICENSE_ERROR", error),
          .init("LICENSE_NEXT_ATTEMPT_AT", nextAttempt.rfc3339),
          .init("LICENSE_CODE_HINT", renewal.code.hint),
        ]
        events.append(
          JournalEvent(
            .activationAttemptFailed,
            message:
              "Renewing the \(slot.rawValue) licence failed (attempt \(renewal.attempts): \(error)); the next attempt is at \(nextAttempt). Check the network path to the activation server.",
            fields: fields))
      }
      if !renewal.alertRaised && now >= renewal.expiredAt + configuration.alertAfter {
        renewal.alertRaised = true
        events.append(manualActivationRequired(slot: slot, renewal: renewal))
      }
    case .permanent(let error):
      renewal.lastError = error
      renewal.nextAttemptAt = nil
      if !renewal.alertRaised {
        renewal.alertRaised = true
        events.append(manualActivationRequired(slot: slot, renewal: renewal))
      }
    }
    var next = state
    next[slot].renewal = renewal
    return commit(next, events: events, result: .success(.timeProcessed))
  }

  private func manualActivationRequired(slot: Slot, renewal: RenewalState) -> JournalEvent {
    let error = renewal.lastError ?? "not renewed within \(configuration.alertAfter) of the expiry"
    let fields: [JournalEvent.Field] = [
      .init("LICENSE_SLOT", slot.rawValue), .init("LICENSE_SERIAL", renewal.expiredSerial),
      .init("LICENSE_EXPIRES_AT", renewal.expiredAt.rfc3339), .init("LICENSE_ERROR", error),
      .init("LICENSE_ATTEMPT", String(renewal.attempts)), .init("LICENSE_CODE_HINT", renewal.code.hint),
    ]
    let retrying =
      renewal.nextAttemptAt != nil ? " The agent keeps retrying." : " The agent will not retry this code."
    return JournalEvent(
      .manualActivationRequired,
      message:
        "MANUAL ACTIVATION REQUIRED: the \(slot.rawValue) licence expired at \(renewal.expiredAt) (key \(renewal.expiredSerial)) and could not be renewed with the activation code …\(renewal.code.hint): \(error).\(retrying) Run `agentctl activate --code-file FILE` with a valid code, or add a key with `agentctl add-key FILE`.",
      fields: fields)
  }

  /// The wall clock was stepped by `deltaMicroseconds` (T1): logs CLOCK_CHANGED and
  /// re-evaluates at once. A backward step undoes nothing.
  public func clockChanged(deltaMicroseconds: Int64, now: Timestamp, state: LicenseState) -> Decision {
    let direction = deltaMicroseconds >= 0 ? "forward" : "backward"
    let event = JournalEvent(
      .clockChanged,
      message:
        "The system clock was stepped \(direction) by \(TimeSpan(microseconds: deltaMicroseconds).inWords); licence deadlines were re-evaluated at once. If the step was not intended, check time synchronisation (timedatectl).",
      fields: [.init("LICENSE_CLOCK_DELTA_USEC", String(deltaMicroseconds))])
    var decision = timeReached(now: now, state: state)
    decision.actions.insert(.emit(event), at: decision.persistedTransition == nil ? 0 : 1)
    return decision
  }

  /// The next instant the agent must act: the earliest expiry or pending warning threshold.
  public func nextWake(_ state: LicenseState) -> Wake? {
    var best: Wake?
    func consider(_ wake: Wake) {
      if best == nil || wake.at < best!.at { best = wake }
    }
    for slot in state.slotsInUse {
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
      guard let active = state[slot].active else { continue }
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
    }
    return best
  }

  /// What takes over when the slot's active key expires.
  public func takeover(_ slot: SlotState) -> Takeover {
    if slot.reserve != nil { return .reserve }
    return slot.active?.activationCode != nil ? .activationCode : .none
  }

  // MARK: - Planning (the rules)

  private struct Plan {
    var added: AddedKey
    /// Slots of another scheme to empty (A2, confirmed).
    var clearSlots: [Slot]
    /// The reserve dropped by A4, with the rule that condemned it.
    var droppedReserve: (key: InstalledKey, violation: RuleViolation)?
  }

  private func plan(
    _ text: String, role: Role, replaceScheme: Bool, now: Timestamp, state: LicenseState
  ) -> Result<Plan, RuleViolation> {
    let entry: RuleID = role == .active ? .A1 : .R8
    let key: LicenseKey
    do {
      key = try KeyParser.verify(text, trust: trust)
    } catch {
      return .failure(
        RuleViolation(
          rule: entry, code: error.code, reason: error.reason, message: "Refused: \(error).",
          serial: KeyParser.bestEffortSerial(text)))
    }
    let claims = key.claims
    func refuse(_ rule: RuleID, _ code: String, _ message: String) -> Result<Plan, RuleViolation> {
      .failure(
        RuleViolation(
          rule: rule, code: code, message: message, serial: key.serial, slot: key.slot,
          expiresAt: key.claims.expiresAt))
    }
    guard claims.product == configuration.product else {
      return refuse(
        entry, "wrong_product",
        "Key \(key.serial) is for the product \"\(claims.product)\", not \"\(configuration.product)\"; use a key issued for this product."
      )
    }
    switch role {
    case .active: return planActive(key, replaceScheme: replaceScheme, now: now, state: state, refuse: refuse)
    case .reserve: return planReserve(key, now: now, state: state, refuse: refuse)
    }
  }

  private func planActive(
    _ key: LicenseKey, replaceScheme: Bool, now: Timestamp, state: LicenseState,
    refuse: (RuleID, String, String) -> Result<Plan, RuleViolation>
  ) -> Result<Plan, RuleViolation> {
    let claims = key.claims
    let slot = key.slot
    guard claims.notBefore <= now else {
      return refuse(
        .A1, "not_yet_valid",
        "Key \(key.serial) is not valid before \(claims.notBefore); add it then, or add it now as a reserve key (`--reserve`)."
      )
    }
    guard now < claims.expiresAt else {
      return refuse(
        .A1, "expired", "Key \(key.serial) expired at \(claims.expiresAt); ask the vendor for a current key."
      )
    }
    let current = state[slot].active
    if let current, current.key.isSameKey(as: key) {
      return .success(
        Plan(
          added: AddedKey(slot: slot, role: .active, key: key, removedSerials: [], unchanged: true),
          clearSlots: []))
    }
    let otherScheme = state.slotsInUse.filter { state[$0].scheme != nil && state[$0].scheme != claims.scheme }
    // A5: a trial never replaces (or, through a scheme change, removes) a paid active key.
    if claims.licenseType == .trial {
      let paid = ([current] + otherScheme.map { state[$0].active }).compactMap { $0 }
        .filter { $0.claims.licenseType != .trial }
      if let victim = paid.first {
        return refuse(
          .A5, "trial_over_commercial",
          "Trial key \(key.serial) cannot replace the \(victim.claims.licenseType.rawValue) key \(victim.serial); a trial only starts where no paid licence is active."
        )
      }
    }
    // A2: one scheme per SVM; changing it removes every key of the old one, when confirmed.
    let removed = otherScheme.flatMap { other in
      [state[other].active, state[other].reserve].compactMap { $0 }.map { ($0, other) }
    }
    if !removed.isEmpty && !replaceScheme {
      let list = removed.map {
        "\($0.1.rawValue) \($0.0 == state[$0.1].active ? "active" : "reserve") \($0.0.serial)"
      }
      .joined(separator: ", ")
      return refuse(
        .A2, "scheme_conflict",
        "Key \(key.serial) uses the \(claims.scheme.rawValue) scheme, but the SVM's keys use another. Adding it would remove: \(list). Confirm with --replace-scheme (replaceScheme) to switch schemes."
      )
    }
    var plan = Plan(
      added: AddedKey(
        slot: slot, role: .active, key: key, replacedSerial: current?.serial,
        removedSerials: removed.map(\.0.serial),
        unchanged: false),
      clearSlots: otherScheme)
    // A4: the slot's reserve must still be able to follow the new active key.
    if let reserve = state[slot].reserve,
      let violation = reserveProblem(reserve.key, following: key, now: now)
    {
      plan.droppedReserve = (reserve, violation)
      plan.added.droppedReserveSerial = reserve.serial
    }
    return .success(plan)
  }

  private func planReserve(
    _ key: LicenseKey, now: Timestamp, state: LicenseState,
    refuse: (RuleID, String, String) -> Result<Plan, RuleViolation>
  ) -> Result<Plan, RuleViolation> {
    let slot = key.slot
    guard let active = state[slot].active else {
      let activeSlots = state.slotsInUse.filter { state[$0].active != nil }
      if !activeSlots.isEmpty && state[slot].expired == nil {
        let types = activeSlots.compactMap { state[$0].active?.claims.typeDescription }.joined(
          separator: ", ")
        return refuse(
          .R2, "type_mismatch",
          "Reserve key \(key.serial) is a \(key.claims.typeDescription) key, but the active keys are \(types); a reserve must be of its active key's type. Use a reserve of the same type."
        )
      }
      return refuse(
        .R1, "no_active_key",
        "The \(slot.rawValue) slot has no active key, so reserve \(key.serial) cannot be added; add an active key first (`agentctl add-key FILE`)."
      )
    }
    if let reserve = state[slot].reserve, reserve.key.isSameKey(as: key) {
      return .success(
        Plan(
          added: AddedKey(slot: slot, role: .reserve, key: key, removedSerials: [], unchanged: true),
          clearSlots: []))
    }
    if let violation = reserveProblem(key, following: active.key, now: now) {
      return .failure(violation)
    }
    return .success(
      Plan(
        added: AddedKey(
          slot: slot, role: .reserve, key: key, replacedSerial: state[slot].reserve?.serial,
          removedSerials: [],
          unchanged: false),
        clearSlots: []))
  }

  /// Rules R2–R7 for `reserve` next to `active`; nil when the reserve can follow it.
  private func reserveProblem(_ reserve: LicenseKey, following active: LicenseKey, now: Timestamp)
    -> RuleViolation?
  {
    let r = reserve.claims
    let a = active.claims
    func violation(_ rule: RuleID, _ code: String, _ message: String) -> RuleViolation {
      RuleViolation(
        rule: rule, code: code, message: message, serial: reserve.serial, slot: reserve.slot,
        expiresAt: r.expiresAt)
    }
    if reserve.isSameKey(as: active) {
      return violation(
        .R7, "duplicate", "Key \(reserve.serial) is the active key itself; a reserve must be another key.")
    }
    if r.scheme != a.scheme || r.osType != a.osType {
      return violation(
        .R2, "type_mismatch",
        "Reserve key \(reserve.serial) is a \(r.typeDescription) key but the active key \(active.serial) is \(a.typeDescription); use a reserve of the same type."
      )
    }
    if r.edition != a.edition {
      return violation(
        .R3, "edition_mismatch",
        "Reserve key \(reserve.serial) is \(r.edition.rawValue) edition but the active key \(active.serial) is \(a.edition.rawValue); use a reserve of the same edition."
      )
    }
    if r.licenseType != .commercial {
      return violation(
        .R4, "not_reservable",
        "Key \(reserve.serial) is a \(r.licenseType.rawValue) key; only commercial keys can be reserve keys. Add it as the active key instead, or use a commercial key."
      )
    }
    if r.expiresAt <= now {
      return violation(
        .R6, "expired", "Reserve key \(reserve.serial) already expired at \(r.expiresAt); use a current key."
      )
    }
    if r.expiresAt <= a.expiresAt {
      return violation(
        .R5, "expires_before_active",
        "Reserve key \(reserve.serial) expires at \(r.expiresAt), not after the active key \(active.serial) (\(a.expiresAt)); it would never serve. Use a reserve that ends later."
      )
    }
    if r.notBefore > a.expiresAt {
      return violation(
        .R6, "not_valid_at_takeover",
        "Reserve key \(reserve.serial) is valid only from \(r.notBefore), after the active key \(active.serial) expires (\(a.expiresAt)); the licence would lapse in between. Use a reserve valid from \(a.expiresAt) at the latest."
      )
    }
    return nil
  }

  // MARK: - Applying

  private func apply(
    _ plan: Plan, code: ActivationCode?, now: Timestamp, to state: inout LicenseState,
    events: inout [JournalEvent]
  ) {
    let added = plan.added
    let installed = InstalledKey(
      key: added.key, origin: code == nil ? .key : .activationCode, addedAt: now, activationCode: code)
    var fields = keyFields(slot: added.slot, added.key)
    if let replaced = added.replacedSerial { fields.append(.init("LICENSE_REPLACED_SERIAL", replaced)) }
    switch added.role {
    case .active:
      for slot in plan.clearSlots { state[slot] = SlotState() }
      if !added.removedSerials.isEmpty {
        fields.append(.init("LICENSE_REMOVED_SERIALS", added.removedSerials.joined(separator: ",")))
      }
      let reserve = plan.droppedReserve == nil ? state[added.slot].reserve : nil
      state[added.slot] = SlotState(
        active: installed, reserve: reserve, warned: passedThresholds(of: added.key.claims.expiresAt, at: now)
      )
      let replaced = added.replacedSerial.map { ", replacing \($0)" } ?? ""
      let removed =
        added.removedSerials.isEmpty
        ? "" : "; keys of the former scheme were removed: \(added.removedSerials.joined(separator: ", "))"
      events.append(
        JournalEvent(
          .activeAdded,
          message:
            "Key \(added.key.serial) is now the active \(added.slot.rawValue) key\(replaced), until \(added.key.claims.expiresAt)\(removed).",
          fields: fields))
      if let (dropped, violation) = plan.droppedReserve {
        var dropFields = keyFields(slot: added.slot, dropped.key)
        dropFields.append(.init("LICENSE_ACTIVE_SERIAL", added.key.serial))
        dropFields.append(.init("LICENSE_RULE", violation.ruleAndCode))
        events.append(
          JournalEvent(
            .reserveDropped,
            message:
              "Reserve key \(dropped.serial) was removed: it can no longer follow the new active key \(added.key.serial) (\(violation.ruleAndCode)). Add a reserve that expires after \(added.key.claims.expiresAt).",
            fields: dropFields))
      }
    case .reserve:
      state[added.slot].reserve = installed
      let replaced = added.replacedSerial.map { ", replacing reserve \($0)" } ?? ""
      let active = state[added.slot].active!
      events.append(
        JournalEvent(
          .reserveAdded,
          message:
            "Key \(added.key.serial) is now the reserve of the \(added.slot.rawValue) slot\(replaced); it takes over when \(active.serial) expires at \(active.expiresAt).",
          fields: fields))
    }
  }

  /// Gives the events the next transition id, stores them in the outbox and orders the
  /// actions: persist first, then announce, then sleep (P2).
  private func commit(_ state: LicenseState, events: [JournalEvent], result: Result<Outcome, RuleViolation>)
    -> Decision
  {
    var next = state
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

  /// Thresholds already reached at `now` for a key expiring at `expiry` (never logged late).
  private func passedThresholds(of expiry: Timestamp, at now: Timestamp) -> [String] {
    configuration.warningThresholds.filter { expiry - $0 <= now }.map(\.description)
  }

  private func expiringSoon(
    slot: Slot, active: InstalledKey, threshold: TimeSpan, state: LicenseState, now: Timestamp
  )
    -> JournalEvent
  {
    let takeover = takeover(state[slot])
    var fields = keyFields(slot: slot, active.key)
    fields.append(.init("LICENSE_THRESHOLD", threshold.description))
    fields.append(.init("LICENSE_TAKEOVER", takeover.rawValue))
    let left = TimeSpan(microseconds: active.expiresAt.microseconds(since: now)).inWords
    let then: String
    switch takeover {
    case .reserve: then = "reserve key \(state[slot].reserve!.serial) will take over"
    case .activationCode: then = "the agent will renew it with its activation code"
    case .none:
      then =
        "nothing will take over: add a reserve key (`agentctl add-key --reserve FILE`) or a new active key"
    }
    return JournalEvent(
      .expiringSoon, priority: takeover == .none ? 4 : 5,
      message:
        "The active \(slot.rawValue) key \(active.serial) expires in \(left), at \(active.expiresAt); \(then).",
      fields: fields)
  }

  private func rejection(_ violation: RuleViolation) -> JournalEvent {
    var fields: [JournalEvent.Field] = []
    if let slot = violation.slot { fields.append(.init("LICENSE_SLOT", slot.rawValue)) }
    if let serial = violation.serial { fields.append(.init("LICENSE_SERIAL", serial)) }
    if let expiry = violation.expiresAt { fields.append(.init("LICENSE_EXPIRES_AT", expiry.rfc3339)) }
    fields.append(.init("LICENSE_RULE", violation.ruleAndCode))
    if let reason = violation.reason { fields.append(.init("LICENSE_REASON", reason)) }
    return JournalEvent(
      .reserveRejected, message: "A reserve key was refused: \(violation.message)", fields: fields)
  }

  private func keyFields(slot: Slot, _ key: LicenseKey) -> [JournalEvent.Field] {
    [
      .init("LICENSE_SLOT", slot.rawValue), .init("LICENSE_SERIAL", key.serial),
      .init("LICENSE_EXPIRES_AT", key.claims.expiresAt.rfc3339),
    ]
  }
}
