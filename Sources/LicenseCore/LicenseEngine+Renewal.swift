/// Activation-code mode: the one renewal pipeline, at expiry (C2–C4) and ahead of it (C6).
/// An attempt's outcome comes back through one entry; the bookkeeping (attempts, the next
/// attempt, the last error, the alert, the counters) is written once, and the two renewals
/// differ only by their retry policy (Backoff.swift) and what a key obtained becomes.
extension LicenseEngine {
  /// Attempts that were under way when the agent stopped (a crash): to make again at start.
  public func interruptedAttempts(_ state: LicenseState) -> [ActivationRequest] {
    state.slotsInUse.compactMap { slot in
      switch state[slot] {
      case .held(let held)?:
        guard let ahead = held.ahead, ahead.attempts.isUnderWay, let code = held.active.activationCode else {
          return nil
        }
        return aheadRequest(slot: slot, code: code, active: held.active, attempt: ahead.attempts.failures + 1)
      case .lapsed(let lapsed)?:
        guard let renewal = lapsed.renewal, renewal.attempts.isUnderWay else { return nil }
        return ActivationRequest(
          slot: slot, code: renewal.code, currentSerial: lapsed.expired.serial,
          attempt: renewal.attempts.failures + 1, kind: .atExpiry)
      case nil:
        return nil
      }
    }
  }

  /// The renewal that `request` belongs to, with its attempt under way: the lapsed slot's
  /// renewal at expiry, or the held slot's renewal ahead of the same active key. Nil when
  /// the slot changed meanwhile (an operator added a key, the expiry came): the answer is
  /// for a question nobody asks any more.
  private struct Underway {
    var code: ActivationCode
    var attempts: RenewalAttempts
    /// The key the renewal continues: the expired key, or the active key ahead.
    var current: KeyRef
  }

  private func underway(_ request: ActivationRequest, in state: LicenseState) -> Underway? {
    switch (state[request.slot], request.kind) {
    case (.lapsed(let lapsed)?, .atExpiry):
      guard let renewal = lapsed.renewal, renewal.attempts.isUnderWay else { return nil }
      return Underway(
        code: renewal.code, attempts: renewal.attempts,
        current: KeyRef(serial: lapsed.expired.serial, expiresAt: lapsed.expired.expiresAt))
    case (.held(let held)?, .ahead):
      guard let ahead = held.ahead, ahead.attempts.isUnderWay, held.active.serial == request.currentSerial,
        let code = held.active.activationCode
      else { return nil }
      return Underway(code: code, attempts: ahead.attempts, current: KeyRef(held.active))
    default:
      return nil
    }
  }

  /// Writes a renewal's attempts back into its slot (the slot ``underway(_:in:)`` found).
  private func store(
    _ attempts: RenewalAttempts, for request: ActivationRequest, in state: inout LicenseState
  ) {
    switch state[request.slot] {
    case .lapsed(var lapsed)?:
      lapsed.renewal?.attempts = attempts
      state[request.slot] = .lapsed(lapsed)
    case .held(var held)?:
      guard case .renewingAhead(var ahead) = held.successor else { return }
      ahead.attempts = attempts
      held.successor = .renewingAhead(ahead)
      state[request.slot] = .held(held)
    case nil:
      return
    }
  }

  /// An attempt of `request` ended with `outcome`. A key is checked (A1 at expiry; ahead, it
  /// must continue the licence) and installed as the active key (C2) or stored as the
  /// pending key (C6), announced with ACTIVATION_RENEWED, which clears the alert; a key that
  /// fails is `bad_key_from_server` (permanent). A failure is retried after the renewal's
  /// backoff (`jitter` uniform in [0, 1), given by the caller so that the engine stays
  /// pure), honouring `Retry-After`; permanent: no retry, MANUAL_ACTIVATION_REQUIRED at once.
  public func activationFinished(
    _ request: ActivationRequest, outcome: ActivationOutcome, jitter: Double, now: Timestamp,
    state: LicenseState
  ) -> Decision<TimeProcessed> {
    guard let underway = underway(request, in: state) else { return .unchanged(state) }
    switch outcome {
    case .failure(let failure):
      return failed(request, underway, failure, jitter: jitter, now: now, state: state)
    case .key(let text):
      switch installRenewed(text, request, underway, now: now, state: state) {
      case .success(let decision): return decision
      case .failure(let reason):
        return failed(
          request, underway, .permanent(error: "bad_key_from_server (\(reason))"), jitter: 0, now: now,
          state: state)
      }
    }
  }

