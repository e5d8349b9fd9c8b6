import Foundation
import LicenseCore
import LicenseTestSupport
import Testing

/// Rules U1–U3: the consumer's usage reports, graded against the slot's active key.
@Suite struct UsageTests {
  let issuer = TestIssuer()
  let t0 = TestIssuer.t0
  let exp = TestIssuer.t0 + .days(10)
  var engine: LicenseEngine { LicenseEngine(trust: issuer.trust) }

  /// A key for `slot` licensing `units`.
  func key(_ serial: String, units: Int, slot: Slot = .server, nbf: Timestamp? = nil, exp: Timestamp)
    -> String
  {
    issuer.key(
      TestIssuer.claims(serial: serial, slot: slot, units: units, nbf: nbf ?? t0 - .days(1), exp: exp))
  }

  /// An active key `KS-1` of `units` in the server slot, added at `t0`, events delivered.
  func held(units: Int = 10, code: ActivationCode? = nil) -> LicenseState {
    let d = engine.addKey(
      key("KS-1", units: units, exp: exp), role: .active, code: code, now: t0, state: LicenseState())
    #expect(d.result.isSuccess)
    return d.state.acknowledging(through: d.state.lastTransitionID)
  }

  /// Reports `units` at `now`; the state with its events delivered, and the events.
  func report(
    _ units: Int, slot: Slot = .server, at now: Timestamp? = nil, _ state: LicenseState,
    engine: LicenseEngine? = nil
  ) -> (LicenseState, [JournalEvent]) {
    let d = (engine ?? self.engine).reportUsage(
      slot: slot, units: units, now: now ?? t0 + .hours(1), state: state)
    #expect(d.result.isSuccess, "\(d.result)")
    return (d.state.acknowledging(through: d.state.lastTransitionID), d.renderedEvents)
  }

  @Test func U1_aSlotNobodyReportedForHasUnknownUsageNeverZero() throws {
    let state = held()
    #expect(state.usage[.server] == nil)
    // Unknown is not "0 of 10": no band, and a reserve of any size is not short of it.
    let small = engine.addKey(
      key("KS-2", units: 1, exp: exp + .days(30)), role: .reserve, now: t0, state: state)
    #expect(try small.result.get().unitsShort == nil)
    #expect(small.renderedEvents.first?[field: .warning] == nil)
    // Zero reported is a report: known, normal.
    let (zero, events) = report(0, state)
    #expect(zero.usage[.server]?.units == 0)
    #expect(events.isEmpty)
  }

  @Test func U1_aReportReplacesThePreviousOneAndIsKeptDurablyWithItsInstant() throws {
    let (first, _) = report(4, at: t0 + .hours(1), held())
    let d = engine.reportUsage(slot: .server, units: 7, now: t0 + .hours(2), state: first)
    #expect(d.persistedTransition != nil, "a report is a durable change")
    #expect(d.state.usage[.server]?.units == 7)
    #expect(d.state.usage[.server]?.reportedAt == t0 + .hours(2))
    // What is written is what is read back (a restart keeps it).
    let restored = try JSONDecoder().decode(LicenseState.self, from: JSONEncoder().encode(d.state))
    #expect(restored.usage == d.state.usage)
    #expect(try #require(restored.usage[.server]).units == 7)
  }

