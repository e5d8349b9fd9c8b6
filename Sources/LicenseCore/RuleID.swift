/// Every rule of `rules.md`, by its id: what a refusal names (`RuleViolation.rule`, the
/// control interface's `rule`, the journal's `LICENSE_RULE`) and what tests are named
/// after. A test checks this list against the rules document, so a rule added there is a
/// case to add here.
public enum RuleID: String, Sendable, CaseIterable, Codable {
  /// A1: well formed, trusted, for this product, valid now.
  case A1
  /// A2: one licensing scheme per SVM; a change removes the old scheme's keys when confirmed.
  case A2
  /// A3: a new active key replaces the slot's active key.
  case A3
  /// A4: after a replacement, a reserve that can no longer follow is dropped.
  case A4
  /// A5: a trial never replaces a commercial or subscription key.
  case A5
  /// R1: a reserve only next to an active key.
  case R1
  /// R2: the reserve's type matches the active key's.
  case R2
  /// R3: the same edition.
  case R3
  /// R4: trial and subscription keys cannot be reserves.
  case R4
  /// R5: the reserve expires strictly after the active key.
  case R5
  /// R6: the reserve is valid at the takeover instant and not expired.
  case R6
  /// R7: the reserve is not the active key itself.
  case R7
  /// R8: format, signature, issuer and product as in A1.
  case R8
  /// R9: one reserve per slot; a new one replaces the old.
  case R9
  /// P1: the reserve takes over at the instant of expiry, never before.
  case P1
  /// P2: durable before announced, exactly once.
  case P2
  /// P3: a promotion missed while the agent was down happens at start, with its delay.
  case P3
  /// P4: an expired reserve is not promoted.
  case P4
  /// P5: after a promotion every schedule follows the new key.
  case P5
  /// P6: nothing to take over: the slot is expired (LICENSE_EXPIRED).
  case P6
  /// C1: a key from an activation code keeps the code as a secret.
  case C1
  /// C2: at expiry, with no reserve, the activation server is asked for the next key.
  case C2
  /// C3: transient failures retried with backoff, permanent ones not.
  case C3
  /// C4: the alert when renewal has not succeeded in time, or at once when permanent.
  case C4
  /// C5: manual activation with a code, at any time.
  case C5
  /// C6: renewal ahead of expiry.
  case C6
  /// U1: the consumer reports the units it uses per slot; unknown is never zero.
  case U1
  /// U2: usage graded against the active key: 90 %, over 100 %, over 110 %.
  case U2
  /// U3: a reserve or pending key short of the slot's usage is accepted with a warning.
  case U3
  /// U4: across the fleet a key's usage is the sum over its SVMs (the fleet tools).
  case U4
  /// B1: an issuer's signed blocklist, the highest sequence kept per issuer.
  case B1
  /// B2: a blocked active key keeps working for a grace period, then counts as expired.
  case B2
  /// B3: a blocked key is never added; a blocked reserve or pending key is dropped.
  case B3
  /// N1: every durable change is delivered to Monitor's subscribers, in order, after it is
  /// durable; a subscriber that does not read is dropped, never delaying the agent.
  case N1
  /// N2: a declared consumer confirms the serial it enforces; CONSUMER_NOT_UPDATED when an
  /// expected one has not within `confirm-within` of a takeover.
  case N2
  /// N3: hooks run after each durable change, supervised, never delaying or undoing it.
  case N3
  /// W1: EXPIRING_SOON at each threshold, once per key.
  case W1
  /// T1: expiry instants are wall-clock instants; clock changes are noticed at once.
  case T1
  /// T2: no polling between events.
  case T2
}
