/// Renewal ahead of expiry (rule C6): the first request at an instant drawn once per key in
/// `[exp - renew-before, exp - renew-before + renew-spread]`, retries inside the window with
/// no alert, and the key obtained stored as the slot's pending renewal, which takes over at
/// `exp` as a reserve does.
extension LicenseEngine {
  /// Whether `slot` renews its active key ahead: a code-mode active key, no reserve (an
  /// operator's reserve takes precedence), nothing obtained yet, and C6 turned on.
  public func renewsAhead(_ slot: SlotState) -> Bool {
    configuration.renewBefore.microseconds > 0 && slot.active?.activationCode != nil && slot.reserve == nil
      && slot.pending == nil
  }

  /// The state with a renewal-ahead record for every slot that needs one (drawn once per key:
  /// a record for the same key is kept), and none for a slot that no longer does.
  func withAheadRecords(_ state: LicenseState, now: Timestamp) -> LicenseState {
    var next = state
    for (slot, current) in state.slots {
      if renewsAhead(current), let active = current.active {
        if current.ahead?.serial != active.serial {
          next[slot].ahead = AheadRenewal(
            serial: active.serial, draw: Self.draw(stateID: state.stateID, serial: active.serial), since: now)
        }
      } else if current.ahead != nil {
        next[slot].ahead = nil
      }
    }
    return next
  }

  /// The window of the first request for a key expiring at `expiry`, first seen at `since`:
  /// `[exp - renew-before, exp - renew-before + renew-spread]` (the spread never reaching
  /// `exp`); what is left of it when the key arrived inside it; and, for a key that arrived
  /// after it (a short key, or an agent upgraded late), the first half of the key's remaining
  /// life, at most `renew-spread` long, so that a fleet upgraded at once does not ask at once.
  public func aheadWindow(expiresAt expiry: Timestamp, since: Timestamp) -> (from: Timestamp, to: Timestamp) {
    let before = configuration.renewBefore
    let start = expiry - before
    let end = start + TimeSpan(microseconds: min(configuration.renewSpread.microseconds, before.microseconds))
    if since <= start { return (start, end) }
    if since < end { return (since, end) }
    let half = max(expiry.microseconds(since: since), 0) / 2
    return (since, since + TimeSpan(microseconds: min(configuration.renewSpread.microseconds, half)))
  }

  /// The drawn instant of the first request of `ahead` for the active key expiring at `expiry`.
  public func firstAheadAttempt(_ ahead: AheadRenewal, expiresAt expiry: Timestamp) -> Timestamp {
    let window = aheadWindow(expiresAt: expiry, since: ahead.since)
    let width = Double(window.to.microseconds(since: window.from))
    return window.from + TimeSpan(microseconds: Int64((width * min(max(ahead.draw, 0), 1)).rounded(.down)))
  }

  /// When the slot's next attempt ahead is due; nil when none is (stopped, under way, no record).
  public func aheadAttemptDue(_ slot: SlotState) -> Timestamp? {
    guard let ahead = slot.ahead, let active = slot.active else { return nil }
    return aheadAttemptDue(ahead, active: active)
  }

  /// When the next attempt of `ahead` for the active key `active` is due (nil: none is).
  public func aheadAttemptDue(_ ahead: AheadRenewal, active: InstalledKey) -> Timestamp? {
    guard ahead.serial == active.serial, !ahead.stopped, ahead.attemptStartedAt == nil else { return nil }
    return ahead.nextAttemptAt ?? firstAheadAttempt(ahead, expiresAt: active.expiresAt)
  }

  /// A uniform draw in [0, 1) for `serial` on the SVM whose state is `stateID` (random per
  /// SVM): a pure function, so that the engine stays deterministic and the fleet simulation
  /// runs the same code; persisted in the record all the same (the rule's promise does not
  /// depend on this function staying the same across versions).
  public static func draw(stateID: String, serial: String) -> Double {
    var hash: UInt64 = 0xcbf2_9ce4_8422_2325  // FNV-1a
    for byte in stateID.utf8 + [0] + serial.utf8 {
      hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01b3
    }
    // SplitMix64's finaliser spreads FNV's weak low bits over the whole word.
    hash = (hash ^ (hash >> 30)) &* 0xbf58_476d_1ce4_e5b9
    hash = (hash ^ (hash >> 27)) &* 0x94d0_49bb_1331_11eb
    hash ^= hash >> 31
    return Double(hash >> 11) / Double(UInt64(1) << 53)
  }

