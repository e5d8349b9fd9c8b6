import Foundation
import LicenseCore
import LicenseTestSupport
import Testing

/// The rules of `rules.md`, each test named by the rule it checks.
@Suite struct LicenseEngineTests {
  let issuer = TestIssuer()
  let t0 = TestIssuer.t0
  var engine: LicenseEngine { LicenseEngine(trust: issuer.trust) }
  /// One microsecond.
  let oneMicrosecond = TimeSpan(microseconds: 1)

  /// A state with an active key (and optionally a reserve) in `slot`, added at `t0`.
  func state(
    active: String? = nil, reserve: String? = nil, slot: Slot = .server, activeExp: Timestamp? = nil,
    reserveExp: Timestamp? = nil, edition: Edition = .enterprise, activeType: LicenseType = .commercial,
    base: LicenseState = LicenseState()
  ) -> LicenseState {
    var s = base
    if let active {
      let d = engine.addKey(
        issuer.key(active, slot: slot, edition: edition, type: activeType, exp: activeExp ?? t0 + .days(10)),
        role: .active, now: t0, state: s)
      #expect(d.result.isSuccess, "setup active: \(d.result)")
      s = d.state
    }
    if let reserve {
      let d = engine.addKey(
        issuer.key(reserve, slot: slot, edition: edition, exp: reserveExp ?? t0 + .days(40)), role: .reserve,
        now: t0,
        state: s)
      #expect(d.result.isSuccess, "setup reserve: \(d.result)")
      s = d.state
    }
    return s.acknowledging(through: s.lastTransitionID)
  }

  func violation<S>(_ decision: Decision<S>) -> RuleViolation? {
    if case .failure(let v) = decision.result { return v }
    return nil
  }

  func added(_ decision: Decision<AddedKey>) -> AddedKey? {
    if case .success(let a) = decision.result { return a }
    return nil
  }

  // MARK: A — adding an active key

  @Test func R2_anSVMProtectingBothOSTypesIsAdvisedAReserveForEach() {
    let serverOnly = state(active: "S-1", reserve: "S-2")
    #expect(serverOnly.reserveMissingForOSType == nil, "one OS type: nothing to advise")
    let both = state(active: "W-1", slot: .workstation, base: serverOnly)
    #expect(both.reserveMissingForOSType?.missing == .workstation)
    #expect(both.reserveMissingForOSType?.has == .server)
    let neither = state(active: "W-1", slot: .workstation, base: state(active: "S-1"))
    #expect(neither.reserveMissingForOSType == nil, "no reserve anywhere: the no_reserve warning says it")
    let each = state(active: "W-1", reserve: "W-2", slot: .workstation, base: serverOnly)
    #expect(each.reserveMissingForOSType == nil)
  }

  @Test func A1_validActiveKeyIsInstalledDurablyThenAnnounced() throws {
    let d = engine.addKey(
      issuer.key("KS-1", exp: t0 + .days(10)), role: .active, now: t0, state: LicenseState())
    #expect(added(d)?.slot == .server)
    #expect(d.state[.server]?.active?.serial == "KS-1")
    #expect(d.state[.server]?.active?.origin == .key)
    guard case .persist(let id) = d.actions.first else {
      Issue.record("first action must persist")
      return
    }
    #expect(id == 1 && d.state.lastTransitionID == 1)
    let event = try #require(d.renderedEvents.first)
    #expect(event.kind == .activeAdded && event.priority == 6 && event.transitionID == 1)
    #expect(event[field: .slot] == "server")
    #expect(event[field: .serial] == "KS-1")
    #expect(event[field: .expiresAt] == (t0 + .days(10)).rfc3339)
    #expect(d.state.outbox == [event])
  }

  @Test func A1_keyFailingTheChecksIsRefusedWithItsReasonAndChangesNothing() {
    let base = state(active: "KS-0")
    let stranger = TestIssuer(kid: "stranger")
    let cases: [(String, String, String?)] = [
      ("not a key", "invalid_key", "malformed"),
      (stranger.key("KS-1", exp: t0 + .days(1)), "untrusted_issuer", "untrusted_issuer"),
      (issuer.key("KS-1", exp: t0 + .days(1), product: "other-product"), "wrong_product", nil),
    ]
    for (text, code, reason) in cases {
      let d = engine.addKey(text, role: .active, now: t0, state: base)
      #expect(violation(d)?.rule == .A1)
      #expect(violation(d)?.code == code)
      #expect(violation(d)?.reason == reason)
      #expect(d.state == base)
      #expect(d.actions.isEmpty)
    }
  }

