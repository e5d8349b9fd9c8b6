/// Activation-code mode: renewal at expiry, its retries and its alert (C1–C5).
extension LicenseEngine {
  /// Attempts that were under way when the agent stopped (a crash): to make again at start.
  public func interruptedAttempts(_ state: LicenseState) -> [ActivationRequest] {
    state.slotsInUse.compactMap { slot in
      let current = state[slot]
      if let ahead = current.ahead, ahead.attemptStartedAt != nil, let active = current.active,
        active.serial == ahead.serial, let code = active.activationCode
      {
        return aheadRequest(slot: slot, code: code, active: active, attempt: ahead.attempts + 1)
      }
      guard let renewal = current.renewal, renewal.attemptStartedAt != nil else { return nil }
      return ActivationRequest(
        slot: slot, code: renewal.code, currentSerial: renewal.expiredSerial, attempt: renewal.attempts + 1)
    }
  }

  /// The activation server gave `text` for the renewal of `slot` (C2): checked as A1 and
  /// installed as the active key, keeping the code; ACTIVATION_RENEWED clears the alert.
  /// A key that fails the checks is a permanent failure (`bad_key_from_server`).
  /// For a request made ahead of expiry (`ahead`), the key becomes the pending renewal (C6).
  public func activationSucceeded(
    slot: Slot, key text: String, ahead: Bool = false, now: Timestamp, state: LicenseState
  )
    -> Decision<TimeProcessed>
  {
    if ahead { return aheadSucceeded(slot: slot, key: text, now: now, state: state) }
    guard let renewal = state[slot].renewal, renewal.attemptStartedAt != nil else {
      // The slot was resolved meanwhile (an operator added a key): nothing to do.
      return Decision(state: state, actions: [.wake(nextWake(state))], result: .success(TimeProcessed()))
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
    next.counters[slot, default: SlotCounters()].renewed += 1
    let fields = renewedFields(
      slot: slot, key, previous: renewal.expiredSerial, attempt: renewal.attempts + 1, code: renewal.code)
    let cleared = renewal.alertRaised ? " The manual-activation alert is cleared." : ""
    let event = JournalEvent(
      .activationRenewed,
      message:
        "The \(slot.rawValue) licence was renewed with its activation code (…\(renewal.code.hint)): key \(key.serial) continues \(renewal.expiredSerial), until \(key.claims.expiresAt) (attempt \(renewal.attempts + 1)).\(cleared)",
      fields: fields)
    return commit(next, events: [event], result: .success(TimeProcessed()), now: now)
  }

  /// A renewal attempt of `slot` failed (C3, C4). Transient: retried after the backoff delay
  /// (`jitter` uniform in [0, 1), given by the caller so that the engine stays pure),
  /// honouring `Retry-After`; permanent: no retry, MANUAL_ACTIVATION_REQUIRED at once.
  /// After `exp`, `not_yet_available` counts as transient; ahead of it, see C6's own rules.
  public func activationFailed(
    slot: Slot, failure: ActivationFailure, ahead: Bool = false, jitter: Double, now: Timestamp,
    state: LicenseState
  ) -> Decision<TimeProcessed> {
    if ahead { return aheadFailed(slot: slot, failure: failure, jitter: jitter, now: now, state: state) }
    guard var renewal = state[slot].renewal, renewal.attemptStartedAt != nil else {
      return Decision(state: state, actions: [.wake(nextWake(state))], result: .success(TimeProcessed()))
    }
    renewal.attempts += 1
    renewal.attemptStartedAt = nil
    var events: [JournalEvent] = []
    var next = state
    switch failure {
    case .transient, .notYetAvailable:
      let error = failure.error
      renewal.lastError = error
      next.counters[slot, default: SlotCounters()].transientFailures += 1
      let delay = renewalRetryDelay(
        failures: renewal.attempts, initial: configuration.retryInitial, maximum: configuration.retryMax,
        jitter: jitter, retryAfter: failure.retryAfter)
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
    case .permanent:
      let error = failure.error
      renewal.lastError = error
      renewal.nextAttemptAt = nil
      next.counters[slot, default: SlotCounters()].permanentFailures += 1
      if !renewal.alertRaised {
        renewal.alertRaised = true
        events.append(manualActivationRequired(slot: slot, renewal: renewal))
      }
    }
    next[slot].renewal = renewal
    return commit(next, events: events, result: .success(TimeProcessed()), now: now)
  }
}