  /// The delay before the next attempt ahead after `failures` failures, `timeLeft` before `exp`:
  /// C3's exponential backoff with full jitter, but capped at the larger of `retry-max` and a
  /// sixteenth of the time left, because nothing is urgent days before `exp` and a fleet
  /// under an outage must not hammer the server. `not_yet_available` waits `Retry-After` (the
  /// same instant for a whole fleet) plus a random share of a quarter of the time left (at
  /// least `retry-max`), so that the opening of the next period does not become a thundering
  /// herd; a transient failure waits at least `Retry-After` (C3).
  public func aheadRetryDelay(
    failures: Int, timeLeft: TimeSpan, jitter: Double, retryAfter: TimeSpan?, notYetAvailable: Bool
  ) -> TimeSpan {
    let cap = TimeSpan(microseconds: max(configuration.retryMax.microseconds, timeLeft.microseconds / 16))
    if notYetAvailable {
      // Spread over a quarter of the time left: measured with the fleet simulation, a
      // sixteenth still made a peak at the opening (100,000 SVMs, period opened 5 days
      // ahead: 12 requests in the busiest second, 3.1/s in the busiest minute).
      let width = max(configuration.retryMax.microseconds, timeLeft.microseconds / 4)
      let spread = Int64((Double(width) * min(max(jitter, 0), 1)).rounded(.down))
      return TimeSpan(microseconds: saturatingSum(retryAfter?.microseconds ?? 0, spread))
    }
    return renewalRetryDelay(
      failures: failures, initial: configuration.retryInitial, maximum: cap, jitter: jitter,
      retryAfter: retryAfter)
  }

  // MARK: - Time

  /// The attempts ahead that are due at `now`, marked as under way in `next` (one durable
  /// write before the request, as at expiry).
  func startDueAheadAttempts(now: Timestamp, in next: inout LicenseState) -> [ActivationRequest] {
    var requests: [ActivationRequest] = []
    for slot in next.slotsInUse {
      guard let due = aheadAttemptDue(next[slot]), due <= now, let active = next[slot].active,
        now < active.expiresAt, let code = active.activationCode, var ahead = next[slot].ahead
      else { continue }
      ahead.attemptStartedAt = now
      next[slot].ahead = ahead
      requests.append(aheadRequest(slot: slot, code: code, active: active, attempt: ahead.attempts + 1))
    }
    return requests
  }

  func aheadRequest(slot: Slot, code: ActivationCode, active: InstalledKey, attempt: Int) -> ActivationRequest
  {
    ActivationRequest(
      slot: slot, code: code, currentSerial: active.serial, attempt: attempt, ahead: true,
      currentExpiresAt: active.expiresAt)
  }

  /// P1 for a pending renewal: at the active key's `exp` it becomes the active key (keeping
  /// the code, so that it renews itself in turn), with KEY_PROMOTED.
  func promotePending(
    slot: Slot, active: InstalledKey, pending: InstalledKey, now: Timestamp, cause: Lateness,
    in next: inout LicenseState
  ) -> JournalEvent {
    let (fields, late) = promote(pending, after: active, slot: slot, now: now, cause: cause, in: &next)
    return JournalEvent(
      .keyPromoted,
      message:
        "\(renewedAhead(pending)), is now the active \(slot.rawValue) key: \(active.serial) expired at \(active.expiresAt)\(late). It expires at \(pending.expiresAt); the agent will renew it ahead in turn.",
      fields: fields)
  }

  /// RESERVE_DROPPED for a key obtained ahead that expired before it could take over (P4).
  func expiredPendingDropped(slot: Slot, active: InstalledKey, pending: InstalledKey)
    -> JournalEvent
  {
    JournalEvent(
      .reserveDropped,
      message:
        "\(renewedAhead(pending)), had itself expired at \(pending.expiresAt) before it could take over from \(active.serial) (expired at \(active.expiresAt)); it is not promoted. The agent renews from \(pending.serial) with the activation code now.",
      fields: keyFields(slot: slot, pending.key) + [.init("LICENSE_REASON", "expired")])
  }

