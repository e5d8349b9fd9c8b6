import LicenseCore
import LicenseTestSupport
import Testing

/// Rules C1–C5: activation-code mode, as pure decisions.
@Suite struct ActivationTests {
  let issuer = TestIssuer()
  let t0 = TestIssuer.t0
  let code = ActivationCode("abcde-12345-fghij-67890")!
  var engine: LicenseEngine {
    LicenseEngine(
      configuration: EngineConfiguration(
        retryInitial: .seconds(5), retryMax: .minutes(10), alertAfter: .minutes(30),
        renewBefore: .seconds(0)),  // C2–C5 alone: renewal ahead (C6) has its own tests
      trust: issuer.trust)
  }

  /// A code-mode active key expiring at `exp`.
  func codeMode(exp: Timestamp) -> LicenseState {
    let d = engine.addKey(
      issuer.key("KS-1", exp: exp), role: .active, code: code, now: t0, state: LicenseState())
    return d.state.acknowledging(through: d.state.lastTransitionID)
  }

  func requests<S>(_ d: Decision<S>) -> [ActivationRequest] {
    d.actions.compactMap { if case .activate(let r) = $0 { return r } else { return nil } }
  }

  @Test(arguments: ["ABCDE-12345-FGHIJ-67890", "abcde-12345-fghij-67890", "  ABCDE-12345-FGHIJ-67890\n"])
  func C1_codesAreReadInTheirContractShapeAndUpperCased(text: String) throws {
    let code = try #require(ActivationCode(text))
    #expect(code.value == "ABCDE-12345-FGHIJ-67890")
    #expect(code.hint == "67890")
    #expect(code.description == "…67890")
  }

  @Test(arguments: [
    "", "ABCDE-12345-FGHIJ", "ABCDE-12345-FGHIJ-6789", "ABCDE_12345_FGHIJ_67890", "ABCDE-12345-FGHIJ-6789!",
    "ÀBCDE-12345-FGHIJ-67890", "ABCDE-12345-FGHIJ-67890-XXXXX",
  ])
  func C5_aCodeOfAnotherShapeIsRefusedLocally(text: String) {
    #expect(ActivationCode(text) == nil)
    #expect(ActivationCode.formatViolation().code == "invalid_code_format")
  }

  /// Text from outside that repeats the code gets the hint in its place, whatever the
  /// case and the separators; other text is left as it is.
  @Test(arguments: [
    ("code ABCDE-12345-FGHIJ-67890 is blocked", "code …67890 is blocked"),
    ("code abcde-12345-fghij-67890!", "code …67890!"),
    ("busy_ABCDE12345FGHIJ67890", "busy_…67890"),
    ("ABCDE 12345_fghij-67890 and ABCDE-12345-FGHIJ-67890", "…67890 and …67890"),
    ("ABCDE-12345-FGHIJ-6789 (cut short)", "ABCDE-12345-FGHIJ-6789 (cut short)"),
    ("ABCDE--12345 - FGHIJ-67890.", "…67890."),
    ("", ""),
    ("é ABCDE-12345-FGHIJ-67890 é", "é …67890 é"),
  ])
  func C1_theCodeIsRedactedFromTextFromOutside(text: String, expected: String) {
    #expect(code.redacting(text) == expected)
  }

  @Test func C1_aKeyObtainedWithACodeKeepsIt() {
    let state = codeMode(exp: t0 + .days(10))
    #expect(state[.server]?.active?.origin == .activationCode)
    #expect(state[.server]?.active?.activationCode == code)
    #expect(engine.takeover(state[.server]) == .activationCode)
  }