  @Test func A1_keyIsValidFromNbfInclusiveToExpExclusive() {
    let nbf = t0 + .days(1)
    let exp = t0 + .days(2)
    let key = issuer.key("KS-1", nbf: nbf, exp: exp)
    #expect(
      violation(engine.addKey(key, role: .active, now: nbf - oneMicrosecond, state: LicenseState()))?.code
        == "not_yet_valid")
    #expect(added(engine.addKey(key, role: .active, now: nbf, state: LicenseState())) != nil)
    #expect(added(engine.addKey(key, role: .active, now: exp - oneMicrosecond, state: LicenseState())) != nil)
    #expect(violation(engine.addKey(key, role: .active, now: exp, state: LicenseState()))?.code == "expired")
  }

  @Test func A2_keyOfAnotherSchemeIsRefusedWithoutConfirmationAndListsWhatWouldGo() {
    var base = state(active: "KS-S", reserve: "KS-SR")
    base = state(active: "KS-W", slot: .workstation, base: base)
    let key = issuer.key("KP-1", slot: .processors, exp: t0 + .days(20))
    let d = engine.addKey(key, role: .active, now: t0, state: base)
    let v = violation(d)
    #expect(v?.rule == .A2 && v?.code == "scheme_conflict")
    for serial in ["KS-S", "KS-SR", "KS-W"] { #expect(v?.message.contains(serial) == true) }
    #expect(d.state == base)
  }

  @Test func A2_confirmedSchemeChangeRemovesEveryKeyOfTheOldScheme() throws {
    var base = state(active: "KS-S", reserve: "KS-SR")
    base = state(active: "KS-W", slot: .workstation, base: base)
    let d = engine.addKey(
      issuer.key("KP-1", slot: .processors, exp: t0 + .days(20)), role: .active, replaceScheme: true, now: t0,
      state: base)
    #expect(Set(added(d)?.removedSerials ?? []) == ["KS-S", "KS-SR", "KS-W"])
    #expect(d.state.slotsInUse == [.processors])
    let event = try #require(d.renderedEvents.first)
    #expect(event[field: .removedSerials]?.split(separator: ",").count == 3)
  }

  @Test func A2_serverAndWorkstationKeysCoexistButProcessorsAndCoresDoNot() {
    let base = state(active: "KS-S")
    #expect(
      added(
        engine.addKey(
          issuer.key("KS-W", slot: .workstation, exp: t0 + .days(5)), role: .active, now: t0, state: base))
        != nil)
    let processors = state(active: "KP-1", slot: .processors)
    let d = engine.addKey(
      issuer.key("KC-1", slot: .cores, exp: t0 + .days(5)), role: .active, now: t0, state: processors)
    #expect(violation(d)?.code == "scheme_conflict")
  }

  @Test func A3_newActiveKeyReplacesTheSlotsActiveKey() throws {
    let base = state(active: "KS-1")
    let d = engine.addKey(
      issuer.key("KS-2", exp: t0 + .days(20)), role: .active, now: t0 + .days(1), state: base)
    #expect(added(d)?.replacedSerial == "KS-1")
    #expect(d.state[.server]?.active?.serial == "KS-2")
    #expect(d.renderedEvents.first?[field: .replacedSerial] == "KS-1")
  }

  @Test func A3_addingTheSameActiveKeyAgainChangesNothing() {
    let base = state(active: "KS-1")
    let d = engine.addKey(issuer.key("KS-1", exp: t0 + .days(10)), role: .active, now: t0, state: base)
    #expect(added(d)?.unchanged == true)
    #expect(d.state == base)
    #expect(d.persistedTransition == nil && d.renderedEvents.isEmpty)
  }

  @Test func A4_reserveExpiringAtOrBeforeTheNewActiveKeyIsDropped() throws {
    let base = state(active: "KS-1", reserve: "KS-R", reserveExp: t0 + .days(40))
    // New active expiring exactly when the reserve does: the reserve would never serve.
    let d = engine.addKey(issuer.key("KS-2", exp: t0 + .days(40)), role: .active, now: t0, state: base)
    #expect(added(d)?.droppedReserveSerial == "KS-R")
    #expect(d.state[.server]?.reserve == nil)
    let dropped = try #require(d.renderedEvents.first { $0.kind == .reserveDropped })
    #expect(dropped.priority == 4)
    #expect(dropped[field: .serial] == "KS-R")
    #expect(dropped[field: .activeSerial] == "KS-2")
    #expect(dropped[field: .slot] == "server")
    #expect(dropped[field: .rule] == "R5 expires_before_active")
  }

  @Test func A4_reserveOutlivingTheNewActiveKeyIsKept() {
    let base = state(active: "KS-1", reserve: "KS-R", reserveExp: t0 + .days(40))
    let d = engine.addKey(
      issuer.key("KS-2", exp: t0 + .days(40) - oneMicrosecond), role: .active, now: t0, state: base)
    #expect(added(d)?.droppedReserveSerial == nil)
    #expect(d.state[.server]?.reserve?.serial == "KS-R")
    #expect(!d.renderedEvents.contains { $0.kind == .reserveDropped })
  }

  @Test func A4_theReserveItselfAddedAsActiveLeavesTheReserveRole() {
    let base = state(active: "KS-1", reserve: "KS-R", reserveExp: t0 + .days(40))
    let d = engine.addKey(issuer.key("KS-R", exp: t0 + .days(40)), role: .active, now: t0, state: base)
    #expect(d.state[.server]?.active?.serial == "KS-R")
    #expect(d.state[.server]?.reserve == nil)
  }

  @Test(arguments: [LicenseType.commercial, .subscription])
  func A5_trialCannotReplaceAPaidActiveKey(paid: LicenseType) {
    let base = state(active: "KS-1", activeType: paid)
    let d = engine.addKey(
      issuer.key("KT-1", type: .trial, exp: t0 + .days(30)), role: .active, now: t0, state: base)
    #expect(violation(d)?.rule == .A5)
    #expect(violation(d)?.code == "trial_over_commercial")
    #expect(d.state == base)
  }

  @Test func A5_trialMayReplaceATrialAndPaidMayReplaceATrial() {
    let trial = state(active: "KT-1", activeType: .trial)
    #expect(
      added(
        engine.addKey(
          issuer.key("KT-2", type: .trial, exp: t0 + .days(30)), role: .active, now: t0, state: trial)) != nil
    )
    #expect(
      added(engine.addKey(issuer.key("KS-2", exp: t0 + .days(30)), role: .active, now: t0, state: trial))
        != nil)
  }

  @Test func A5_trialCannotRemoveAPaidKeyThroughASchemeChange() {
    let base = state(active: "KS-1")
    let d = engine.addKey(
      issuer.key("KT-P", slot: .processors, type: .trial, exp: t0 + .days(30)), role: .active,
      replaceScheme: true,
      now: t0, state: base)
    #expect(violation(d)?.code == "trial_over_commercial")
  }

  // MARK: R — adding a reserve key

  func expectRejected<S>(_ d: Decision<S>, rule: String, code: String, base: LicenseState) throws {
    let v = try #require(violation(d))
    #expect(v.rule.rawValue == rule)
    #expect(v.code == code)
    #expect(d.state == base, "a refused reserve changes nothing")
    #expect(d.persistedTransition == nil)
    let event = try #require(d.renderedEvents.first)
    #expect(d.renderedEvents.count == 1)
    #expect(event.kind == .reserveRejected && event.priority == 3)
    #expect(event[field: .rule] == "\(rule) \(code)")
    #expect(event.transitionID == nil)
  }

  @Test func R1_reserveNeedsAnActiveKey() throws {
    let d = engine.addKey(
      issuer.key("KS-R", exp: t0 + .days(40)), role: .reserve, now: t0, state: LicenseState())
    try expectRejected(d, rule: "R1", code: "no_active_key", base: LicenseState())
    #expect(d.renderedEvents.first?[field: .serial] == "KS-R")
    #expect(d.renderedEvents.first?[field: .slot] == "server")
    #expect(d.renderedEvents.first?[field: .expiresAt] == (t0 + .days(40)).rfc3339)
  }

  @Test func R2_reserveMustBeOfTheActiveKeysType() throws {
    let base = state(active: "KS-1")
    try expectRejected(
      engine.addKey(
        issuer.key("KW-R", slot: .workstation, exp: t0 + .days(40)), role: .reserve, now: t0, state: base),
      rule: "R2", code: "type_mismatch", base: base)
    try expectRejected(
      engine.addKey(
        issuer.key("KP-R", slot: .processors, exp: t0 + .days(40)), role: .reserve, now: t0, state: base),
      rule: "R2", code: "type_mismatch", base: base)
  }

  @Test func R2_eachOSTypeGetsItsOwnReserve() {
    var s = state(active: "KS-1", reserve: "KS-R")
    s = state(active: "KW-1", slot: .workstation, base: s)
    let d = engine.addKey(
      issuer.key("KW-R", slot: .workstation, exp: t0 + .days(40)), role: .reserve, now: t0, state: s)
    #expect(d.state[.workstation]?.reserve?.serial == "KW-R")
    #expect(d.state[.server]?.reserve?.serial == "KS-R")
  }

  @Test func R3_reserveMustBeOfTheSameEdition() throws {
    let base = state(active: "KS-1", edition: .enterprise)
    try expectRejected(
      engine.addKey(
        issuer.key("KS-R", edition: .standard, exp: t0 + .days(40)), role: .reserve, now: t0, state: base),
      rule: "R3", code: "edition_mismatch", base: base)
  }

  @Test(arguments: [LicenseType.trial, .subscription])
  func R4_trialAndSubscriptionKeysCannotBeReserves(type: LicenseType) throws {
    let base = state(active: "KS-1")
    try expectRejected(
      engine.addKey(
        issuer.key("KX-R", type: type, exp: t0 + .days(40)), role: .reserve, now: t0, state: base),
      rule: "R4", code: "not_reservable", base: base)
  }

  @Test func R4_commercialReserveNextToASubscriptionIsAllowed() {
    let base = state(active: "KS-1", activeType: .subscription)
    #expect(
      added(engine.addKey(issuer.key("KS-R", exp: t0 + .days(40)), role: .reserve, now: t0, state: base))
        != nil)
  }

  @Test func R5_reserveExpiringExactlyAtTheActiveKeysExpiryIsRefused() throws {
    let base = state(active: "KS-1", activeExp: t0 + .days(10))
    try expectRejected(
      engine.addKey(issuer.key("KS-R", exp: t0 + .days(10)), role: .reserve, now: t0, state: base),
      rule: "R5", code: "expires_before_active", base: base)
    try expectRejected(
      engine.addKey(issuer.key("KS-R", exp: t0 + .days(9)), role: .reserve, now: t0, state: base),
      rule: "R5", code: "expires_before_active", base: base)
  }

  @Test func R5_reserveExpiringOneMicrosecondAfterIsAccepted() {
    let base = state(active: "KS-1", activeExp: t0 + .days(10))
    let d = engine.addKey(
      issuer.key("KS-R", exp: t0 + .days(10) + oneMicrosecond), role: .reserve, now: t0, state: base)
    #expect(added(d) != nil)
  }

  @Test func R6_reserveValidFromExactlyTheTakeoverInstantIsAccepted() throws {
    let base = state(active: "KS-1", activeExp: t0 + .days(10))
    let d = engine.addKey(
      issuer.key("KS-R", nbf: t0 + .days(10), exp: t0 + .days(40)), role: .reserve, now: t0, state: base)
    #expect(added(d) != nil)
    let event = try #require(d.renderedEvents.first)
    #expect(event.kind == .reserveAdded && event.priority == 6)
    #expect(event[field: .serial] == "KS-R")
  }

  @Test func R6_reserveNotYetValidAtTakeoverIsRefused() throws {
    let base = state(active: "KS-1", activeExp: t0 + .days(10))
    try expectRejected(
      engine.addKey(
        issuer.key("KS-R", nbf: t0 + .days(10) + oneMicrosecond, exp: t0 + .days(40)), role: .reserve,
        now: t0,
        state: base),
      rule: "R6", code: "not_valid_at_takeover", base: base)
  }

  @Test func R6_reserveAlreadyExpiredIsRefused() throws {
    let base = state(active: "KS-1", activeExp: t0 + .days(10))
    try expectRejected(
      engine.addKey(issuer.key("KS-R", exp: t0 + .days(5)), role: .reserve, now: t0 + .days(6), state: base),
      rule: "R6", code: "expired", base: base)
  }

  @Test func R7_theActiveKeyCannotBeItsOwnReserve() throws {
    let base = state(active: "KS-1")
    try expectRejected(
      engine.addKey(issuer.key("KS-1", exp: t0 + .days(10)), role: .reserve, now: t0, state: base),
      rule: "R7", code: "duplicate", base: base)
  }

  @Test func R8_reserveIsCheckedForFormatSignatureIssuerAndProduct() throws {
    let base = state(active: "KS-1")
    let parts = issuer.key("KS-R", exp: t0 + .days(40)).split(separator: ".")
    let tampered = "\(parts[0]).\(Base64URL.encode("{}".utf8)).\(parts[2])"
    try expectRejected(
      engine.addKey(tampered, role: .reserve, now: t0, state: base), rule: "R8", code: "invalid_key",
      base: base)
    #expect(
      violation(engine.addKey(tampered, role: .reserve, now: t0, state: base))?.reason == "bad_signature")
    try expectRejected(
      engine.addKey(
        TestIssuer(kid: "x").key("KS-R", exp: t0 + .days(40)), role: .reserve, now: t0, state: base),
      rule: "R8", code: "untrusted_issuer", base: base)
    try expectRejected(
      engine.addKey(
        issuer.key("KS-R", exp: t0 + .days(40), product: "other"), role: .reserve, now: t0, state: base),
      rule: "R8", code: "wrong_product", base: base)
  }

  @Test func R9_aNewValidReserveReplacesTheOldOneAndSaysSo() throws {
    let base = state(active: "KS-1", reserve: "KS-R1")
    let d = engine.addKey(issuer.key("KS-R2", exp: t0 + .days(50)), role: .reserve, now: t0, state: base)
    #expect(added(d)?.replacedSerial == "KS-R1")
    #expect(d.state[.server]?.reserve?.serial == "KS-R2")
    #expect(d.renderedEvents.first?[field: .replacedSerial] == "KS-R1")
    guard case .reserveAdded(let event)? = d.events.first else {
      Issue.record("expected RESERVE_ADDED: \(d.events)")
      return
    }
    #expect(event.replacedSerial == "KS-R1" && event.key.serial == "KS-R2")
  }

  @Test func R9_anInvalidNewReserveKeepsTheOldOne() throws {
    let base = state(active: "KS-1", reserve: "KS-R1")
    try expectRejected(
      engine.addKey(issuer.key("KS-R2", exp: t0 + .days(5)), role: .reserve, now: t0, state: base),
      rule: "R5", code: "expires_before_active", base: base)
  }

  // MARK: P — promotion at expiry

  @Test func P1_promotionHappensAtExpNotAMicrosecondBefore() throws {
    let exp = t0 + .days(10)
    let base = state(active: "KS-1", reserve: "KS-R", activeExp: exp)
    let early = engine.timeReached(now: exp - oneMicrosecond, state: base)
    #expect(early.state[.server]?.active?.serial == "KS-1")
    let atExp = engine.timeReached(now: exp, state: base)
    #expect(atExp.state[.server]?.active?.serial == "KS-R")
    #expect(atExp.state[.server]?.reserve == nil)
    #expect(atExp.state[.server]?.active?.promotedAt == exp)
    let event = try #require(atExp.renderedEvents.first { $0.kind == .keyPromoted })
    #expect(event.priority == 5)
    #expect(event[field: .slot] == "server")
    #expect(event[field: .serial] == "KS-R")
    #expect(event[field: .previousSerial] == "KS-1")
    #expect(event[field: .delayMicroseconds] == "0")
    #expect(event[field: .expiresAt] == (t0 + .days(40)).rfc3339)
  }

  @Test func P1_theTimerIsArmedAtTheExpiryWhenNothingComesSooner() {
    let exp = t0 + .days(10)
    let base = state(active: "KS-1", reserve: "KS-R", activeExp: exp)
    // Every warning threshold is past or logged just before expiry.
    let lastHour = engine.timeReached(now: exp - .hours(1), state: base)
    #expect(engine.nextWake(lastHour.state)?.at == exp)
    #expect(
      engine.nextWake(lastHour.state)?.reason == .expiry(slot: .server, serial: "KS-1", takeover: .reserve))
  }

  @Test func P2_promotionIsPersistedBeforeItIsAnnouncedAndHappensOnce() throws {
    let exp = t0 + .days(10)
    let base = state(active: "KS-1", reserve: "KS-R", activeExp: exp)
    let d = engine.timeReached(now: exp, state: base)
    guard case .persist(let id) = d.actions.first else {
      Issue.record("persist must come first")
      return
    }
    #expect(d.state.outbox.map(\.transitionID) == d.renderedEvents.map(\.transitionID))
    #expect(d.state.outbox.allSatisfy { $0.transitionID == id })
    // Replaying the same instant, or a later one, on the persisted state does nothing more.
    for later in [exp, exp + .seconds(1), exp + .days(1)] {
      let again = engine.timeReached(now: later, state: d.state)
      #expect(!again.renderedEvents.contains { $0.kind == .keyPromoted })
    }
    #expect(d.state.acknowledging(through: id).outbox.isEmpty)
  }

  @Test func P3_aPromotionMissedWhileDownHappensAtStartAndSaysHowLate() throws {
    let exp = t0 + .days(10)
    let base = state(active: "KS-1", reserve: "KS-R", activeExp: exp)
    let d = engine.timeReached(now: exp + .hours(3), state: base)
    let event = try #require(d.renderedEvents.first { $0.kind == .keyPromoted })
    #expect(event[field: .delayMicroseconds] == String(TimeSpan.hours(3).microseconds))
    // The event says the agent was not running (not a clock step), three hours late.
    let promoted = d.events.compactMap { if case .keyPromoted(let p) = $0 { return p } else { return nil } }
    #expect(
      promoted.map(\.cause) == [.downtime] && promoted.map(\.lateness) == [TimeSpan.hours(3).microseconds])
  }

  @Test func P4_aReserveThatExpiredMeanwhileIsNotPromoted() throws {
    let base = state(active: "KS-1", reserve: "KS-R", activeExp: t0 + .days(10), reserveExp: t0 + .days(40))
    let d = engine.timeReached(now: t0 + .days(40), state: base)
    #expect(!d.renderedEvents.contains { $0.kind == .keyPromoted })
    let expired = try #require(d.renderedEvents.first { $0.kind == .licenseExpired })
    #expect(expired[field: .serial] == "KS-1")
    #expect(d.state[.server]?.active == nil && d.state[.server]?.reserve == nil)
    #expect(d.state[.server]?.expired?.serial == "KS-1")
  }

  @Test func P5_afterPromotionTheSchedulesFollowTheNewActiveKey() throws {
    let exp = t0 + .days(10)
    let base = state(active: "KS-1", reserve: "KS-R", activeExp: exp, reserveExp: exp + .days(60))
    let d = engine.timeReached(now: exp, state: base)
    #expect(engine.nextWake(d.state)?.at == exp + .days(60) - .days(30))
    #expect(engine.nextWake(d.state)?.reason == .warning(slot: .server, serial: "KS-R", threshold: .days(30)))
    #expect(d.state[.server]?.held?.warned.isEmpty == true)
  }

  @Test func P6_anActiveKeyExpiringWithNothingToTakeOverLeavesTheSlotExpired() throws {
    let exp = t0 + .days(10)
    let base = state(active: "KS-1", activeExp: exp)
    let d = engine.timeReached(now: exp, state: base)
    let event = try #require(d.renderedEvents.first { $0.kind == .licenseExpired })
    #expect(event.priority == 2)
    #expect(event[field: .serial] == "KS-1")
    #expect(event[field: .slot] == "server")
    #expect(event[field: .expiresAt] == exp.rfc3339)
    #expect(d.state[.server]?.expired?.serial == "KS-1")
    #expect(engine.nextWake(d.state) == nil)
    // The expired slot takes no reserve, but takes a new active key, which clears it.
    let r = engine.addKey(issuer.key("KS-R", exp: exp + .days(30)), role: .reserve, now: exp, state: d.state)
    #expect(violation(r)?.code == "no_active_key")
    let a = engine.addKey(issuer.key("KS-2", exp: exp + .days(30)), role: .active, now: exp, state: d.state)
    #expect(a.state[.server]?.expired == nil)
    #expect(a.state[.server]?.active?.serial == "KS-2")
  }

  @Test func P_slotsExpireAndPromoteIndependently() {
    var s = state(active: "KS-1", reserve: "KS-R", activeExp: t0 + .days(10))
    s = state(active: "KW-1", slot: .workstation, activeExp: t0 + .days(10), base: s)
    let d = engine.timeReached(now: t0 + .days(10), state: s)
    #expect(d.state[.server]?.active?.serial == "KS-R")
    #expect(d.state[.workstation]?.expired?.serial == "KW-1")
    #expect(Set(d.renderedEvents.map(\.kind)) == [.keyPromoted, .licenseExpired])
    #expect(Set(d.renderedEvents.map(\.transitionID)).count == 1)
  }

  // MARK: W, T

  @Test func W1_eachThresholdIsLoggedOnceWithThePriorityOfWhatTakesOver() throws {
    let exp = t0 + .days(100)
    var s = state(active: "KS-1", activeExp: exp)
    let at30 = engine.timeReached(now: exp - .days(30), state: s)
    let warning = try #require(at30.renderedEvents.first)
    #expect(warning.kind == .expiringSoon && warning.priority == 4)
    #expect(warning[field: .threshold] == "30d")
    #expect(warning[field: .takeover] == "none")
    s = at30.state
    #expect(engine.timeReached(now: exp - .days(29), state: s).renderedEvents.isEmpty)
    s = state(reserve: "KS-R", reserveExp: exp + .days(10), base: s)
    let at7 = engine.timeReached(now: exp - .days(7), state: s)
    #expect(at7.renderedEvents.first?.priority == 5)
    #expect(at7.renderedEvents.first?[field: .takeover] == "reserve")
    #expect(at7.renderedEvents.first?[field: .threshold] == "7d")
  }

  @Test func W1_aThresholdAlreadyPassedWhenTheKeyIsAddedIsNotLogged() {
    let s = state(active: "KS-1", activeExp: t0 + .days(5))
    #expect(s[.server]?.held?.warned == [.days(30), .days(7)])
    #expect(engine.nextWake(s)?.at == t0 + .days(4))
    #expect(engine.timeReached(now: t0 + .seconds(1), state: s).renderedEvents.isEmpty)
  }

  @Test func W1_afterDowntimeOnlyTheMostUrgentDueThresholdIsLogged() {
    let exp = t0 + .days(100)
    let s = state(active: "KS-1", activeExp: exp)
    let d = engine.timeReached(now: exp - .hours(12), state: s)
    #expect(d.renderedEvents.count == 1)
    #expect(d.renderedEvents.first?[field: .threshold] == "1d")
    #expect(d.state[.server]?.held?.warned == [.days(30), .days(7), .days(1)])
  }

  @Test func T1_aForwardClockStepPastExpiryPromotesAtOnce() throws {
    let exp = t0 + .days(10)
    let base = state(active: "KS-1", reserve: "KS-R", activeExp: exp)
    let d = engine.clockChanged(
      deltaMicroseconds: TimeSpan.days(11).microseconds, now: exp + .days(1), state: base)
    #expect(d.actions.first == .persist(transitionID: d.state.lastTransitionID))
    let clock = try #require(d.renderedEvents.first)
    #expect(clock.kind == .clockChanged && clock.priority == 4)
    #expect(clock[field: .clockDeltaMicroseconds] == String(TimeSpan.days(11).microseconds))
    #expect(d.renderedEvents.contains { $0.kind == .keyPromoted })
  }

  @Test func T1_aBackwardClockStepNeverUndoesAPromotion() throws {
    let exp = t0 + .days(10)
    let promoted = engine.timeReached(now: exp, state: state(active: "KS-1", reserve: "KS-R", activeExp: exp))
      .state
    let d = engine.clockChanged(
      deltaMicroseconds: -TimeSpan.days(2).microseconds, now: exp - .days(2), state: promoted)
    #expect(d.state == promoted)
    #expect(d.renderedEvents.map(\.kind) == [.clockChanged])
    #expect(d.renderedEvents.first?[field: .clockDeltaMicroseconds] == String(-TimeSpan.days(2).microseconds))
  }

  // MARK: Check and remove

  @Test func checkKeyAnswersLikeAddKeyButChangesAndLogsNothing() {
    let base = state(active: "KS-1")
    let good = issuer.key("KS-R", exp: t0 + .days(40))
    let bad = issuer.key("KS-R", exp: t0 + .days(5))
    #expect((try? engine.checkKey(good, role: .reserve, now: t0, state: base).get())?.slot == .server)
    guard case .failure(let v) = engine.checkKey(bad, role: .reserve, now: t0, state: base) else {
      Issue.record("expected a refusal")
      return
    }
    #expect(v.ruleAndCode == "R5 expires_before_active")
  }

  @Test func removeReserveRemovesItAndLogsWhoDidIt() throws {
    let base = state(active: "KS-1", reserve: "KS-R")
    let d = engine.removeReserve(slot: .server, now: t0, state: base)
    #expect(try d.result.get().key.serial == "KS-R")
    #expect(d.state[.server]?.reserve == nil)
    let event = try #require(d.renderedEvents.first)
    #expect(event.kind == .reserveDropped && event[field: .reason] == "removed-by-operator")
    let none = engine.removeReserve(slot: .server, now: t0, state: d.state)
    #expect(violation(none)?.code == "no_reserve")
  }

  /// The contract's table of events (§4): each event's MESSAGE_ID and priority, read from
  /// the contract itself, so that the identifiers are written in one place in the code.
  @Test func everyEventHasItsContractMessageIDAndPriority() throws {
    let contract = try String(contentsOfFile: SpecAhead.specFolder + "/contract.md", encoding: .utf8)
    var documented: [String: (id: String, priority: Int)] = [:]
    for row in contract.split(separator: "\n") where row.hasPrefix("| ") {
      let cells = row.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
      guard cells.count >= 3, cells[1].count == 32, cells[1].allSatisfy(\.isHexDigit),
        let priority = Int(cells[2].prefix { $0.isNumber })
      else { continue }
      documented[cells[0]] = (cells[1], priority)
    }
    for kind in EventKind.allCases {
      let row = try #require(documented[kind.rawValue], "\(kind.rawValue) is not in contract.md §4")
      #expect(kind.messageID == row.id, "\(kind.rawValue)")
      #expect(kind.priority == row.priority, "\(kind.rawValue)")
    }
    // The contract's events not yet implemented belong to issues still ahead.
    #expect(Set(documented.keys).subtracting(EventKind.allCases.map(\.rawValue)).isEmpty)
  }

  @Test func everyFieldNameTheEngineEmitsIsAValidJournalFieldName() {
    var s = state(active: "KS-1", reserve: "KS-R", activeExp: t0 + .days(10))
    var events = engine.timeReached(now: t0 + .days(9), state: s).renderedEvents
    s = engine.timeReached(now: t0 + .days(10), state: s).state
    events += engine.clockChanged(deltaMicroseconds: 5, now: t0 + .days(10), state: s).renderedEvents
    events += engine.addKey("x", role: .reserve, now: t0, state: s).renderedEvents
    #expect(!events.isEmpty)
    for event in events {
      for field in event.fields {
        #expect(JournalEvent.isValidFieldName(field.name.rawValue), "\(field.name)")
      }
    }
    #expect(!JournalEvent.isValidFieldName("license_slot"))
    #expect(!JournalEvent.isValidFieldName("_PID"))
    #expect(!JournalEvent.isValidFieldName("LICENSE-SLOT"))
    #expect(!JournalEvent.isValidFieldName("1ABC"))
  }
}

extension Result {
  var isSuccess: Bool {
    if case .success = self { return true }
    return false
  }
}
