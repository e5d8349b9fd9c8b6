import LicenseCore

extension LicenseEngine {
  /// The renewal attempt the engine has under way in `slot` (ahead of expiry or at it, as
  /// `ahead` says) ended with `outcome`: the request is the one the engine made (as the
  /// runtime keeps it); with none under way, a request of that kind that nobody is waiting
  /// for (the engine must ignore its answer).
  public func attemptEnded(
    slot: Slot, _ outcome: ActivationOutcome, ahead: Bool = false, jitter: Double = 0, now: Timestamp,
    state: LicenseState
  ) -> Decision<TimeProcessed> {
    let request =
      interruptedAttempts(state).first { $0.slot == slot && $0.kind.isAhead == ahead }
      ?? ActivationRequest(
        slot: slot, code: ActivationCode("STALE-STALE-STALE-STALE")!, currentSerial: "",
        attempt: 1, kind: ahead ? .ahead(currentExpiresAt: Timestamp(microseconds: 0)) : .atExpiry)
    return activationFinished(request, outcome: outcome, jitter: jitter, now: now, state: state)
  }

  /// ``attemptEnded(slot:_:ahead:jitter:now:state:)`` with the server's key.
  public func attemptSucceeded(
    slot: Slot, key: String, ahead: Bool = false, now: Timestamp, state: LicenseState
  ) -> Decision<TimeProcessed> {
    attemptEnded(slot: slot, .key(key), ahead: ahead, now: now, state: state)
  }

  /// ``attemptEnded(slot:_:ahead:jitter:now:state:)`` with a failure.
  public func attemptFailed(
    slot: Slot, failure: ActivationFailure, ahead: Bool = false, jitter: Double, now: Timestamp,
    state: LicenseState
  ) -> Decision<TimeProcessed> {
    attemptEnded(slot: slot, .failure(failure), ahead: ahead, jitter: jitter, now: now, state: state)
  }
}

extension LicenseState {
  /// Edits the renewal ahead of a held slot (nil removes it, as in a state written before
  /// C6): for tests that start from a state an older version, or a person, wrote.
  public mutating func editAhead(_ slot: Slot, _ edit: (inout AheadRenewal?) -> Void) {
    guard case .held(var held)? = self[slot] else { return }
    var ahead = held.ahead
    edit(&ahead)
    held.successor = ahead.map(Successor.renewingAhead) ?? (held.ahead == nil ? held.successor : .none)
    self[slot] = .held(held)
  }
}