  /// How KEY_PROMOTED and RESERVE_DROPPED name a pending renewal: "Key X, renewed ahead
  /// with the activation code (…hint)".
  private func renewedAhead(_ pending: InstalledKey) -> String {
    "Key \(pending.serial), renewed ahead with the activation code\(pending.activationCode.map { " (…\($0.hint))" } ?? "")"
  }

  // MARK: - Outcomes

  /// The activation server gave `text` ahead of the expiry of `slot`'s active key: checked
  /// (it must continue the licence) and stored as the pending renewal, announced with
  /// ACTIVATION_RENEWED. A key that does not continue the licence is `bad_key_from_server`.
  func aheadSucceeded(slot: Slot, key text: String, now: Timestamp, state: LicenseState) -> Decision<
    TimeProcessed
  > {
    guard let ahead = state[slot].ahead, ahead.attemptStartedAt != nil, let active = state[slot].active,
      active.serial == ahead.serial, let code = active.activationCode
    else {
      // The slot changed meanwhile (a reserve, a new active key, the expiry): the answer is
      // for a question nobody asks any more.
      return Decision(state: state, actions: [.wake(nextWake(state))], result: .success(TimeProcessed()))
    }
    let key: LicenseKey
    switch continuation(text, of: active, now: now, state: state) {
    case .failure(let reason):
      return aheadFailed(
        slot: slot, failure: .permanent(error: "bad_key_from_server (\(reason))"), jitter: 0, now: now,
        state: state)
    case .success(let checked): key = checked
    }
    var next = state
    next[slot].ahead = nil
    next[slot].pending = InstalledKey(key: key, origin: .activationCode, addedAt: now, activationCode: code)
    next.counters[slot, default: SlotCounters()].renewed += 1
    let fields =
      renewedFields(slot: slot, key, previous: active.serial, attempt: ahead.attempts + 1, code: code)
      + [.init("LICENSE_AHEAD", "1")]
    let cleared = ahead.alertRaised ? " The manual-activation alert is cleared." : ""
    let event = JournalEvent(
      .activationRenewed,
      message:
        "The \(slot.rawValue) licence was renewed ahead of its expiry with its activation code (…\(code.hint)): key \(key.serial), valid from \(key.claims.notBefore) until \(key.claims.expiresAt), takes over when \(active.serial) expires at \(active.expiresAt) (attempt \(ahead.attempts + 1)).\(cleared)",
      fields: fields)
    return commit(next, events: [event], result: .success(TimeProcessed()), now: now)
  }

  /// Whether `text` continues the licence of `active` (C6): A1 (signature, product, format,
  /// not expired), the same slot and scheme (A2), no trial after a paid key (A5), valid at the
  /// active key's `exp` at the latest and ending after it. The reason when it does not.
  func continuation(_ text: String, of active: InstalledKey, now: Timestamp, state: LicenseState) -> Result<
    LicenseKey, ContinuationProblem
  > {
    let key: LicenseKey
    do {
      key = try KeyParser.verify(text, trust: trust)
    } catch {
      return .failure(ContinuationProblem("A1 \(error.code)"))
    }
    let claims = key.claims
    let current = active.claims
    if claims.product != configuration.product { return .failure(ContinuationProblem("A1 wrong_product")) }
    if key.slot != active.key.slot {
      return .failure(ContinuationProblem("a key for the \(key.slot.rawValue) slot"))
    }
    if claims.scheme != current.scheme { return .failure(ContinuationProblem("A2 scheme_conflict")) }
    if claims.licenseType == .trial && current.licenseType != .trial {
      return .failure(ContinuationProblem("A5 trial_over_commercial"))
    }
    if key.isSameKey(as: active.key) { return .failure(ContinuationProblem("the active key itself")) }
    if claims.expiresAt <= now { return .failure(ContinuationProblem("A1 expired")) }
    if claims.expiresAt <= current.expiresAt {
      return .failure(
        ContinuationProblem("C6 ends at \(claims.expiresAt), not after the active key (\(current.expiresAt))")
      )
    }
    if claims.notBefore > current.expiresAt {
      return .failure(
        ContinuationProblem(
          "C6 valid only from \(claims.notBefore), after the active key expires (\(current.expiresAt))"))
    }
    return .success(key)
  }

