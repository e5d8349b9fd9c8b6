/// Time: promotion and expiry at `exp` (P1–P6), EXPIRING_SOON (W1), clock steps (T1).
extension LicenseEngine {
  /// Time has reached `now`: promotes reserves whose active key expired (P1, P3–P5), marks
  /// slots expired (P4, P6), and logs due EXPIRING_SOON warnings (W1). Idempotent: calling it
  /// again at the same instant, or after a crash replay, finds nothing left to do.
  public func timeReached(now: Timestamp, state: LicenseState) -> Decision<TimeProcessed> {
    timeReached(now: now, state: state, lateBecause: .downtime)
  }

  func timeReached(now: Timestamp, state: LicenseState, lateBecause cause: Lateness) -> Decision<
    TimeProcessed
  > {
    // C6: a key the agent has not drawn for yet (an older state file) is drawn for now.
    var next = withAheadRecords(state, now: now)
    // B2: a kept list's block not yet applied (a state an older version wrote) is applied
    // now, its grace from when the agent learned of it.
    var events: [LicenseEvent] = applyingBlocks(&next, now: now)
    var requests: [ActivationRequest] = []
    for (slot, held) in next.heldSlots where held.endsAt <= now {
      let active = held.active
      // B2: a blocked key counts as expired at the end of its grace.
      let ended = KeyRef(serial: active.serial, expiresAt: held.endsAt)
      let notYetValid = held.successorKey.flatMap {
        $0.expiresAt > now && $0.claims.notBefore > now ? $0 : nil
      }
      if let successor = notYetValid, active.activationCode == nil {
        // B2: the grace ended before what takes over is valid: the slot is expired until
        // its `nbf` (logged once), when it takes over. (With an activation code, the agent
        // renews at once instead, below.)
        guard !held.isLapsed else { continue }
        var lapsed = held
        lapsed.blocked?.lapsedAt = now
        next[slot] = .held(lapsed)
        events.append(
          .licenseExpired(
            LicenseExpired(
              slot: slot, key: ended, graceEnded: held.blocked != nil,
              takesOverLater: KeyRef(serial: successor.serial, expiresAt: successor.claims.notBefore))))
        continue
      }
      switch held.successor {
      case .reserve(let reserve) where reserve.expiresAt > now:
        // P1: the reserve becomes active; P5: schedules follow it.
        events.append(
          .keyPromoted(
            promote(reserve, .reserve, after: held, slot: slot, now: now, cause: cause, in: &next)))
      case .pending(let pending) where pending.expiresAt > now:
        // C6: the key obtained ahead takes over as a reserve does (P1, P3, P5).
        events.append(
          .keyPromoted(
            promote(
              pending, .pending(codeHint: pending.activationCode?.hint), after: held, slot: slot, now: now,
              cause: cause, in: &next)))
      default:
        if let code = active.activationCode {
          // C2: no reserve, but a code: renew at once, the first attempt at the instant of
          // expiry (in this same decision: one durable write before the first request). An
          // alert already raised ahead (a permanent refusal) is not raised again. A key
          // obtained ahead that has itself expired (the agent was down, or the clock stepped,
          // past its whole period) is not promoted (P4) but is the licence's latest key: the
          // renewal continues from it, so that the server gives the period after it, not the
          // same one again; and the journal says so (RESERVE_DROPPED, reason `expired`).
          // B2: the same at the end of a blocked key's grace; a successor valid only after it
          // does not keep the slot waiting: the renewal starts now, and the journal says why
          // that key is dropped.
          let expiredPending = notYetValid == nil ? held.pending : nil
          let last = expiredPending ?? active
          if let pending = expiredPending {
            events.append(
              .reserveDropped(
                ReserveDropped(
                  slot: slot, key: KeyRef(pending),
                  reason: .expiredBeforeTakeover(
                    active: KeyRef(active), codeHint: pending.activationCode?.hint))))
          } else if let waiting = notYetValid {
            events.append(
              .reserveDropped(
                ReserveDropped(
                  slot: slot, key: KeyRef(waiting),
                  reason: .notValidAtGraceEnd(active: ended, validFrom: waiting.claims.notBefore))))
          }
          let ahead = held.ahead?.attempts
          next[slot] = .lapsed(
            LapsedSlot(
              expired: expiredPending.map(ExpiredKey.init) ?? held.endedKey,
              renewal: Renewal(
                code: code,
                attempts: RenewalAttempts(
                  schedule: .underWay(since: now), lastError: ahead?.lastError,
                  alertRaised: ahead?.alertRaised ?? false))))
          requests.append(
            ActivationRequest(slot: slot, code: code, currentSerial: last.serial, attempt: 1, kind: .atExpiry)
          )
        } else {
          // P4 / P6: nothing valid takes over; the slot is expired (already said when a
          // blocked key's grace ended with a successor valid only later, since removed).
          next[slot] = .lapsed(LapsedSlot(expired: held.endedKey))
          if !held.isLapsed {
            events.append(
              .licenseExpired(
                LicenseExpired(
                  slot: slot, key: ended, expiredReserve: held.successorKey.map(KeyRef.init),
                  graceEnded: held.blocked != nil)))
          }
        }
      }
    }
    for slot in next.slotsInUse {
      guard case .lapsed(var lapsed)? = next[slot], var renewal = lapsed.renewal else { continue }
      let expired = KeyRef(serial: lapsed.expired.serial, expiresAt: lapsed.expired.expiresAt)
      // C4: not renewed within the alert delay: alert, once.
      if !renewal.attempts.alertRaised && now >= expired.expiresAt + configuration.alertAfter {
        renewal.attempts.alertRaised = true
        events.append(
          .manualActivationRequired(
            manualActivation(slot, expired, renewal.attempts, renewal.code, ahead: false)))
      }
      // A retry that is due.
      if let due = renewal.attempts.dueAt, due <= now {
        renewal.attempts.schedule = .underWay(since: now)
        requests.append(
          ActivationRequest(
            slot: slot, code: renewal.code, currentSerial: expired.serial,
            attempt: renewal.attempts.failures + 1,
            kind: .atExpiry))
      }
      lapsed.renewal = renewal
      next[slot] = .lapsed(lapsed)
    }
    requests += startDueAheadAttempts(now: now, in: &next)
    for (slot, held) in next.heldSlots where !held.isLapsed {
      let due = configuration.warningThresholds
        .filter { held.endsAt - $0 <= now && !held.warned.contains($0) }
        .sorted()
      guard let mostUrgent = due.first else { continue }
      // After downtime several thresholds may be due at once: log only the most urgent one.
      var updated = held
      updated.warned.formUnion(due)
      next[slot] = .held(updated)
      events.append(.expiringSoon(expiringSoon(slot: slot, held: updated, threshold: mostUrgent, now: now)))
    }
    // N2: expected consumers that did not confirm the active key in time.
    events += reportingLateConsumers(&next, now: now)
    if next == state { return .unchanged(state) }
    var decision = commit(next, events: events, result: .success(TimeProcessed()), now: now)
    decision.actions += requests.map(Action.activate)
    return decision
  }

