import FoundationEssentials
import LicenseCore
import LicenseTestSupport
import Testing

/// Rule C6: renewal ahead of expiry, as pure decisions.
@Suite struct RenewalAheadTests {
  let issuer = TestIssuer()
  let t0 = TestIssuer.t0
  let code = ActivationCode("abcde-12345-fghij-67890")!
  let exp = TestIssuer.t0 + .days(30)

  var engine: LicenseEngine { engine() }

  func engine(before: TimeSpan = .days(7), spread: TimeSpan = .days(3)) -> LicenseEngine {
    LicenseEngine(
      configuration: EngineConfiguration(
        retryInitial: .seconds(5), retryMax: .minutes(10), alertAfter: .minutes(30), renewBefore: before,
        renewSpread: spread),
      trust: issuer.trust)
  }

  /// A code-mode active key `KS-1` expiring at `exp`, added at `at`, on the SVM `stateID`.
  func codeMode(stateID: String = "svm-1", at: Timestamp? = nil, engine: LicenseEngine? = nil) -> LicenseState
  {
    let engine = engine ?? self.engine
    let d = engine.addKey(
      issuer.key("KS-1", exp: exp), role: .active, code: code, now: at ?? t0,
      state: LicenseState(stateID: stateID))
    return d.state.acknowledging(through: d.state.lastTransitionID)
  }

  func requests<S>(_ d: Decision<S>) -> [ActivationRequest] {
    d.actions.compactMap { if case .activate(let r) = $0 { return r } else { return nil } }
  }

  /// The state once the first request ahead was made (at its drawn instant).
  func asking(_ state: LicenseState, engine: LicenseEngine? = nil) throws -> (LicenseState, Timestamp) {
    let engine = engine ?? self.engine
    let due = try #require(engine.aheadAttemptDue(state[.server]))
    let d = engine.timeReached(now: due, state: state)
    #expect(requests(d).count == 1)
    return (d.state, due)
  }

  /// The key of the next period, as the reference server gives it: valid from `exp`.
  func nextPeriod(_ serial: String = "KS-2", nbf: Timestamp? = nil, exp next: Timestamp? = nil) -> String {
    issuer.key(serial, nbf: nbf ?? exp, exp: next ?? exp + .days(365))
  }

