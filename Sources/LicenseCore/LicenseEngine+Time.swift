/// Time: promotion and expiry at `exp` (P1–P6), EXPIRING_SOON (W1), clock steps (T1).
extension LicenseEngine {
  /// Time has reached `now`: promotes reserves whose active key expired (P1, P3–P5), marks
  /// slots expired (P4, P6), and logs due EXPIRING_SOON warnings (W1). Idempotent: calling it
  /// again at the same instant, or after a crash replay, finds nothing left to do.
  public func timeReached(now: Timestamp, state: LicenseState) -> Decision<TimeProcessed> {
    timeReached(now: now, state: state, lateBecause: .downtime)
  }

  /// Why a promotion can come after `exp`: the agent was not running, or the wall clock was
  /// stepped past it (the words of KEY_PROMOTED differ; the delay is the same measure).
  enum Lateness { case downtime, clockStep }

  func timeReached(now: Timestamp, state: LicenseState, lateBecause cause: Lateness) -> Decision<
    TimeProcessed
  > {
    // C6: a key the agent has not drawn for yet (an older state file) is drawn for now.
    var next = withAheadRecords(state, now: now)
    var events: [JournalEvent] = []
    var requests: [ActivationRequest] = []
    for slot in state.slotsInUse {
      guard let active = next[slot].active, active.expiresAt <= now else { continue }
      if let reserve = next[slot].reserve, reserve.expiresAt > now {
        // P1: the reserve becomes active; P5: schedules follow it.
        let (fields, late) = promote(reserve, after: active, slot: slot, now: now, cause: cause, in: &next)
        events.append(
          JournalEvent(
            .keyPromoted,
            message:
              "Reserve key \(reserve.serial) is now the active \(slot.rawValue) key: \(active.serial) expired at \(active.expiresAt)\(late). The new key expires at \(reserve.expiresAt); add the next reserve before then.",
            fields: fields))
      } else if let pending = next[slot].pending, pending.expiresAt > now {
        // C6: the key obtained ahead takes over as a reserve does (P1, P3, P5).
        events.append(
          promotePending(slot: slot, active: active, pending: pending, now: now, cause: cause, in: &next))
      } else if let code = active.activationCode {
        // C2: no reserve, but a code: renew at once, the first attempt at the instant of
        // expiry (in this same decision: one durable write before the first request). An
        // alert already raised ahead (a permanent refusal) is not raised again. A key
        // obtained ahead that has itself expired (the agent was down, or the clock stepped,
        // past its whole period) is not promoted (P4) but is the licence's latest key: the
        // renewal continues from it, so that the server gives the period after it, not the
        // same one again; and the journal says so (RESERVE_DROPPED, reason `expired`).
        let ahead = next[slot].ahead
        let last = next[slot].pending ?? active
        if let pending = next[slot].pending {
          events.append(expiredPendingDropped(slot: slot, active: active, pending: pending))
        }
        next[slot] = SlotState(
          expired: ExpiredKey(serial: last.serial, expiresAt: last.expiresAt, scheme: last.claims.scheme),
          renewal: RenewalState(
            code: code, expiredSerial: last.serial, expiredAt: last.expiresAt, nextAttemptAt: nil,
            lastError: ahead?.lastError, alertRaised: ahead?.alertRaised ?? false, attemptStartedAt: now))
        requests.append(ActivationRequest(slot: slot, code: code, currentSerial: last.serial, attempt: 1))
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
    requests += startDueAheadAttempts(now: now, in: &next)
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
      return Decision(state: state, actions: [.wake(nextWake(state))], result: .success(TimeProcessed()))
    }
    var decision = commit(next, events: events, result: .success(TimeProcessed()), now: now)
    decision.actions += requests.map(Action.activate)
    return decision
  }

  /// The wall clock was stepped by `deltaMicroseconds` (T1): logs CLOCK_CHANGED and
  /// re-evaluates at once. A backward step undoes nothing.
  public func clockChanged(deltaMicroseconds: Int64, now: Timestamp, state: LicenseState) -> Decision<
    TimeProcessed
  > {
    let direction = deltaMicroseconds >= 0 ? "forward" : "backward"
    let event = JournalEvent(
      .clockChanged,
      message:
        "The system clock was stepped \(direction) by \(TimeSpan(microseconds: deltaMicroseconds).inWords); licence deadlines were re-evaluated at once. If the step was not intended, check time synchronisation (timedatectl).",
      fields: [.init("LICENSE_CLOCK_DELTA_USEC", String(deltaMicroseconds))])
    // Retries keep their delay: a changed retry instant is a change of state, persisted
    // even when nothing else is due (else the agent's timer and its state would disagree).
    let shifted = retriesKeepingTheirDelay(state, after: deltaMicroseconds)
    var decision = timeReached(now: now, state: shifted, lateBecause: .clockStep)
    if decision.persistedTransition == nil && shifted != state {
      decision = commit(shifted, events: [], result: .success(TimeProcessed()), now: now)
    }
    decision.actions.insert(.emit(event), at: decision.persistedTransition == nil ? 0 : 1)
    return decision
  }

  /// A retry's instant is a delay after a failure, written as a wall-clock instant: after a
  /// backward step it would wait the whole step on top of its delay (scripts/vm-proof: a
  /// renewal retrying every few seconds made no attempt for as long as the guest ran after
  /// a 2-hour step back). Retries keep the delay they had left: their instants move with
  /// the clock. Deadlines that are instants by nature (`exp`, the alert delay after `exp`,
  /// the window of renewal ahead) do not move. A forward step makes retries due at once,
  /// which `timeReached` handles.
  func retriesKeepingTheirDelay(_ state: LicenseState, after delta: Int64) -> LicenseState {
    guard delta < 0 else { return state }
    var next = state
    let shift = TimeSpan(microseconds: delta)
    for (slot, current) in state.slots {
      if let due = current.renewal?.nextAttemptAt { next[slot].renewal?.nextAttemptAt = due + shift }
      if let due = current.ahead?.nextAttemptAt { next[slot].ahead?.nextAttemptAt = due + shift }
    }
    return next
  }

  /// P1 for `successor` (the reserve, or the pending renewal of C6): it becomes the active
  /// key at `now` (P5: schedules follow it), counted with its delay from `active`'s expiry.
  /// KEY_PROMOTED's fields, and the words saying how late the promotion is, if it is.
  func promote(
    _ successor: InstalledKey, after active: InstalledKey, slot: Slot, now: Timestamp, cause: Lateness,
    in next: inout LicenseState
  ) -> (fields: [JournalEvent.Field], late: String) {
    let lateness = now.microseconds(since: active.expiresAt)
    var promoted = successor
    promoted.promotedAt = now
    next[slot] = SlotState(active: promoted, warned: passedThresholds(of: promoted.expiresAt, at: now))
    next.counters[slot, default: SlotCounters()].promotions += 1
    next.counters[slot, default: SlotCounters()].lastPromotionDelayMicroseconds = lateness
    var fields = keyFields(slot: slot, successor.key)
    fields.append(.init("LICENSE_PREVIOUS_SERIAL", active.serial))
    fields.append(.init("LICENSE_DELAY_USEC", String(lateness)))
    let words = TimeSpan(microseconds: lateness).inWords
    let late =
      lateness < 1_000_000
      ? ""
      : cause == .downtime
        ? " (the agent was not running at expiry: \(words) late)"
        : " (the system clock was stepped past the expiry: \(words) after it)"
    return (fields, late)
  }

  /// Thresholds already reached at `now` for a key expiring at `expiry` (never logged late).
  func passedThresholds(of expiry: Timestamp, at now: Timestamp) -> [String] {
    configuration.warningThresholds.filter { expiry - $0 <= now }.map(\.description)
  }
}