  /// A key the server gave: the slot's new active key (at expiry) or its pending key (ahead).
  private func installRenewed(
    _ text: String, _ request: ActivationRequest, _ underway: Underway, now: Timestamp, state: LicenseState
  ) -> Result<Decision<TimeProcessed>, ContinuationProblem> {
    var next = state
    let key: LicenseKey
    var aheadOf: KeyRef?
    switch state[request.slot] {
    case .held(var held)?:
      switch continuation(text, of: held.active, now: now) {
      case .failure(let problem): return .failure(problem)
      case .success(let checked): key = checked
      }
      // B3: a key the server gives that its issuer blocked is bad_key_from_server.
      if let blocked = blockedRefusal(key, rule: .B3, state: state) {
        return .failure(ContinuationProblem(blocked.ruleAndCode))
      }
      held.successor = .pending(InstalledKey(key: key, addedAt: now, activationCode: underway.code))
      next[request.slot] = .held(held)
      aheadOf = KeyRef(held.active)
    case .lapsed?, nil:
      let checked = plan(text, role: .active, replaceScheme: false, now: now, state: state)
      guard case .success(let plan) = checked, plan.added.slot == request.slot, plan.clearSlots.isEmpty else {
        switch checked {
        case .failure(let violation): return .failure(ContinuationProblem(violation.ruleAndCode))
        case .success(let plan):
          return .failure(ContinuationProblem("a key for the \(plan.added.slot.rawValue) slot"))
        }
      }
      key = plan.added.key
      next[request.slot] = .held(
        HeldSlot(
          active: InstalledKey(key: key, addedAt: now, activationCode: underway.code),
          warned: passedThresholds(of: key.claims.expiresAt, at: now)))
    }
    next.counters[request.slot, default: SlotCounters()].renewed += 1
    let event = ActivationRenewed(
      slot: request.slot, key: key, previousSerial: underway.current.serial,
      attempt: underway.attempts.failures + 1, codeHint: underway.code.hint,
      alertCleared: underway.attempts.alertRaised, aheadOf: aheadOf)
    return .success(
      commit(next, events: [.activationRenewed(event)], result: .success(TimeProcessed()), now: now))
  }

  /// The bookkeeping of a failed attempt, the same for both renewals.
  private func failed(
    _ request: ActivationRequest, _ underway: Underway, _ failure: ActivationFailure, jitter: Double,
    now: Timestamp, state: LicenseState
  ) -> Decision<TimeProcessed> {
    var attempts = underway.attempts
    attempts.failures += 1
    attempts.lastError = failure.error
    let ahead = request.kind.isAhead
    var events: [LicenseEvent] = []
    var next = state
    if failure.isPermanent {
      attempts.schedule = .stopped
      next.counters[request.slot, default: SlotCounters()].permanentFailures += 1
    } else {
      // `not_yet_available` is counted with the transient failures (contract §8's results).
      attempts.schedule = retrySchedule(
        request.kind, failures: attempts.failures, failure: failure, jitter: jitter, now: now)
      next.counters[request.slot, default: SlotCounters()].transientFailures += 1
      // Ahead, `not_yet_available` is the vendor's calendar, not a failure worth a line.
      if !(ahead && failure.isNotYetAvailable) && isLoggedAttempt(attempts.failures) {
        events.append(
          .activationAttemptFailed(
            AttemptFailed(
              slot: request.slot, key: underway.current, attempt: attempts.failures,
              error: attempts.lastError ?? "",
              nextAttemptAt: attempts.dueAt ?? underway.current.expiresAt, codeHint: underway.code.hint,
              ahead: ahead, stoppedAhead: attempts.isStopped)))
      }
    }
    // C4: at once on a permanent failure; at expiry also once the alert delay has passed.
    let alertDue =
      failure.isPermanent || (!ahead && now >= underway.current.expiresAt + configuration.alertAfter)
    if alertDue && !attempts.alertRaised {
      attempts.alertRaised = true
      events.append(
        .manualActivationRequired(
          manualActivation(request.slot, underway.current, attempts, underway.code, ahead: ahead)))
    }
    store(attempts, for: request, in: &next)
    return commit(next, events: events, result: .success(TimeProcessed()), now: now)
  }

  /// MANUAL_ACTIVATION_REQUIRED for a renewal (`key`: the expired key, or the active key
  /// ahead); at expiry with no error yet, the alert delay passed without a renewal.
  func manualActivation(
    _ slot: Slot, _ key: KeyRef, _ attempts: RenewalAttempts, _ code: ActivationCode, ahead: Bool
  ) -> ManualActivationRequired {
    ManualActivationRequired(
      slot: slot, key: key,
      error: attempts.lastError ?? "not renewed within \(configuration.alertAfter) of the expiry",
      attempt: attempts.failures, codeHint: code.hint, ahead: ahead, retrying: attempts.dueAt != nil)
  }
}
