/// The retry policies of the two renewals (C3 at expiry, C6 ahead of it) and the rule of
/// which failures are logged: the only things in which the two renewals differ, in one file.

/// The retry delay of renewal attempts (rule C3): exponential backoff with full jitter.
///
/// After the `failures`-th consecutive transient failure, the cap is
/// `min(maximum, initial × 2^(failures−1))` and the delay is `jitter × cap`, with `jitter`
/// uniform in [0, 1) (full jitter spreads a fleet's retries after a shared outage). A
/// `Retry-After` from the server is honoured: the delay is never shorter than it. The first
/// attempt, at the instant of expiry, has no delay and no jitter.
///
/// | failures | cap (initial 5 s, maximum 10 min) |
/// |---|---|
/// | 1 | 5 s |
/// | 2 | 10 s |
/// | 3 | 20 s |
/// | 4 | 40 s |
/// | 5 | 80 s |
/// | 6 | 160 s |
/// | 7 | 320 s |
/// | 8 and more | 600 s (the maximum) |
public func renewalRetryDelay(
  failures: Int, initial: TimeSpan, maximum: TimeSpan, jitter: Double, retryAfter: TimeSpan? = nil
) -> TimeSpan {
  let exponent = min(max(failures - 1, 0), 40)
  let (scaled, overflow) = initial.microseconds.multipliedReportingOverflow(by: Int64(1) << exponent)
  let cap = overflow ? maximum.microseconds : min(scaled, maximum.microseconds)
  let jittered = Int64((Double(cap) * min(max(jitter, 0), 1)).rounded(.down))
  return TimeSpan(microseconds: max(jittered, retryAfter?.microseconds ?? 0))
}

/// Whether the `failures`-th failed attempt is logged as ACTIVATION_ATTEMPT_FAILED: the first
/// five, then the 8th, 16th, 32nd... so that a long outage does not flood the journal
/// (`agentctl status` always shows the current count).
public func isLoggedAttempt(_ failures: Int) -> Bool {
  failures <= 5 || (failures > 0 && failures & (failures - 1) == 0)
}

extension LicenseEngine {
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

  /// Where a renewal's next attempt falls after a failure that is retried (transient, or
  /// `not_yet_available`): at expiry, C3's backoff; ahead, the policy above, and no attempt
  /// at or after the active key's `exp` (the renewal at expiry takes over then).
  func retrySchedule(
    _ kind: RenewalKind, failures: Int, failure: ActivationFailure, jitter: Double, now: Timestamp
  ) -> RenewalAttempts.Schedule {
    switch kind {
    case .atExpiry:
      let delay = renewalRetryDelay(
        failures: failures, initial: configuration.retryInitial, maximum: configuration.retryMax,
        jitter: jitter,
        retryAfter: failure.retryAfter)
      return .due(now + delay)
    case .ahead(let expiry):
      let delay = aheadRetryDelay(
        failures: failures, timeLeft: TimeSpan(microseconds: expiry.microseconds(since: now)), jitter: jitter,
        retryAfter: failure.retryAfter, notYetAvailable: failure.isNotYetAvailable)
      let due = now + delay
      return due >= expiry ? .stopped : .due(due)
    }
  }
}
