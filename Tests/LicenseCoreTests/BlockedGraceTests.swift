import Foundation
import LicenseCore
import LicenseTestSupport
import Testing

/// Rule B2: a blocked active key keeps working until the end of its grace, from the instant
/// the agent learned of the block; then it counts as expired (P1–P3 for what takes over).
@Suite struct BlockedGraceTests {
  let issuer = TestIssuer()
  let t0 = TestIssuer.t0
  /// The active key's own `exp`, far after any grace here.
  let exp = TestIssuer.t0 + .days(100)
  /// When the list arrives, and so when the grace (8 days by default) ends.
  let learned = TestIssuer.t0 + .hours(5)
  var graceEnd: Timestamp { learned + .days(8) }
  let code = ActivationCode("abcde-12345-fghij-67890")!
  var engine: LicenseEngine { LicenseEngine(trust: issuer.trust) }

  func list(_ seq: Int, _ serials: [String]) throws -> String {
    try BlocklistParser.sign(
      Blocklist(
        compact: "", kid: issuer.jwk.kid, issuer: "test-issuer", sequence: seq, issuedAt: t0,
        product: "svm-protection",
        entries: serials.map { BlockedEntry(serial: $0, since: t0 - .days(2), reason: "resold") }),
      with: issuer.jwk)
  }

  /// KS-1 active until `exp`; KS-2 in reserve valid from `reserveFrom`; events delivered.
  func held(reserveFrom: Timestamp? = nil, reserve: Bool = true, code: ActivationCode? = nil) -> LicenseState
  {
    var d = engine.addKey(
      issuer.key("KS-1", exp: exp), role: .active, code: code, now: t0, state: LicenseState())
    if reserve {
      d = engine.addKey(
        issuer.key("KS-2", nbf: reserveFrom ?? t0 - .days(1), exp: exp + .days(90)), role: .reserve, now: t0,
        state: d.state)
    }
    return d.state.acknowledging(through: d.state.lastTransitionID)
  }

  /// The state once the list blocking KS-1 arrived at `learned`, events delivered.
  func blocked(_ state: LicenseState) throws -> LicenseState {
    let d = engine.addBlocklist(try list(1, ["KS-1"]), now: learned, state: state)
    return d.state.acknowledging(through: d.state.lastTransitionID)
  }

  func promoted<S>(_ d: Decision<S>) -> KeyPromoted? {
    for case .keyPromoted(let p) in d.events { return p }
    return nil
  }

  @Test func B2_keyBlockedIsCriticalAtOnceWithTheGraceEndAndTheRemedy() throws {
    let d = engine.addBlocklist(try list(1, ["KS-1"]), now: learned, state: held())
    let event = try #require(d.renderedEvents.first { $0.kind == .keyBlocked })
    #expect(event.priority == 2 && event.kind.messageID == "e55a64d5379b41d8ba3a6e6c859241a8")
    #expect(event[field: .role] == "active" && event[field: .serial] == "KS-1")
    #expect(event[field: .graceEndsAt] == graceEnd.rfc3339)
    #expect(event[field: .blockedSince] == (t0 - .days(2)).rfc3339 && event[field: .reason] == "resold")
    #expect(event.message.contains("reserve key KS-2 takes over"), "\(event.message)")
    #expect(d.state[.server]?.held?.blocked?.graceEndsAt == graceEnd)
    #expect(d.state[.server]?.held?.endsAt == graceEnd)
    #expect(try d.result.get().blocks.first?.graceEndsAt == graceEnd)
    // The engine's next wake counts to the grace's end (its 7-day warning), not to `exp`.
    #expect(engine.nextWake(d.state)?.at == graceEnd - .days(7))
    // Without a reserve, the remedy is to add one.
    let bare = engine.addBlocklist(try list(1, ["KS-1"]), now: learned, state: held(reserve: false))
    let alone = try #require(bare.renderedEvents.first { $0.kind == .keyBlocked })
    #expect(alone.message.contains("nothing takes over") && alone.message.contains("add-key --reserve"))
    #expect(engine.lapsesAt(bare.state[.server]) == graceEnd)
  }

