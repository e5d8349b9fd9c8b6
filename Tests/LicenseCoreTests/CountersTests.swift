import Foundation
import LicenseCore
import LicenseTestSupport
import Testing

/// What the metrics count (contract §8), kept in the state by the engine's own decisions, and
/// the next wake per slot.
@Suite struct CountersTests {
  let issuer = TestIssuer()
  let t0 = TestIssuer.t0
  let code = ActivationCode("abcde-12345-fghij-67890")!
  var engine: LicenseEngine { LicenseEngine(trust: issuer.trust) }

  func pair(exp: Timestamp) -> LicenseState {
    var state = engine.addKey(issuer.key("A", exp: exp), role: .active, now: t0, state: LicenseState()).state
    state = engine.addKey(issuer.key("R", exp: exp + .days(90)), role: .reserve, now: t0, state: state).state
    return state
  }

  @Test func P1_aPromotionIsCountedWithItsDelayInTheSameDecision() {
    let exp = t0 + .days(10)
    let state = pair(exp: exp)
    #expect(state.counters.isEmpty)
    let d = engine.timeReached(now: exp + TimeSpan(microseconds: 1_500), state: state)
    #expect(d.persistedTransition != nil)
    #expect(d.state.counters[.server] == SlotCounters(promotions: 1, lastPromotionDelayMicroseconds: 1_500))
    // Replaying the instant counts nothing more.
    #expect(engine.timeReached(now: exp + .seconds(1), state: d.state).state.counters == d.state.counters)
  }

  @Test func P4_anExpiryWithNothingToTakeOverIsNotAPromotion() {
    let exp = t0 + .days(10)
    let state = engine.addKey(issuer.key("A", exp: exp), role: .active, now: t0, state: LicenseState()).state
    #expect(engine.timeReached(now: exp, state: state).state.counters.isEmpty)
  }

  @Test func C3_renewalAttemptsAreCountedByResult() throws {
    let exp = t0 + .days(10)
    let added = engine.addKey(
      issuer.key("KS-1", exp: exp), role: .active, code: code, now: t0, state: LicenseState())
    var state = engine.timeReached(now: exp, state: added.state).state
    state =
      engine.attemptFailed(
        slot: .server, failure: .transient(error: "down", retryAfter: nil), jitter: 0.5, now: exp,
        state: state
      ).state
    #expect(state.counters[.server] == SlotCounters(transientFailures: 1))
    let retry = try #require(state[.server]?.renewal?.attempts.dueAt)
    state = engine.timeReached(now: retry, state: state).state
    state =
      engine.attemptSucceeded(
        slot: .server, key: issuer.key("KS-2", exp: exp + .days(365)), now: retry, state: state
      ).state
    #expect(state.counters[.server] == SlotCounters(renewed: 1, transientFailures: 1))
    // At the next expiry the server refuses the code for good.
    state = engine.timeReached(now: exp + .days(365), state: state).state
    state =
      engine.attemptFailed(
        slot: .server, failure: .permanent(error: "code_blocked"), jitter: 0, now: exp + .days(365),
        state: state
      ).state
    #expect(state.counters[.server] == SlotCounters(renewed: 1, transientFailures: 1, permanentFailures: 1))
  }

  @Test func theCountersSurviveTheStateFileAndAnOlderFileReadsAsZero() throws {
    let exp = t0 + .days(10)
    let promoted = engine.timeReached(now: exp, state: pair(exp: exp)).state
    let data = try JSONEncoder().encode(promoted)
    #expect(try JSONDecoder().decode(LicenseState.self, from: data) == promoted)
    // A state file written before the counters existed.
    var object = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
    object.removeValue(forKey: "counters")
    let older = try JSONSerialization.data(withJSONObject: object)
    let read = try JSONDecoder().decode(LicenseState.self, from: older)
    #expect(read.counters.isEmpty)
    #expect(read[.server] == promoted[.server])
  }

  @Test func theNextWakeIsKnownPerSlotAndTheEarliestIsTheAgents() throws {
    var state = pair(exp: t0 + .days(100))
    state =
      engine.addKey(
        issuer.key("W", slot: .workstation, exp: t0 + .days(40)), role: .active, now: t0, state: state
      ).state
    let server = try #require(engine.nextWake(state, slot: .server))
    let workstation = try #require(engine.nextWake(state, slot: .workstation))
    #expect(server.at == t0 + .days(100) - .days(30))  // the 30d warning of A
    #expect(workstation.at == t0 + .days(40) - .days(30))
    #expect(engine.nextWake(state) == workstation)
    #expect(engine.nextWake(LicenseState(), slot: .server) == nil)
  }
}