  @Test func C6_theFirstRequestIsDrawnOncePerKeyUniformlyInTheWindow() throws {
    let from = exp - .days(7)
    let to = exp - .days(4)
    var fractions: [Double] = []
    for svm in 0..<2000 {
      let state = codeMode(stateID: "svm-\(svm)")
      let ahead = try #require(state[.server]?.ahead)
      #expect(state[.server]?.active?.serial == "KS-1")
      #expect(ahead.attempts.failures == 0 && !ahead.attempts.isStopped)
      let due = try #require(engine.aheadAttemptDue(state[.server]))
      #expect(due >= from && due <= to)
      fractions.append(Double(due.microseconds(since: from)) / Double(to.microseconds(since: from)))
    }
    // Uniform: each tenth of the window holds about a tenth of the SVMs (200 ± 4.5 sigma).
    for tenth in 0..<10 {
      let count = fractions.filter { $0 >= Double(tenth) / 10 && $0 < Double(tenth + 1) / 10 }.count
      #expect(abs(count - 200) < 60, "tenth \(tenth): \(count)")
    }
    // Two SVMs with the same key draw differently; the same SVM and key draw the same.
    #expect(
      LicenseEngine.draw(stateID: "svm-1", serial: "KS-1")
        != LicenseEngine.draw(stateID: "svm-2", serial: "KS-1"))
    #expect(
      LicenseEngine.draw(stateID: "svm-1", serial: "KS-1")
        == LicenseEngine.draw(stateID: "svm-1", serial: "KS-1"))
  }

  @Test func C6_theDrawIsPersistedWithTheStateAndUsedAsStored() throws {
    let state = codeMode()
    let data = try JSONEncoder().encode(state)
    let reloaded = try JSONDecoder().decode(LicenseState.self, from: data)
    #expect(reloaded[.server]?.ahead == state[.server]?.ahead)
    // The engine uses the stored draw, not a new one: a record saying 0.5 asks mid-window.
    var edited = reloaded
    edited.editAhead(.server) { $0?.draw = 0.5 }
    #expect(engine.aheadAttemptDue(edited[.server]) == exp - .days(7) + .hours(36))
    // A restart (time processed again, later, on the loaded state) does not draw again.
    let later = engine.timeReached(now: t0 + .days(1), state: edited)
    #expect(later.state[.server]?.ahead?.draw == 0.5)
    // An older state file, without the record, gets one at the next decision, persisted.
    var older = reloaded
    older.editAhead(.server) { $0 = nil }
    let upgraded = engine.timeReached(now: t0 + .days(1), state: older)
    #expect(upgraded.persistedTransition != nil)
    #expect(upgraded.state[.server]?.ahead?.since == t0 + .days(1))
  }

  @Test func C6_theRequestIsMadeAtTheDrawnInstantNotAMicrosecondBefore() throws {
    // The warnings due before it (30d, 7d) logged first.
    let initial = codeMode()
    let due = try #require(engine.aheadAttemptDue(initial[.server]))
    let warned = engine.timeReached(now: due - TimeSpan(microseconds: 1), state: initial)
    #expect(requests(warned).isEmpty)
    let state = warned.state.acknowledging(through: warned.state.lastTransitionID)
    let wake = try #require(engine.nextWake(state))
    #expect(wake.at == due)
    #expect(wake.reason == .renewalAhead(slot: .server, serial: "KS-1", attempt: 1))
    #expect(requests(engine.timeReached(now: due - TimeSpan(microseconds: 1), state: state)).isEmpty)
    let d = engine.timeReached(now: due, state: state)
    #expect(
      requests(d) == [
        ActivationRequest(
          slot: .server, code: code, currentSerial: "KS-1", attempt: 1, kind: .ahead(currentExpiresAt: exp))
      ])
    #expect(d.persistedTransition != nil, "the attempt is durable before the request")
    #expect(d.state[.server]?.ahead?.attempts.underWaySince == due)
    #expect(d.renderedEvents.isEmpty)
    // Replayed, or found under way after a crash: made again once, never twice at once.
    #expect(requests(engine.timeReached(now: due + .seconds(1), state: d.state)).isEmpty)
    #expect(engine.interruptedAttempts(d.state) == requests(d))
  }

  @Test func C6_aKeyArrivingInsideOrAfterTheWindowIsDrawnInWhatIsLeft() throws {
    // Inside the window: what is left of it.
    let inside = exp - .days(5)
    let window = engine.aheadWindow(expiresAt: exp, since: inside)
    #expect(window.from == inside && window.to == exp - .days(4))
    // After it (a 2-day key, or an agent upgraded late): the first half of what is left.
    let late = exp - .days(2)
    let after = engine.aheadWindow(expiresAt: exp, since: late)
    #expect(after.from == late && after.to == exp - .days(1))
    let state = codeMode(at: late)
    let due = try #require(engine.aheadAttemptDue(state[.server]))
    #expect(due >= late && due <= exp - .days(1))
    // A spread longer than renew-before never reaches exp.
    let wide = engine(before: .days(2), spread: .days(5)).aheadWindow(expiresAt: exp, since: t0)
    #expect(wide.to == exp)
  }

  @Test func C6_aKeyObtainedAheadIsPendingAndTakesOverAtExpExactlyAsAReserve() throws {
    let (asked, due) = try asking(codeMode())
    let got = engine.attemptSucceeded(
      slot: .server, key: nextPeriod(), ahead: true, now: due + .seconds(2), state: asked)
    let pending = try #require(got.state[.server]?.pending)
    #expect(
      pending.serial == "KS-2" && pending.activationCode == code && pending.addedAt == due + .seconds(2))
    #expect(got.state[.server]?.active?.serial == "KS-1", "the active key stays until its exp")
    #expect(got.state[.server]?.ahead == nil)
    #expect(got.persistedTransition != nil)
    let renewed = try #require(got.renderedEvents.first)
    #expect(renewed.kind == .activationRenewed && renewed.priority == 5)
    #expect(renewed[field: .serial] == "KS-2")
    #expect(renewed[field: .previousSerial] == "KS-1")
    #expect(renewed[field: .codeHint] == "67890")
    #expect(!renewed.message.contains(code.value))
    #expect(got.renderedEvents.count == 1)
    #expect(engine.takeover(got.state[.server]) == .pendingRenewal)
    #expect(got.state.counters[.server]?.renewed == 1)
    // Nothing more is asked; the next instant is the promotion at exp (after the warnings).
    let state = got.state.acknowledging(through: got.state.lastTransitionID)
    #expect(requests(engine.timeReached(now: exp - TimeSpan(microseconds: 1), state: state)).isEmpty)
    let early = engine.timeReached(now: exp - TimeSpan(microseconds: 1), state: state).state
    #expect(early[.server]?.active?.serial == "KS-1")
    let wake = try #require(engine.nextWake(early))
    #expect(wake.at == exp)
    // At exp: KEY_PROMOTED, no delay, the code kept, a new draw for the new key.
    let promoted = engine.timeReached(now: exp, state: early)
    #expect(promoted.state[.server]?.active?.serial == "KS-2")
    #expect(promoted.state[.server]?.active?.activationCode == code)
    #expect(promoted.state[.server]?.active?.promotedAt == exp)
    #expect(promoted.state[.server]?.pending == nil)
    #expect(promoted.state[.server]?.ahead != nil, "a renewal ahead for the new key")
    let event = try #require(promoted.renderedEvents.first { $0.kind == .keyPromoted })
    #expect(event[field: .serial] == "KS-2")
    #expect(event[field: .previousSerial] == "KS-1")
    #expect(event[field: .delayMicroseconds] == "0")
    #expect(requests(promoted).isEmpty)
    #expect(promoted.state.counters[.server]?.promotions == 1)
    // P3: an agent that was down at exp promotes at start, saying how late.
    let late = engine.timeReached(now: exp + .minutes(3), state: early)
    #expect(late.renderedEvents.first { $0.kind == .keyPromoted }?[field: .delayMicroseconds] == "180000000")
  }

  /// P4 for a key obtained ahead: the agent was down past the pending key's whole period.
  /// It is not promoted, the journal names it (RESERVE_DROPPED, reason `expired`), and the
  /// renewal continues from it, so that the server gives the period after it rather than
  /// the same expired one again (which would fail A1 and raise a needless alert). Found by
  /// the power-cut replay (scripts/vm-proof --power-cuts): the key vanished without a word.
  @Test func C6_P4_aPendingKeyThatExpiredWhileTheAgentWasDownIsNamedAndRenewedFrom() throws {
    let (asked, due) = try asking(codeMode())
    let pendingUntil = exp + .days(30)
    let got = engine.attemptSucceeded(
      slot: .server, key: nextPeriod(exp: pendingUntil), ahead: true, now: due + .seconds(2), state: asked)
    let state = got.state.acknowledging(through: got.state.lastTransitionID)
    let start = engine.timeReached(now: pendingUntil + .hours(2), state: state)
    #expect(!start.renderedEvents.contains { $0.kind == .keyPromoted })
    let dropped = try #require(start.renderedEvents.first { $0.kind == .reserveDropped })
    #expect(dropped[field: .serial] == "KS-2")
    #expect(dropped[field: .reason] == "expired")
    #expect(dropped.message.contains("KS-1") && !dropped.message.contains(code.value))
    #expect(requests(start).map(\.currentSerial) == ["KS-2"])
    #expect(requests(start).map(\.kind.isAhead) == [false])
    #expect(start.state[.server]?.pending == nil)
    #expect(start.state[.server]?.expired?.serial == "KS-2")
    #expect(start.state[.server]?.expired?.expiresAt == pendingUntil)
    // Still valid at start: promoted as before (P3), nothing dropped.
    let late = engine.timeReached(now: exp + .hours(2), state: state)
    #expect(late.state[.server]?.active?.serial == "KS-2")
    #expect(!late.renderedEvents.contains { $0.kind == .reserveDropped })
  }

  @Test func C6_notYetAvailableIsRetriedInsideTheWindowAfterRetryAfterWithoutAnyEvent() throws {
    let (asked, due) = try asking(codeMode())
    let now = due + .seconds(1)
    for jitter in [0.0, 0.5, 0.999] {
      let d = engine.attemptFailed(
        slot: .server, failure: .notYetAvailable(retryAfter: .hours(2)), ahead: true, jitter: jitter,
        now: now,
        state: asked)
      let ahead = try #require(d.state[.server]?.ahead)
      #expect(
        ahead.attempts.lastError == "not_yet_available" && ahead.attempts.failures == 1
          && !ahead.attempts.alertRaised)
      #expect(d.renderedEvents.isEmpty, "the vendor's calendar is not a failure to log")
      let next = try #require(ahead.attempts.dueAt)
      // Never sooner than Retry-After; spread after it over a quarter of the time left (here
      // more than retry-max), so that a fleet does not come back at once.
      let cap = Int64(Double(exp.microseconds(since: now) / 4) * jitter)
      #expect(next == now + .hours(2) + TimeSpan(microseconds: cap))
      #expect(engine.nextWake(d.state)?.reason == .renewalAhead(slot: .server, serial: "KS-1", attempt: 2))
    }
  }

  @Test func C6_transientFailuresAreRetriedInTheWindowWithNoAlertAndLeftToExpiryAtTheEnd() throws {
    var (state, due) = try asking(codeMode())
    var now = due
    var attempts = 0
    var alerts = 0
    // The server is down until after exp: every attempt ahead fails.
    while let ahead = state[.server]?.ahead, !ahead.attempts.isStopped {
      if ahead.attempts.underWaySince == nil {
        let next = try #require(engine.aheadAttemptDue(state[.server]))
        #expect(next > now && next < exp)
        now = next
        let d = engine.timeReached(now: now, state: state)
        #expect(requests(d).count == 1)
        state = d.state
      }
      let d = engine.attemptFailed(
        slot: .server, failure: .transient(error: "connection refused", retryAfter: nil), ahead: true,
        jitter: 0.9, now: now + .seconds(1), state: state)
      attempts += 1
      alerts += d.renderedEvents.filter { $0.kind == .manualActivationRequired }.count
      for event in d.renderedEvents where event.kind == .activationAttemptFailed {
        #expect(event[field: .ahead] == "1")
      }
      for case .activationAttemptFailed(let failed) in d.events {
        #expect(failed.ahead && failed.key.expiresAt == exp, "ahead of the expiry: nothing is needed yet")
      }
      state = d.state
      now = now + .seconds(1)
      #expect(attempts < 500)
    }
    #expect(alerts == 0, "failures ahead raise no alert")
    #expect(attempts > 10, "retried inside the window (\(attempts) attempts)")
    #expect(state.counters[.server]?.transientFailures == attempts)
    // At exp, C2: the renewal at expiry, then C4's alert after alert-after.
    let atExp = engine.timeReached(now: exp, state: state)
    #expect(requests(atExp).map(\.kind.isAhead) == [false])
    #expect(atExp.state[.server]?.renewal?.attempts.alertRaised == false)
    #expect(atExp.state[.server]?.expired?.serial == "KS-1")
  }

  @Test func C6_theRetryCapIsRetryMaxOrASixteenthOfWhatIsLeft() {
    let e = engine
    #expect(
      e.aheadRetryDelay(
        failures: 50, timeLeft: .days(4), jitter: 0.999_999_999, retryAfter: nil, notYetAvailable: false
      )
      .microseconds / 1_000_000 == TimeSpan.hours(6).microseconds / 1_000_000 - 1)
    #expect(
      e.aheadRetryDelay(
        failures: 50, timeLeft: .hours(1), jitter: 0.5, retryAfter: nil, notYetAvailable: false)
        == .minutes(5))
    // C3's ramp from retry-initial, and Retry-After as a floor for a transient failure.
    #expect(
      e.aheadRetryDelay(failures: 1, timeLeft: .days(4), jitter: 0.5, retryAfter: nil, notYetAvailable: false)
        == TimeSpan(microseconds: 2_500_000))
    #expect(
      e.aheadRetryDelay(
        failures: 1, timeLeft: .days(4), jitter: 0.5, retryAfter: .minutes(1), notYetAvailable: false)
        == .minutes(1))
  }

  @Test(arguments: [
    ("valid only after exp", TimeSpan.seconds(1), TimeSpan.days(365)),
    ("ends at exp", TimeSpan.days(-300), TimeSpan.seconds(0)),
    ("ends before exp", TimeSpan.days(-300), TimeSpan.days(-1)),
  ])
  func C6_aKeyThatDoesNotContinueTheLicenceIsBadKeyFromServer(
    _ what: String, nbfAfterExp: TimeSpan, expAfterExp: TimeSpan
  ) throws {
    let (asked, due) = try asking(codeMode())
    let d = engine.attemptSucceeded(
      slot: .server, key: nextPeriod(nbf: exp + nbfAfterExp, exp: exp + expAfterExp), ahead: true,
      now: due, state: asked)
    #expect(d.state[.server]?.pending == nil, "\(what)")
    let ahead = try #require(d.state[.server]?.ahead)
    #expect(ahead.attempts.isStopped && ahead.attempts.alertRaised && ahead.attempts.dueAt == nil)
    #expect(ahead.attempts.lastError?.hasPrefix("bad_key_from_server") == true)
    let alert = try #require(d.renderedEvents.first { $0.kind == .manualActivationRequired })
    #expect(alert.priority == 1 && alert[field: .ahead] == "1")
    #expect(alert[field: .expiresAt] == exp.rfc3339 && alert[field: .serial] == "KS-1")
    #expect(d.state.counters[.server]?.permanentFailures == 1)
    #expect(engine.nextWake(d.state)?.reason != .renewalAhead(slot: .server, serial: "KS-1", attempt: 2))
    // At exp the agent still tries once (C2), without raising the alert a second time.
    let atExp = engine.timeReached(now: exp, state: d.state)
    #expect(requests(atExp).map(\.kind.isAhead) == [false])
    let refused = engine.attemptFailed(
      slot: .server, failure: .permanent(error: "code_blocked"), jitter: 0, now: exp + .seconds(1),
      state: atExp.state)
    #expect(refused.renderedEvents.filter { $0.kind == .manualActivationRequired }.isEmpty)
    #expect(refused.state[.server]?.renewal?.attempts.alertRaised == true)
  }

  @Test func C6_otherKeysThatDoNotContinueTheLicence() throws {
    let (asked, due) = try asking(codeMode())
    for (bad, reason) in [
      (TestIssuer(kid: "rogue").key("KS-2", nbf: exp, exp: exp + .days(365)), "A1"),
      (issuer.key("KW-2", slot: .workstation, nbf: exp, exp: exp + .days(365)), "workstation"),
      (issuer.key("KS-2", type: .trial, nbf: exp, exp: exp + .days(365)), "A5"),
      (issuer.key("KS-1", exp: exp), "the active key itself"),
      ("garbage", "A1"),
    ] {
      let d = engine.attemptSucceeded(slot: .server, key: bad, ahead: true, now: due, state: asked)
      #expect(d.state[.server]?.pending == nil)
      #expect(
        d.state[.server]?.ahead?.attempts.lastError?.contains(reason) == true,
        "\(reason): \(d.state[.server]?.ahead?.attempts.lastError ?? "-")")
    }
  }

  @Test func C6_anOperatorsReserveTakesPrecedence() throws {
    // With a reserve, nothing is asked ahead.
    let withReserve = engine.addKey(
      issuer.key("KS-R", exp: exp + .days(90)), role: .reserve, now: t0, state: codeMode()
    ).state
    #expect(withReserve[.server]?.ahead == nil)
    #expect(engine.aheadAttemptDue(withReserve[.server]) == nil)
    #expect(requests(engine.timeReached(now: exp - .days(1), state: withReserve)).isEmpty)
    // Removing the reserve brings renewal ahead back, at once drawn.
    let removed = engine.removeReserve(slot: .server, now: t0 + .days(1), state: withReserve)
    #expect(removed.state[.server]?.ahead != nil && removed.state[.server]?.active?.serial == "KS-1")
    guard case .reserveDropped(let removedEvent)? = removed.events.first else {
      Issue.record("expected RESERVE_DROPPED: \(removed.events)")
      return
    }
    #expect(removedEvent.reason == .removedByOperator(activeSerial: "KS-1", renewsWithCode: true))
    // A reserve added after a key was obtained ahead replaces it.
    let (asked, due) = try asking(codeMode())
    let pending = engine.attemptSucceeded(
      slot: .server, key: nextPeriod(), ahead: true, now: due, state: asked
    ).state
    let d = engine.addKey(
      issuer.key("KS-R", exp: exp + .days(90)), role: .reserve, now: due + .hours(1), state: pending)
    #expect(d.state[.server]?.reserve?.serial == "KS-R")
    #expect(d.state[.server]?.pending == nil && d.state[.server]?.ahead == nil)
    let dropped = try #require(d.renderedEvents.first { $0.kind == .reserveDropped })
    #expect(dropped[field: .serial] == "KS-2")
    #expect(dropped[field: .activeSerial] == "KS-1")
    #expect(dropped[field: .reason] == "replaced-by-operator")
    #expect(d.renderedEvents.contains { $0.kind == .reserveAdded })
    #expect(engine.timeReached(now: exp, state: d.state).state[.server]?.active?.serial == "KS-R")
    // A reserve added while an attempt is under way: its answer is not installed.
    let racing = engine.addKey(
      issuer.key("KS-R", exp: exp + .days(90)), role: .reserve, now: due, state: asked
    ).state
    let late = engine.attemptSucceeded(
      slot: .server, key: nextPeriod(), ahead: true, now: due, state: racing)
    #expect(late.state == racing && late.renderedEvents.isEmpty)
  }

  @Test func C6_renewBeforeZeroRestoresRenewalAtExpiry() {
    let off = engine(before: .seconds(0))
    let state = codeMode(engine: off)
    #expect(state[.server]?.ahead == nil)
    #expect(requests(off.timeReached(now: exp - TimeSpan(microseconds: 1), state: state)).isEmpty)
    #expect(requests(off.timeReached(now: exp, state: state)).map(\.kind.isAhead) == [false])
    // Turned off on reload: the record of a key drawn before goes at the next decision.
    let drawn = codeMode()
    #expect(drawn[.server]?.ahead != nil)
    #expect(off.timeReached(now: t0 + .days(1), state: drawn).state[.server]?.ahead == nil)
  }

  @Test func C6_clockStepsThroughTheWindow() throws {
    let state = codeMode()
    let due = try #require(engine.aheadAttemptDue(state[.server]))
    // A step forward into the window, past the drawn instant: the request at once.
    let forward = engine.clockChanged(
      deltaMicroseconds: due.microseconds(since: t0) + 1, now: due + TimeSpan(microseconds: 1), state: state)
    #expect(requests(forward).map(\.kind.isAhead) == [true])
    #expect(forward.renderedEvents.first?.kind == .clockChanged)
    // Obtained; a step backward undoes nothing: the pending key stays, the promotion stays at exp.
    let got = engine.attemptSucceeded(
      slot: .server, key: nextPeriod(), ahead: true, now: due + .seconds(1), state: forward.state)
    let backward = engine.clockChanged(
      deltaMicroseconds: -TimeSpan.days(20).microseconds, now: due - .days(20), state: got.state)
    #expect(backward.state[.server]?.pending?.serial == "KS-2")
    #expect(requests(backward).isEmpty)
    #expect(engine.nextWake(backward.state).map { $0.at <= exp } == true)
    // A step forward past exp with the key pending: promoted at once, with the step as delay.
    let past = engine.clockChanged(
      deltaMicroseconds: TimeSpan.days(40).microseconds, now: exp + .hours(1), state: got.state)
    #expect(past.state[.server]?.active?.serial == "KS-2")
    #expect(past.renderedEvents.first { $0.kind == .keyPromoted }?[field: .delayMicroseconds] == "3600000000")
    // A step forward past exp while nothing was obtained: C2 from exp on.
    let nothing = engine.clockChanged(
      deltaMicroseconds: TimeSpan.days(40).microseconds, now: exp + .hours(1), state: state)
    #expect(requests(nothing).map(\.kind.isAhead) == [false])
    #expect(nothing.state[.server]?.renewal != nil)
  }

  @Test func C6_aNewActiveKeyIsDrawnForAfreshAndAManualActivationToo() throws {
    let (asked, due) = try asking(codeMode())
    let replaced = engine.addKey(
      issuer.key("KS-9", exp: exp + .days(60)), role: .active, code: code, now: due, state: asked)
    let ahead = try #require(replaced.state[.server]?.ahead)
    #expect(replaced.state[.server]?.active?.serial == "KS-9")
    #expect(ahead.attempts.failures == 0 && ahead.attempts.underWaySince == nil)
    // The answer to the question about KS-1 is not installed for KS-9.
    let late = engine.attemptSucceeded(
      slot: .server, key: nextPeriod(), ahead: true, now: due, state: replaced.state)
    #expect(late.state[.server]?.pending == nil)
    // A key added without a code has no renewal ahead.
    let plain = engine.addKey(issuer.key("KS-8", exp: exp + .days(60)), role: .active, now: due, state: asked)
    #expect(plain.state[.server]?.ahead == nil)
  }
}