  @Test func B2_theReserveTakesOverAtTheGraceEndToTheMicrosecond() throws {
    let state = try blocked(held())
    let before = engine.timeReached(now: graceEnd - TimeSpan(microseconds: 1), state: state)
    #expect(before.state[.server]?.active?.serial == "KS-1" && promoted(before) == nil)
    let d = engine.timeReached(now: graceEnd, state: state)
    let p = try #require(promoted(d))
    #expect(p.key.serial == "KS-2" && p.previous.serial == "KS-1" && p.lateness == 0)
    #expect(p.previous.expiresAt == graceEnd)
    let event = try #require(d.renderedEvents.first { $0.kind == .keyPromoted })
    #expect(event.message.contains("reached the end of its grace"), "\(event.message)")
    #expect(d.actions.first == .persist(transitionID: d.state.lastTransitionID), "durable before announced")
    #expect(d.state[.server]?.held?.blocked == nil)
    // After downtime: caught up with its delay from the grace's end.
    let late = engine.timeReached(now: graceEnd + .minutes(3), state: state)
    #expect(promoted(late)?.lateness == TimeSpan.minutes(3).microseconds)
  }

  @Test func B2_aReserveValidOnlyLaterLeavesTheSlotExpiredUntilItsNotBefore() throws {
    let nbf = graceEnd + .days(2)
    let state = try blocked(held(reserveFrom: nbf))
    let d = engine.timeReached(now: graceEnd, state: state)
    #expect(promoted(d) == nil)
    let expired = try #require(d.renderedEvents.first { $0.kind == .licenseExpired })
    #expect(expired[field: .serial] == "KS-1" && expired[field: .expiresAt] == graceEnd.rfc3339)
    #expect(expired.message.contains("KS-2") && expired.message.contains(nbf.description))
    let held = try #require(d.state[.server]?.held)
    #expect(held.isLapsed && held.reserve?.serial == "KS-2")
    #expect(engine.health(d.state, now: graceEnd) == .lapsedOrAlert)
    #expect(engine.nextWake(d.state)?.at == nbf)
    var waiting = d.state.acknowledging(through: d.state.lastTransitionID)
    // Time passing before the `nbf` changes nothing and logs nothing again.
    let again = engine.timeReached(now: nbf - TimeSpan(microseconds: 1), state: waiting)
    #expect(again.persistedTransition == nil && again.events.isEmpty)
    // Across a restart.
    waiting = try JSONDecoder().decode(LicenseState.self, from: JSONEncoder().encode(waiting))
    let p = try #require(promoted(engine.timeReached(now: nbf, state: waiting)))
    #expect(p.key.serial == "KS-2" && p.lateness == 0, "measured from the reserve's nbf")
  }

  @Test func B2_withAnActivationCodeTheAgentRenewsAtOnceAtTheGraceEnd() throws {
    let state = try blocked(held(reserve: false, code: code))
    let d = engine.timeReached(now: graceEnd, state: state)
    let request = try #require(d.activations.first)
    #expect(request.kind == .atExpiry && request.attempt == 1 && request.currentSerial == "KS-1")
    #expect(d.state[.server]?.lapsed?.expired.expiresAt == graceEnd)
    #expect(d.actions.first == .persist(transitionID: d.state.lastTransitionID))
    // The alert delay (C4) counts from the grace's end.
    #expect(engine.nextWake(d.state)?.at == graceEnd + EngineConfiguration().alertAfter)
  }