  /// The backoff table of `renewalRetryDelay`'s doc comment: caps with jitter 1, and full
  /// jitter scaling them.
  @Test(arguments: [
    (1, 5), (2, 10), (3, 20), (4, 40), (5, 80), (6, 160), (7, 320), (8, 600), (9, 600), (50, 600),
  ])
  func C3_backoffDoublesFromRetryInitialUpToRetryMax(failures: Int, capSeconds: Int64) {
    let cap = renewalRetryDelay(
      failures: failures, initial: .seconds(5), maximum: .minutes(10), jitter: 0.999_999_999)
    #expect(abs(cap.microseconds - capSeconds * 1_000_000) <= 1)
    let half = renewalRetryDelay(failures: failures, initial: .seconds(5), maximum: .minutes(10), jitter: 0.5)
    #expect(half.microseconds == capSeconds * 500_000)
    #expect(
      renewalRetryDelay(failures: failures, initial: .seconds(5), maximum: .minutes(10), jitter: 0)
        .microseconds == 0)
  }

  @Test func C3_retryAfterIsHonoured() {
    #expect(
      renewalRetryDelay(
        failures: 1, initial: .seconds(5), maximum: .minutes(10), jitter: 0.1, retryAfter: .seconds(30))
        == .seconds(30))
    #expect(
      renewalRetryDelay(
        failures: 8, initial: .seconds(5), maximum: .minutes(10), jitter: 0.5, retryAfter: .seconds(30))
        == .seconds(300))
  }

  @Test func C3_failedAttemptsAreLoggedWithoutFlooding() {
    let logged = (1...200).filter(isLoggedAttempt)
    #expect(logged == [1, 2, 3, 4, 5, 8, 16, 32, 64, 128])
  }

  @Test func C2_atExpiryWithNoReserveTheFirstAttemptStartsAtOnce() throws {
    let exp = t0 + .days(10)
    let state = codeMode(exp: exp)
    #expect(requests(engine.timeReached(now: exp - TimeSpan(microseconds: 1), state: state)).isEmpty)
    let d = engine.timeReached(now: exp, state: state)
    let request = try #require(requests(d).first)
    #expect(
      request
        == ActivationRequest(slot: .server, code: code, currentSerial: "KS-1", attempt: 1, kind: .atExpiry))
    #expect(d.persistedTransition != nil, "the renewal is durable before the request")
    #expect(!d.renderedEvents.contains { $0.kind == .licenseExpired })
    #expect(d.state[.server]?.renewal?.attempts.underWaySince == exp)
    // Replaying the instant does not start a second attempt.
    #expect(requests(engine.timeReached(now: exp + .seconds(1), state: d.state)).isEmpty)
  }

  /// T1 with C3: a retry keeps the delay it had left across a backward step (its instant
  /// moves with the clock); a forward step makes it due at once. The alert's instant, which
  /// counts from `exp`, does not move.
  @Test func C3_T1_aRetryKeepsItsDelayAcrossAClockStep() throws {
    let exp = t0 + .days(10)
    let renewing = engine.timeReached(now: exp, state: codeMode(exp: exp)).state
    let failed = engine.attemptFailed(
      slot: .server, failure: .transient(error: "network", retryAfter: nil), jitter: 0.5,
      now: exp + .seconds(1),
      state: renewing
    ).state
    let due = try #require(failed[.server]?.renewal?.attempts.dueAt)
    #expect(due == exp + .seconds(1) + TimeSpan(microseconds: 2_500_000))
    // Two hours back, one second after the failure: the retry is still 1.5 s away.
    let back = engine.clockChanged(
      deltaMicroseconds: -TimeSpan.hours(2).microseconds, now: exp + .seconds(2) - .hours(2), state: failed)
    #expect(back.state[.server]?.renewal?.attempts.dueAt == due - .hours(2))
    #expect(back.persistedTransition != nil, "the agent keeps the state it persists")
    #expect(engine.nextWake(back.state)?.at == due - .hours(2))
    #expect(back.state[.server]?.expired?.expiresAt == exp, "the alert still counts from exp")
    // Forward: due at once.
    let forward = engine.clockChanged(
      deltaMicroseconds: TimeSpan.hours(2).microseconds, now: exp + .hours(2), state: failed)
    #expect(requests(forward).map(\.attempt) == [2])
  }

  @Test func C2_aReserveTakesPrecedenceOverTheCode() {
    let exp = t0 + .days(10)
    let state = engine.addKey(
      issuer.key("KS-R", exp: exp + .days(30)), role: .reserve, now: t0, state: codeMode(exp: exp)
    ).state
    let d = engine.timeReached(now: exp, state: state)
    #expect(requests(d).isEmpty)
    #expect(d.state[.server]?.active?.serial == "KS-R")
  }

  @Test func C2_theServersKeyIsCheckedAndInstalledKeepingTheCode() throws {
    let exp = t0 + .days(10)
    let renewing = engine.timeReached(now: exp, state: codeMode(exp: exp)).state
    let d = engine.attemptSucceeded(
      slot: .server, key: issuer.key("KS-2", exp: exp + .days(365)), now: exp + .seconds(1), state: renewing)
    #expect(d.state[.server]?.active?.serial == "KS-2")
    #expect(d.state[.server]?.active?.activationCode == code)
    #expect(d.state[.server]?.renewal == nil && d.state[.server]?.expired == nil)
    let event = try #require(d.renderedEvents.first)
    #expect(event.kind == .activationRenewed && event.priority == 5)
    #expect(event[field: .serial] == "KS-2")
    #expect(event[field: .previousSerial] == "KS-1")
    #expect(event[field: .attempt] == "1")
    #expect(event[field: .codeHint] == "67890")
    #expect(!event.message.contains(code.value))
  }

  @Test func C3_aKeyFromTheServerThatFailsTheChecksIsPermanent() throws {
    let exp = t0 + .days(10)
    let renewing = engine.timeReached(now: exp, state: codeMode(exp: exp)).state
    for bad in [
      TestIssuer(kid: "rogue").key("KS-2", exp: exp + .days(365)), issuer.key("KS-2", exp: exp - .days(1)),
      issuer.key("KW-2", slot: .workstation, exp: exp + .days(365)), "garbage",
    ] {
      let d = engine.attemptSucceeded(slot: .server, key: bad, now: exp, state: renewing)
      #expect(d.state[.server]?.active == nil)
      #expect(d.state[.server]?.renewal?.attempts.dueAt == nil, "no retry")
      let alert = try #require(d.renderedEvents.first { $0.kind == .manualActivationRequired })
      #expect(alert.priority == 1)
      #expect(alert[field: .error]?.hasPrefix("bad_key_from_server") == true)
    }
  }

  @Test func C3_transientFailuresAreRetriedWithBackoff() throws {
    let exp = t0 + .days(10)
    var state = engine.timeReached(now: exp, state: codeMode(exp: exp)).state
    var now = exp
    for attempt in 1...3 {
      let d = engine.attemptFailed(
        slot: .server, failure: .transient(error: "HTTP 503", retryAfter: nil), jitter: 0.5, now: now,
        state: state)
      let renewal = try #require(d.state[.server]?.renewal)
      #expect(renewal.attempts.failures == attempt)
      let expected = renewalRetryDelay(
        failures: attempt, initial: .seconds(5), maximum: .minutes(10), jitter: 0.5)
      #expect(renewal.attempts.dueAt == now + expected)
      #expect(renewal.attempts.lastError == "HTTP 503")
      let failed = try #require(d.renderedEvents.first { $0.kind == .activationAttemptFailed })
      #expect(failed.priority == 4)
      #expect(failed[field: .attempt] == String(attempt))
      #expect(failed[field: .nextAttemptAt] == (now + expected).rfc3339)
      #expect(failed[field: .codeHint] == "67890")
      #expect(engine.nextWake(d.state)?.at == now + expected)
      now = now + expected
      let retry = engine.timeReached(now: now, state: d.state)
      #expect(requests(retry).first?.attempt == attempt + 1)
      state = retry.state
    }
  }

  @Test func C4_aPermanentFailureAlertsAtOnceAndStopsRetrying() throws {
    let exp = t0 + .days(10)
    let renewing = engine.timeReached(now: exp, state: codeMode(exp: exp)).state
    let d = engine.attemptFailed(
      slot: .server, failure: .permanent(error: "code_blocked"), jitter: 0.5, now: exp, state: renewing)
    let alert = try #require(d.renderedEvents.first)
    #expect(alert.kind == .manualActivationRequired)
    #expect(alert[field: .serial] == "KS-1")
    #expect(alert[field: .error] == "code_blocked")
    #expect(alert[field: .attempt] == "1")
    #expect(alert[field: .codeHint] == "67890")
    #expect(d.state[.server]?.renewal?.attempts.dueAt == nil)
    #expect(requests(engine.timeReached(now: exp + .days(1), state: d.state)).isEmpty)
  }

  @Test func C4_anOutageLongerThanTheAlertDelayAlertsOnceAndKeepsRetrying() throws {
    let exp = t0 + .days(10)
    var state = engine.timeReached(now: exp, state: codeMode(exp: exp)).state
    state =
      engine.attemptFailed(
        slot: .server, failure: .transient(error: "connection refused", retryAfter: nil), jitter: 0.9,
        now: exp, state: state
      ).state
    // The alert instant is a wake-up of its own.
    let due = try #require(state[.server]?.renewal?.attempts.dueAt)
    #expect(engine.nextWake(state)?.at == min(due, exp + .minutes(30)))
    let atAlert = engine.timeReached(now: exp + .minutes(30), state: state)
    let alerts = atAlert.renderedEvents.filter { $0.kind == .manualActivationRequired }
    #expect(alerts.count == 1)
    #expect(alerts.first?[field: .error] == "connection refused")
    let later = engine.attemptFailed(
      slot: .server, failure: .transient(error: "connection refused", retryAfter: nil), jitter: 0.9,
      now: exp + .hours(1),
      state: engine.timeReached(now: exp + .hours(1), state: atAlert.state).state)
    #expect(!later.renderedEvents.contains { $0.kind == .manualActivationRequired })
    #expect(later.state[.server]?.renewal?.attempts.dueAt != nil, "still retrying")
    // The server comes back: renewed, and the alert is cleared.
    let retry = engine.timeReached(
      now: try #require(later.state[.server]?.renewal?.attempts.dueAt), state: later.state)
    let renewed = engine.attemptSucceeded(
      slot: .server, key: issuer.key("KS-2", exp: exp + .days(365)), now: exp + .hours(2), state: retry.state)
    guard case .activationRenewed(let event)? = renewed.events.first else {
      Issue.record("expected ACTIVATION_RENEWED: \(renewed.events)")
      return
    }
    #expect(event.alertCleared)
  }

  @Test func C5_manualActivationAtAnyTimeClearsTheRenewalAndTheAlert() {
    let exp = t0 + .days(10)
    var state = engine.timeReached(now: exp, state: codeMode(exp: exp)).state
    state =
      engine.attemptFailed(
        slot: .server, failure: .permanent(error: "code_expired"), jitter: 0, now: exp, state: state
      ).state
    let newCode = ActivationCode("ZZZZZ-11111-YYYYY-22222")!
    let d = engine.addKey(
      issuer.key("KS-3", exp: exp + .days(365)), role: .active, code: newCode, now: exp + .hours(1),
      state: state)
    #expect(d.state[.server]?.renewal == nil)
    #expect(d.state[.server]?.active?.activationCode == newCode)
  }

  @Test func W1_aCodeModeKeyWarnsAtNoticePriority() {
    let exp = t0 + .days(100)
    let d = engine.timeReached(now: exp - .days(30), state: codeMode(exp: exp))
    #expect(d.renderedEvents.first?.priority == 5)
    #expect(d.renderedEvents.first?[field: .takeover] == "activation-code")
  }

  @Test func anAttemptUnderWayAtACrashIsMadeAgainAtStart() {
    let exp = t0 + .days(10)
    let renewing = engine.timeReached(now: exp, state: codeMode(exp: exp)).state
    #expect(
      engine.interruptedAttempts(renewing) == [
        ActivationRequest(slot: .server, code: code, currentSerial: "KS-1", attempt: 1, kind: .atExpiry)
      ])
    let failed = engine.attemptFailed(
      slot: .server, failure: .transient(error: "x", retryAfter: nil), jitter: 0.5, now: exp, state: renewing)
    #expect(engine.interruptedAttempts(failed.state).isEmpty)
  }
}