  /// The wall clock was stepped by `deltaMicroseconds` (T1): logs CLOCK_CHANGED and
  /// re-evaluates at once. A backward step undoes nothing.
  public func clockChanged(deltaMicroseconds: Int64, now: Timestamp, state: LicenseState) -> Decision<
    TimeProcessed
  > {
    // Retries keep their delay: a changed retry instant is a change of state, persisted
    // even when nothing else is due (else the agent's timer and its state would disagree).
    let shifted = confirmationsKeepingTheirDelay(
      retriesKeepingTheirDelay(state, after: deltaMicroseconds), after: deltaMicroseconds)
    var decision = timeReached(now: now, state: shifted, lateBecause: .clockStep)
    if decision.persistedTransition == nil && shifted != state {
      decision = commit(shifted, events: [], result: .success(TimeProcessed()), now: now)
    }
    decision.actions.insert(
      .emit(.clockChanged(deltaMicroseconds: deltaMicroseconds), transitionID: nil),
      at: decision.persistedTransition == nil ? 0 : 1)
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
      switch current {
      case .lapsed(var lapsed):
        guard let due = lapsed.renewal?.attempts.dueAt else { continue }
        lapsed.renewal?.attempts.schedule = .due(due + shift)
        next[slot] = .lapsed(lapsed)
      case .held(var held):
        guard case .renewingAhead(var ahead) = held.successor, let due = ahead.attempts.dueAt else {
          continue
        }
        ahead.attempts.schedule = .due(due + shift)
        held.successor = .renewingAhead(ahead)
        next[slot] = .held(held)
      }
    }
    return next
  }

  /// P1 for `successor` (the reserve, or the pending key of C6): it becomes the active key
  /// at `now` (P5: schedules follow it), counted with its delay from `active`'s expiry.
  func promote(
    _ successor: InstalledKey, _ source: KeyPromoted.Source, after held: HeldSlot, slot: Slot,
    now: Timestamp, cause: Lateness, in next: inout LicenseState
  ) -> KeyPromoted {
    // From the instant it was due: the former key's end (its `exp`, or its grace's end,
    // B2), or the successor's `nbf` when that came later (B2).
    let due = max(held.endsAt, successor.claims.notBefore)
    let lateness = now.microseconds(since: due)
    let active = KeyRef(serial: held.active.serial, expiresAt: held.endsAt)
    var promoted = successor
    promoted.promotedAt = now
    next[slot] = .held(HeldSlot(active: promoted, warned: passedThresholds(of: promoted.expiresAt, at: now)))
    next.counters[slot, default: SlotCounters()].promotions += 1
    next.counters[slot, default: SlotCounters()].lastPromotionDelayMicroseconds = lateness
    var event = KeyPromoted(
      slot: slot, key: KeyRef(successor), source: source, previous: active, lateness: lateness, cause: cause)
    event.unitsShort = next.unitsShort(successor.key, slot: slot)  // U3, at takeover
    event.graceEnded = held.blocked != nil
    return event
  }

  /// EXPIRING_SOON for the held slot's active key at `threshold`.
  func expiringSoon(slot: Slot, held: HeldSlot, threshold: TimeSpan, now: Timestamp) -> ExpiringSoon {
    let active = held.active
    return ExpiringSoon(
      slot: slot, key: KeyRef(serial: active.serial, expiresAt: held.endsAt), threshold: threshold,
      left: TimeSpan(microseconds: held.endsAt.microseconds(since: now)), then: whatTakesOver(held))
  }

  /// What happens at the end of the held slot's active key, in the words of EXPIRING_SOON
  /// and KEY_BLOCKED.
  func whatTakesOver(_ held: HeldSlot) -> ExpiringSoon.Then {
    let active = held.active
    let then: ExpiringSoon.Then
    switch held.successor {
    case .reserve(let reserve): then = .reserve(serial: reserve.serial)
    case .pending(let pending): then = .pending(serial: pending.serial)
    case .renewingAhead, .none:
      if active.activationCode == nil {
        then = .nothing
      } else if let due = aheadAttemptDue(held), due < held.endsAt {
        then = .renewAhead(nextRequestAt: due)
      } else {
        then = .renewAtExpiry
      }
    }
    return then
  }

  /// Thresholds already reached at `now` for a key expiring at `expiry` (never logged late).
  func passedThresholds(of expiry: Timestamp, at now: Timestamp) -> Set<TimeSpan> {
    Set(configuration.warningThresholds.filter { expiry - $0 <= now })
  }
}