  @Test func B2_theGraceIsFixedWhenLearnedAcrossRestartsNewerListsAndClockSteps() throws {
    var state = try blocked(held())
    state = try JSONDecoder().decode(LicenseState.self, from: JSONEncoder().encode(state))
    #expect(state[.server]?.held?.endsAt == graceEnd)
    // A newer list repeating the entry does not move the grace, nor say it again.
    let newer = engine.addBlocklist(try list(2, ["KS-1", "KS-7"]), now: learned + .days(3), state: state)
    #expect(newer.state[.server]?.held?.endsAt == graceEnd)
    #expect(!newer.renderedEvents.contains { $0.kind == .keyBlocked })
    state = newer.state.acknowledging(through: newer.state.lastTransitionID)
    // A backward step does not move it (nothing is promoted; the next wake is the same).
    let back = engine.clockChanged(
      deltaMicroseconds: -TimeSpan.days(2).microseconds, now: learned, state: state)
    #expect(promoted(back) == nil && back.state[.server]?.held?.endsAt == graceEnd)
    #expect(engine.nextWake(back.state)?.at == graceEnd - .days(7))
    // A forward step past it promotes at once, late by the step.
    let forward = engine.clockChanged(
      deltaMicroseconds: TimeSpan.days(9).microseconds, now: graceEnd + .hours(1), state: state)
    let p = try #require(promoted(forward))
    #expect(p.cause == .clockStep && p.lateness == TimeSpan.hours(1).microseconds)
  }

  @Test func B2_expiringSoonCountsToTheGraceEnd() throws {
    let d = engine.addBlocklist(try list(1, ["KS-1"]), now: learned, state: held(reserve: false))
    // The 30-day threshold had passed when the block was learned: not logged late (W1).
    #expect(!d.renderedEvents.contains { $0.kind == .expiringSoon })
    let state = d.state.acknowledging(through: d.state.lastTransitionID)
    #expect(engine.nextWake(state)?.at == graceEnd - .days(7))
    let early = engine.timeReached(now: graceEnd - .days(7) - TimeSpan(microseconds: 1), state: state)
    #expect(!early.renderedEvents.contains { $0.kind == .expiringSoon })
    let warned = engine.timeReached(now: graceEnd - .days(7), state: state)
    let soon = try #require(warned.renderedEvents.first { $0.kind == .expiringSoon })
    #expect(soon[field: .threshold] == "7d" && soon[field: .expiresAt] == graceEnd.rfc3339)
    #expect(soon[field: .takeover] == "none" && soon.priority == 4)
  }

  @Test func B2_aNewerListThatUnblocksGivesTheKeyItsExpiryBack() throws {
    let state = try blocked(held())
    let d = engine.addBlocklist(try list(2, []), now: learned + .days(1), state: state)
    #expect(d.state[.server]?.held?.blocked == nil && d.state[.server]?.held?.endsAt == exp)
    #expect(promoted(engine.timeReached(now: graceEnd, state: d.state)) == nil)
    #expect(engine.nextWake(d.state)?.at == exp - .days(30))
  }

  @Test func B2_aGraceOfZeroEndsTheBlockedKeyAtOnce() throws {
    let zero = LicenseEngine(
      configuration: EngineConfiguration(blockingGrace: .seconds(0)), trust: issuer.trust)
    let d = zero.addBlocklist(try list(1, ["KS-1"]), now: learned, state: held())
    let p = try #require(promoted(zero.timeReached(now: learned, state: d.state)))
    #expect(p.key.serial == "KS-2" && p.lateness == 0)
  }

  @Test func B3_aBlockedPendingKeyIsDroppedWithKeyBlocked() throws {
    let a = engine.addKey(
      issuer.key("KS-1", exp: exp), role: .active, code: code, now: t0, state: LicenseState(stateID: "svm-1"))
    let due = try #require(engine.aheadAttemptDue(a.state[.server]))
    var d = engine.timeReached(now: due, state: a.state)
    d = engine.attemptSucceeded(
      slot: .server, key: issuer.key("KS-3", nbf: exp, exp: exp + .days(365)), ahead: true, now: due,
      state: d.state)
    #expect(d.state[.server]?.pending?.serial == "KS-3")
    let b = engine.addBlocklist(try list(1, ["KS-3"]), now: due, state: d.state)
    #expect(b.state[.server]?.pending == nil)
    let kinds = b.renderedEvents.map(\.kind)
    #expect(kinds == [.keyBlocked, .reserveDropped])
    #expect(b.renderedEvents.first?[field: .role] == "pending")
    #expect(b.renderedEvents.first?[field: .graceEndsAt] == nil)
    #expect(b.renderedEvents.last?[field: .reason] == "blocked")
  }