  @Test func U1_refusedReportsNameTheProblemAndChangeNothing() throws {
    let state = held()
    for (slot, units, code) in [
      (Slot.server, -1, "invalid_units"), (.server, UsageReport.maximumUnits + 1, "invalid_units"),
      (.workstation, 3, "slot_not_in_use"), (.cores, 3, "slot_not_in_use"),
    ] {
      let d = engine.reportUsage(slot: slot, units: units, now: t0, state: state)
      guard case .failure(let violation) = d.result else {
        Issue.record("\(slot) \(units) accepted")
        continue
      }
      #expect(violation.rule == .U1 && violation.code == code, "\(violation)")
      #expect(
        violation.message.contains(code == "invalid_units" ? "from 0 to" : "the slots in use are: server"))
      #expect(d.state == state && d.actions.isEmpty)
    }
    let empty = engine.reportUsage(slot: .server, units: 1, now: t0, state: LicenseState())
    if case .failure(let violation) = empty.result {
      #expect(violation.message.contains("add a key first"))
    } else {
      Issue.record("a report without any key was accepted")
    }
  }

  @Test func U1_aReportIsStaleAfterStaleAfterNotBefore() throws {
    let engine = LicenseEngine(
      configuration: EngineConfiguration(usageStaleAfter: .hours(6)), trust: issuer.trust)
    let (state, _) = report(3, at: t0, held(), engine: engine)
    let report = try #require(state.usage[.server])
    #expect(!engine.isStale(report, now: t0 + .hours(6)))
    #expect(engine.isStale(report, now: t0 + .hours(6) + TimeSpan(microseconds: 1)))
    #expect(!self.engine.isStale(report, now: t0 + .hours(23)), "the default is a day")
  }

  @Test(arguments: [
    (10, 8, UsageBand.normal), (10, 9, .high), (10, 10, .high), (10, 11, .exceeded), (10, 12, .critical),
    (100, 89, .normal), (100, 90, .high), (100, 100, .high), (100, 101, .exceeded), (100, 110, .exceeded),
    (100, 111, .critical), (1, 0, .normal), (1, 1, .high), (1, 2, .critical),
  ])
  func U2_theBandsAtTheirExactBounds(licensed: Int, used: Int, band: UsageBand) {
    #expect(UsageBand.of(used: used, licensed: licensed) == band)
  }

  @Test func U2_eachBandIsLoggedOnceWhenEnteredAndAgainAfterGoingUnder90() throws {
    var state = held(units: 10)
    var logged: [(Int, EventKind, Int)] = []
    for (hour, units) in [9, 9, 10, 11, 12, 11, 12, 9, 8, 9, 12].enumerated() {
      let (next, events) = report(units, at: t0 + .hours(Int64(hour + 1)), state)
      state = next
      logged += events.map { (units, $0.kind, $0.priority) }
    }
    #expect(logged.map(\.0) == [9, 11, 12, 9, 12], "\(logged)")
    #expect(
      logged.map(\.1) == [
        .licenseUsageHigh, .licenseLimitExceeded, .licenseLimitExceeded, .licenseUsageHigh,
        .licenseLimitExceeded,
      ])
    #expect(logged.map(\.2) == [5, 4, 2, 5, 2])
    // The fields of contract §4.
    let (_, events) = report(11, held(units: 10))
    let exceeded = try #require(events.first)
    #expect(exceeded[field: .slot] == "server" && exceeded[field: .serial] == "KS-1")
    #expect(exceeded[field: .expiresAt] == exp.rfc3339)
    #expect(exceeded[field: .units] == "10" && exceeded[field: .unitsUsed] == "11")
    #expect(exceeded[field: .usagePercent] == "110.0")
    #expect(exceeded.message.contains("11 units in use of the 10"))
  }

  @Test func U2_aLapsedSlotKeepsItsReportButHasNothingToGradeAgainst() throws {
    let (reported, _) = report(30, held(units: 10))
    let lapsed = engine.timeReached(now: exp, state: reported)
    #expect(lapsed.state[.server]?.lapsed != nil)
    #expect(lapsed.state.usage[.server]?.units == 30)
    let d = engine.reportUsage(slot: .server, units: 40, now: exp + .hours(1), state: lapsed.state)
    #expect(try d.result.get().band == nil)
    #expect(d.renderedEvents.isEmpty)
  }

  @Test func U2_U3_aPromotionToAKeyWithFewerUnitsSaysSoAndIsGradedAtOnce() throws {
    var state = held(units: 100)
    let reserve = engine.addKey(
      key("KS-2", units: 40, exp: exp + .days(365)), role: .reserve, now: t0, state: state)
    state = reserve.state.acknowledging(through: reserve.state.lastTransitionID)
    // Graded against KS-1: 50 of 100 is normal, and nothing is logged.
    let (reported, events) = report(50, state)
    #expect(events.isEmpty)
    let promoted = engine.timeReached(now: exp, state: reported)
    let kinds = promoted.renderedEvents.map(\.kind)
    #expect(kinds == [.keyPromoted, .licenseLimitExceeded], "\(kinds)")
    let keyPromoted = promoted.renderedEvents[0]
    #expect(keyPromoted[field: .serial] == "KS-2")
    #expect(keyPromoted[field: .warning] == "reserve_units_short")
    #expect(keyPromoted[field: .units] == "40" && keyPromoted[field: .unitsUsed] == "50")
    #expect(keyPromoted.message.contains("10 are not covered"))
    let exceeded = promoted.renderedEvents[1]
    #expect(
      exceeded.priority == 2 && exceeded[field: .serial] == "KS-2"
        && exceeded[field: .usagePercent] == "125.0")
    // Both in the outbox of the one durable transition.
    #expect(promoted.state.outbox.map(\.kind) == [.keyPromoted, .licenseLimitExceeded])
    #expect(Set(promoted.state.outbox.map(\.transitionID)) == [promoted.persistedTransition])
  }

  @Test func U3_aReserveShortOfTheUsageIsAcceptedWithAWarningEverywhere() throws {
    let (state, _) = report(50, held(units: 100))
    let checked = try engine.checkKey(
      key("KS-2", units: 45, exp: exp + .days(365)), role: .reserve, now: t0 + .hours(2), state: state
    ).get()
    #expect(checked.unitsShort == UnitsShort(units: 45, used: 50))
    let d = engine.addKey(
      key("KS-2", units: 45, exp: exp + .days(365)), role: .reserve, now: t0 + .hours(2), state: state)
    let added = try d.result.get()
    #expect(added.unitsShort?.uncovered == 5)
    #expect(d.state[.server]?.reserve?.serial == "KS-2", "accepted: R1–R9 decide")
    let event = try #require(d.renderedEvents.first { $0.kind == .reserveAdded })
    #expect(event[field: .warning] == "reserve_units_short")
    #expect(event[field: .units] == "45" && event[field: .unitsUsed] == "50")
    #expect(
      event.message.contains("Warning (reserve_units_short)")
        && event.message.contains("5 would be uncovered"))
    // A reserve that covers the usage exactly carries no warning.
    let enough = engine.addKey(
      key("KS-3", units: 50, exp: exp + .days(365)), role: .reserve, now: t0 + .hours(2), state: state)
    #expect(try enough.result.get().unitsShort == nil)
    #expect(enough.renderedEvents.allSatisfy { $0[field: .warning] == nil })
    // Re-added as it is: unchanged, still warned.
    let again = engine.addKey(
      key("KS-2", units: 45, exp: exp + .days(365)), role: .reserve, now: t0 + .hours(3), state: d.state)
    #expect(try again.result.get().unchanged && (try again.result.get().unitsShort) != nil)
  }

  @Test func U3_aPendingKeyShortOfTheUsageSaysSoAtTakeover() throws {
    let code = ActivationCode("abcde-12345-fghij-67890")!
    let (state, _) = report(8, held(units: 10, code: code))
    let due = try #require(engine.aheadAttemptDue(state[.server]))
    let asked = engine.timeReached(now: due, state: state).state
    let got = engine.attemptSucceeded(
      slot: .server, key: key("KS-2", units: 5, nbf: exp, exp: exp + .days(365)), ahead: true,
      now: due + .seconds(1),
      state: asked)
    let pending = try #require(got.state[.server]?.pending)
    #expect(got.state.unitsShort(pending.key, slot: .server)?.uncovered == 3)
    let promoted = engine.timeReached(
      now: exp, state: got.state.acknowledging(through: got.state.lastTransitionID))
    let event = try #require(promoted.renderedEvents.first { $0.kind == .keyPromoted })
    #expect(event[field: .warning] == "reserve_units_short")
    #expect(promoted.renderedEvents.contains { $0.kind == .licenseLimitExceeded && $0.priority == 2 })
  }

  @Test func A2_U1_aSchemeChangeDropsTheUsageOfSlotsThatNoLongerExist() throws {
    let (state, _) = report(5, held())
    let d = engine.addKey(
      key("KP-1", units: 4, slot: .processors, exp: exp), role: .active, replaceScheme: true,
      now: t0 + .hours(2),
      state: state)
    #expect(d.result.isSuccess)
    #expect(d.state.usage.isEmpty)
  }

  @Test func U2_theLoggedBandSurvivesARestartSoNothingIsLoggedTwice() throws {
    let (state, events) = report(11, held(units: 10))
    #expect(events.count == 1)
    let restored = try JSONDecoder().decode(LicenseState.self, from: JSONEncoder().encode(state))
    let (_, again) = report(11, at: t0 + .hours(3), restored)
    #expect(again.isEmpty)
  }

  /// A downgrade to 0.1.0 (state schema 1) or 0.2.0 keeps only what they can read: no usage event
  /// and no field it does not know, in the outbox or among the events delivered.
  @Test func U1_aStateWrittenForADowngradeHoldsNothingAnOlderVersionCannotRead() throws {
    var state = held(units: 100)
    state = engine.reportUsage(slot: .server, units: 95, now: t0 + .hours(1), state: state).state
    state =
      engine.addKey(key("KS-2", units: 40, exp: exp + .days(365)), role: .reserve, now: t0, state: state)
      .state
    #expect(state.outbox.contains { $0.kind == .licenseUsageHigh })
    #expect(state.outbox.contains { $0[field: .warning] != nil })
    state.delivered = state.outbox.map { DeliveredEvent(event: $0, deliveredAt: t0 + .hours(1)) }
    for (version, data) in [
      ("0.1.0", try JSONEncoder().encode(state.version1)),
      ("0.2.0", try JSONEncoder().encode(state.readableBy020)),
    ] {
      let text = String(decoding: data, as: UTF8.self)
      for new in ["LICENSE_USAGE_HIGH", "LICENSE_WARNING", "LICENSE_UNITS", "\"units\""] {
        #expect(!text.contains(new), "\(new) in the state for \(version)")
      }
      #expect(text.contains("RESERVE_ADDED"), "the events \(version) knows stay")
    }
    // What this version reads back of it: the keys, without the usage.
    let back = try JSONDecoder().decode(LicenseState.self, from: JSONEncoder().encode(state.readableBy020))
    #expect(back.slots == state.slots && back.usage.isEmpty)
  }

  /// A consumer reporting in a loop: the same figure within a minute is not written again.
  @Test func U1_aReportRepeatedWithinAMinuteIsNotWrittenAgain() throws {
    let (state, _) = report(5, at: t0 + .hours(1), held())
    let again = engine.reportUsage(slot: .server, units: 5, now: t0 + .hours(1) + .seconds(59), state: state)
    #expect(try again.result.get().units == 5)
    #expect(again.actions.isEmpty && again.state == state, "nothing to write")
    let later = engine.reportUsage(slot: .server, units: 5, now: t0 + .hours(1) + .seconds(60), state: state)
    #expect(later.persistedTransition != nil)
    #expect(later.state.usage[.server]?.reportedAt == t0 + .hours(1) + .seconds(60))
    let other = engine.reportUsage(slot: .server, units: 6, now: t0 + .hours(1) + .seconds(1), state: state)
    #expect(other.persistedTransition != nil && other.state.usage[.server]?.units == 6)
  }

  /// U2 against a flood: a report flapping across 90 % logs a band entered again at most
  /// once an hour; a rise to a higher band is always logged.
  @Test func U2_aReportFlappingAcross90PercentLogsAtMostOnceAnHour() throws {
    var state = held(units: 10)
    var logged: [(minute: Int, band: String?)] = []
    for (minute, units) in [
      (1, 12), (2, 8), (3, 12), (4, 8), (5, 9), (6, 8), (7, 9), (8, 11), (62, 8), (63, 12),
    ] {
      let (next, events) = report(units, at: t0 + .minutes(Int64(minute)), state)
      state = next
      logged += events.map { (minute, $0[field: .usagePercent]) }
    }
    #expect(logged.map(\.minute) == [1, 63], "\(logged)")
    // A rise within the hour: 9 (high, not logged again) then 12 is a higher band than the
    // one entered, and is logged.
    var rising = held(units: 10)
    var bands: [EventKind] = []
    for (minute, units) in [(1, 9), (2, 8), (3, 9), (4, 12)] {
      let (next, events) = report(units, at: t0 + .minutes(Int64(minute)), rising)
      rising = next
      bands += events.map(\.kind)
    }
    #expect(bands == [.licenseUsageHigh, .licenseLimitExceeded])
  }
}
