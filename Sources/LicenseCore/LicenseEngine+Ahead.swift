/// Renewal ahead of expiry (rule C6): when it applies, the window of the first request and
/// the instant drawn in it, and what a key obtained ahead must be. The attempts and their
/// outcomes are the renewal pipeline's (LicenseEngine+Renewal.swift).
extension LicenseEngine {
  /// Whether a held slot renews its active key ahead: a code-mode active key, no reserve (an
  /// operator's reserve takes precedence), nothing obtained yet, and C6 turned on.
  public func renewsAhead(_ held: HeldSlot) -> Bool {
    guard configuration.renewBefore.microseconds > 0, held.active.activationCode != nil else { return false }
    switch held.successor {
    case .none, .renewingAhead: return true
    case .reserve, .pending: return false
    }
  }

  /// The state with a renewal-ahead record for every held slot that needs one (drawn once
  /// per key: the record lives beside the key and goes with it), and none for a slot that no
  /// longer does (C6 turned off).
  func withAheadRecords(_ state: LicenseState, now: Timestamp) -> LicenseState {
    var next = state
    for (slot, held) in state.heldSlots {
      var updated = held
      switch (renewsAhead(held), held.successor) {
      case (true, .none):
        updated.successor = .renewingAhead(
          AheadRenewal(draw: Self.draw(stateID: state.stateID, serial: held.active.serial), since: now))
      case (false, .renewingAhead):
        updated.successor = .none
      default:
        continue
      }
      next[slot] = .held(updated)
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

  /// When the slot's next attempt ahead is due; nil when none is (not held, stopped, under
  /// way, or no renewal ahead).
  public func aheadAttemptDue(_ slot: SlotState?) -> Timestamp? { slot?.held.flatMap(aheadAttemptDue) }

  /// When the held slot's next attempt ahead is due; nil when none is (stopped, under way,
  /// or no renewal ahead).
  public func aheadAttemptDue(_ held: HeldSlot) -> Timestamp? {
    guard let ahead = held.ahead else { return nil }
    switch ahead.attempts.schedule {
    case .atDraw: return firstAheadAttempt(ahead, expiresAt: held.active.expiresAt)
    case .due(let at): return at
    case .underWay, .stopped: return nil
    }
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

  /// The attempts ahead that are due at `now`, marked as under way in `next` (one durable
  /// write before the request, as at expiry).
  func startDueAheadAttempts(now: Timestamp, in next: inout LicenseState) -> [ActivationRequest] {
    var requests: [ActivationRequest] = []
    for (slot, held) in next.heldSlots {
      guard let due = aheadAttemptDue(held), due <= now, now < held.active.expiresAt,
        let code = held.active.activationCode, var ahead = held.ahead
      else { continue }
      ahead.attempts.schedule = .underWay(since: now)
      var updated = held
      updated.successor = .renewingAhead(ahead)
      next[slot] = .held(updated)
      requests.append(
        aheadRequest(slot: slot, code: code, active: held.active, attempt: ahead.attempts.failures + 1))
    }
    return requests
  }

  func aheadRequest(slot: Slot, code: ActivationCode, active: InstalledKey, attempt: Int) -> ActivationRequest
  {
    ActivationRequest(
      slot: slot, code: code, currentSerial: active.serial, attempt: attempt,
      kind: .ahead(currentExpiresAt: active.expiresAt))
  }

  /// Whether `text` continues the licence of `active` (C6): A1 (signature, product, format,
  /// not expired), the same slot and scheme (A2), no trial after a paid key (A5), valid at the
  /// active key's `exp` at the latest and ending after it. The reason when it does not.
  func continuation(_ text: String, of active: InstalledKey, now: Timestamp) -> Result<
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
}

/// Why a key obtained ahead does not continue the licence.
struct ContinuationProblem: Error, CustomStringConvertible {
  var description: String
  init(_ description: String) { self.description = description }
}