  @Test func B2_theDowngradeFormForgetsTheBlock() throws {
    let nbf = graceEnd + .days(2)
    let lapsed = engine.timeReached(now: graceEnd, state: try blocked(held(reserveFrom: nbf))).state
    let old = lapsed.readableBy040
    #expect(old.blocklists.isEmpty && old[.server]?.held?.blocked == nil)
    #expect(lapsed.readableBy030[.server] == old[.server])
    #expect(old[.server]?.reserve?.serial == "KS-2", "the reserve is kept")
    #expect(!old.outbox.contains { $0.kind == .keyBlocked })
    #expect(!old.outbox.flatMap(\.fields).contains { $0.name == .graceEndsAt })
  }
}

extension BlockedGraceTests {
  @Test func B2_aBlockInAStateWrittenByAnOlderVersionIsAppliedFromWhenItWasLearned() throws {
    // A build of B1 without B2 kept the list but applied no grace: no block on the slot.
    var old = try blocked(held())
    old[.server]?.held.map { held in
      var unblocked = held
      unblocked.blocked = nil
      old[.server] = .held(unblocked)
    }
    old = try JSONDecoder().decode(LicenseState.self, from: JSONEncoder().encode(old))
    #expect(old[.server]?.held?.blocked == nil && !old.blocklists.isEmpty)
    let d = engine.timeReached(now: learned + .days(1), state: old)
    #expect(d.state[.server]?.held?.endsAt == graceEnd)
    #expect(d.renderedEvents.contains { $0.kind == .keyBlocked })
    // Past the grace's end, the reserve takes over at once, late by what passed.
    let late = engine.timeReached(now: graceEnd + .hours(2), state: old)
    #expect(promoted(late)?.lateness == TimeSpan.hours(2).microseconds)
  }
}

/// What issue 25's attack found, as core tests.
extension BlockedGraceTests {
  func list(_ seq: Int, _ entries: [(String, String)], iss: String = "test-issuer") throws -> String {
    try BlocklistParser.sign(
      Blocklist(
        compact: "", kid: issuer.jwk.kid, issuer: iss, sequence: seq, issuedAt: t0, product: "svm-protection",
        entries: entries.map { BlockedEntry(serial: $0.0, since: t0 - .days(2), reason: $0.1) }),
      with: issuer.jwk)
  }

  @Test func B2_whenOneListBlocksTheActiveKeyAndItsReserveKeyBlockedSaysNothingTakesOver() throws {
    let d = engine.addBlocklist(try list(1, ["KS-1", "KS-2"]), now: learned, state: held())
    #expect(d.renderedEvents.map(\.kind) == [.keyBlocked, .reserveDropped, .keyBlocked])
    let active = try #require(d.renderedEvents.last)
    #expect(
      active[field: .role] == "active" && active.message.contains("nothing takes over"), "\(active.message)")
    #expect(d.state[.server]?.held?.reserve == nil && engine.lapsesAt(d.state[.server]) == graceEnd)
  }

  @Test func B1_theSameListAgainIsKnownByItsDigestAndTheTextIsNotKept() throws {
    let text = try list(1, [("KS-1", "resold")])
    let state = try blocked(held())
    let kept = try #require(state.blocklists["test-issuer"])
    #expect(kept.digest == SHA256.digest(text))
    let encoded = String(decoding: try JSONEncoder().encode(state), as: UTF8.self)
    #expect(!encoded.contains(text), "the signed text is not in the state")
    let again = engine.addBlocklist("\n" + text + "\n", now: learned + .days(1), state: state)
    #expect(try again.result.get().unchanged && again.persistedTransition == nil)
    #expect(try again.result.get().blocks.first?.graceEndsAt == graceEnd)
  }

  @Test func B1_aNewerListsReasonIsShownAndTheGraceKept() throws {
    let state = try blocked(held())
    let d = engine.addBlocklist(try list(2, [("KS-1", "chargeback")]), now: learned + .days(1), state: state)
    #expect(d.state[.server]?.held?.blocked?.reason == "chargeback")
    #expect(d.state[.server]?.held?.endsAt == graceEnd)
    #expect(!d.renderedEvents.contains { $0.kind == .keyBlocked })
  }

  @Test func B1_namesAreTextAndReasonsLoseFormatCharacters() throws {
    let bidi = engine.addBlocklist(
      try list(1, [("KS-1", "a\u{202E}b\u{2028}c\u{200B}d")]), now: learned, state: held())
    #expect(bidi.state[.server]?.held?.blocked?.reason == "a b c d")
    for iss in ["a\nb", "x\u{1B}[31m", "r\u{202E}l"] {
      let refused = engine.addBlocklist(try list(1, [("KS-1", "")], iss: iss), now: learned, state: held())
      guard case .failure(let violation) = refused.result else {
        Issue.record("\(iss.debugDescription) was accepted")
        continue
      }
      #expect(violation.code == "invalid_blocklist" && !violation.message.contains("\u{1B}"))
    }
  }

  @Test func B1_theListsOfAtMostSixteenIssuersAreKept() throws {
    var state = held()
    for n in 0..<LicenseEngine.maximumBlocklists {
      state = engine.addBlocklist(try list(1, [], iss: "issuer-\(n)"), now: learned, state: state).state
    }
    let refused = engine.addBlocklist(try list(1, [], iss: "one-too-many"), now: learned, state: state)
    guard case .failure(let violation) = refused.result else { throw BlockedGraceError() }
    #expect(violation.code == "too_many_blocklists" && refused.state == state)
    // A kept issuer's newer list is still taken.
    #expect(
      engine.addBlocklist(try list(2, [], iss: "issuer-3"), now: learned, state: state).result.isSuccess)
  }
}