  /// An attempt ahead failed. Transient and `not_yet_available`: retried inside the window
  /// (see ``aheadRetryDelay(failures:timeLeft:jitter:retryAfter:notYetAvailable:)``), no
  /// alert; a retry that would fall at or after `exp` is left to the renewal at expiry.
  /// Permanent: no more attempts ahead, MANUAL_ACTIVATION_REQUIRED at once (the licence will
  /// lapse at `exp` unless a person acts; the agent still tries once at expiry, C2).
  func aheadFailed(
    slot: Slot, failure: ActivationFailure, jitter: Double, now: Timestamp, state: LicenseState
  ) -> Decision<TimeProcessed> {
    guard var ahead = state[slot].ahead, ahead.attemptStartedAt != nil, let active = state[slot].active,
      active.serial == ahead.serial, let code = active.activationCode
    else {
      return Decision(state: state, actions: [.wake(nextWake(state))], result: .success(TimeProcessed()))
    }
    ahead.attempts += 1
    ahead.attemptStartedAt = nil
    var events: [JournalEvent] = []
    var next = state
    let fields = keyFields(slot: slot, active.key)
    switch failure {
    case .transient, .notYetAvailable:
      let (described, retryAfter) = (failure.error, failure.retryAfter)
      let notYet = failure.isNotYetAvailable
      ahead.lastError = described
      let delay = aheadRetryDelay(
        failures: ahead.attempts, timeLeft: TimeSpan(microseconds: active.expiresAt.microseconds(since: now)),
        jitter: jitter, retryAfter: retryAfter, notYetAvailable: notYet)
      let due = now + delay
      if due >= active.expiresAt {
        ahead.stopped = true
        ahead.nextAttemptAt = nil
      } else {
        ahead.nextAttemptAt = due
      }
      // `not_yet_available` is counted with the transient failures (contract §8's results).
      next.counters[slot, default: SlotCounters()].transientFailures += 1
      if !notYet && isLoggedAttempt(ahead.attempts) {
        let nextAttempt = ahead.nextAttemptAt ?? active.expiresAt
        let then =
          ahead.stopped
          ? "no attempt is left before the key expires at \(active.expiresAt): the agent renews at expiry"
          : "the key is valid until \(active.expiresAt) and the next attempt is at \(nextAttempt)"
        events.append(
          JournalEvent(
            .activationAttemptFailed,
            message:
              "Renewing the \(slot.rawValue) licence ahead of its expiry failed (attempt \(ahead.attempts): \(described)); \(then). Nothing is needed yet; if this goes on, check the network path to the activation server.",
            fields: fields + [
              .init("LICENSE_ATTEMPT", String(ahead.attempts)), .init("LICENSE_ERROR", described),
              .init("LICENSE_NEXT_ATTEMPT_AT", nextAttempt.rfc3339), .init("LICENSE_CODE_HINT", code.hint),
              .init("LICENSE_AHEAD", "1"),
            ]))
      }
    case .permanent:
      let error = failure.error
      ahead.lastError = error
      ahead.stopped = true
      ahead.nextAttemptAt = nil
      next.counters[slot, default: SlotCounters()].permanentFailures += 1
      if !ahead.alertRaised {
        ahead.alertRaised = true
        events.append(
          JournalEvent(
            .manualActivationRequired,
            message:
              "MANUAL ACTIVATION REQUIRED: the \(slot.rawValue) licence expires at \(active.expiresAt) (key \(active.serial)) and could not be renewed ahead with the activation code …\(code.hint): \(error). The agent will try once more at expiry. Run `agentctl activate --code-file FILE` with a valid code, or add a reserve key with `agentctl add-key --reserve FILE`, before then.",
            fields: fields + [
              .init("LICENSE_ERROR", error), .init("LICENSE_ATTEMPT", String(ahead.attempts)),
              .init("LICENSE_CODE_HINT", code.hint), .init("LICENSE_AHEAD", "1"),
            ]))
      }
    }
    next[slot].ahead = ahead
    return commit(next, events: events, result: .success(TimeProcessed()), now: now)
  }
}

/// Why a key obtained ahead does not continue the licence.
struct ContinuationProblem: Error, CustomStringConvertible {
  var description: String
  init(_ description: String) { self.description = description }
}