struct BlockedGraceError: Error {}

extension BlockedGraceTests {
  /// A kept list is written at every state change: its entries are one line each, not a JSON
  /// object each (issue 25's attack: 10,000 entries made every write 2.75 MB).
  @Test func B1_aKeptListIsWrittenCompactlyAndReadBackTheSame() throws {
    let entries = (0..<2000).map { ("SERIAL-\(100_000 + $0)", $0 % 3 == 0 ? "" : "resold \($0)") }
    let d = engine.addBlocklist(try list(1, entries), now: learned, state: held())
    let data = try JSONEncoder().encode(d.state)
    #expect(data.count < 2000 * 64, "\(data.count) bytes for 2,000 entries")
    let read = try JSONDecoder().decode(LicenseState.self, from: data)
    #expect(read.blocklists == d.state.blocklists)
    #expect(read.blocklists["test-issuer"]?.entry(serial: "SERIAL-100004")?.reason == "resold 4")
  }
}

extension BlockedGraceTests {
  /// While a slot waits for a reserve valid only after the grace's end: removing that reserve
  /// leaves it expired without saying so twice; a new active key ends the wait at once.
  @Test func B2_whileWaitingForTheReserveRemovingItOrAddingAnActiveKey() throws {
    let nbf = graceEnd + .days(2)
    let d = engine.timeReached(now: graceEnd, state: try blocked(held(reserveFrom: nbf)))
    let waiting = d.state.acknowledging(through: d.state.lastTransitionID)
    #expect(waiting[.server]?.held?.isLapsed == true)
    let removed = engine.removeReserve(slot: .server, now: graceEnd + .hours(1), state: waiting)
    let lapsed = engine.timeReached(now: graceEnd + .hours(1), state: removed.state)
    #expect(lapsed.state[.server]?.lapsed?.expired.expiresAt == graceEnd)
    #expect(!lapsed.renderedEvents.contains { $0.kind == .licenseExpired }, "said once, at the grace's end")
    let added = engine.addKey(
      issuer.key("KS-9", exp: exp + .days(10)), role: .active, now: graceEnd + .hours(1), state: waiting)
    #expect(added.state[.server]?.held?.active.serial == "KS-9")
    #expect(added.state[.server]?.held?.isLapsed == false && added.state[.server]?.held?.blocked == nil)
    #expect(engine.health(added.state, now: graceEnd + .hours(1)) != .lapsedOrAlert)
  }
}
