import Foundation
import LicenseCore
import LicenseTestSupport
import Testing

/// Rule N2: consumers confirm the serial they enforce; an expected one that has not within
/// `confirm-within` of a takeover makes the agent log CONSUMER_NOT_UPDATED, once.
@Suite struct ConsumerTests {
  let issuer = TestIssuer()
  let t0 = TestIssuer.t0
  let exp = TestIssuer.t0 + .days(10)
  let within = TimeSpan.seconds(60)
  let server = ConsumerName("protection-server")!

  var engine: LicenseEngine {
    LicenseEngine(
      configuration: EngineConfiguration(expectedConsumers: [server], confirmWithin: within),
      trust: issuer.trust)
  }

  func key(_ serial: String, nbf: Timestamp? = nil, exp: Timestamp) -> String {
    issuer.key(TestIssuer.claims(serial: serial, slot: .server, nbf: nbf ?? t0 - .days(1), exp: exp))
  }

  /// KS-1 active until `exp`, KS-2 in reserve after it, added at `t0`, events delivered.
  func heldWithReserve(engine: LicenseEngine? = nil) -> LicenseState {
    let engine = engine ?? self.engine
    let a = engine.addKey(key("KS-1", exp: exp), role: .active, now: t0, state: LicenseState())
    let r = engine.addKey(key("KS-2", exp: exp + .days(30)), role: .reserve, now: t0, state: a.state)
    #expect(r.result.isSuccess)
    return r.state.acknowledging(through: r.state.lastTransitionID)
  }

  func confirm(
    _ serial: String, at now: Timestamp, _ state: LicenseState, consumer: String = "protection-server"
  )
    -> LicenseState
  {
    let d = engine.confirm(consumer: consumer, slot: .server, serial: serial, now: now, state: state)
    #expect(d.result.isSuccess, "\(d.result)")
    return d.state.acknowledging(through: d.state.lastTransitionID)
  }

  /// The state promoted at `exp` (KS-2 active), events delivered.
  func promoted(_ state: LicenseState) -> LicenseState {
    let d = engine.timeReached(now: exp, state: state)
    #expect(d.renderedEvents.map(\.kind) == [.keyPromoted])
    return d.state.acknowledging(through: d.state.lastTransitionID)
  }

  @Test func N2_anExpectedConsumerThatConfirmsInTimeRaisesNothing() throws {
    var state = confirm("KS-1", at: t0 + .seconds(1), heldWithReserve())
    state = promoted(state)
    #expect(engine.nextWake(state)?.reason == .confirmation(slot: .server, serial: "KS-2", consumer: server))
    #expect(engine.nextWake(state)?.at == exp + within)
    state = confirm("KS-2", at: exp + .seconds(2), state)
    #expect(state.standing(of: server, slot: .server, expected: true, now: exp, within: within) == .confirmed)
    // Nothing is due for it any more; the deadline passes without an event.
    let d = engine.timeReached(now: exp + within + .seconds(1), state: state)
    #expect(d.renderedEvents.isEmpty)
    #expect(
      engine.nextWake(d.state)?.reason != .confirmation(slot: .server, serial: "KS-2", consumer: server))
  }

  @Test func N2_theDeadlineIsConfirmWithinAfterTheTakeoverToTheMicrosecond() throws {
    let state = promoted(confirm("KS-1", at: t0 + .seconds(1), heldWithReserve()))
    let due = exp + within
    // One microsecond before: nothing.
    let before = engine.timeReached(now: due - TimeSpan(microseconds: 1), state: state)
    #expect(before.renderedEvents.isEmpty)
    // At the instant: CONSUMER_NOT_UPDATED, error priority, with its fields.
    let at = engine.timeReached(now: due, state: state)
    let events = at.renderedEvents
    #expect(events.map(\.kind) == [.consumerNotUpdated])
    let event = try #require(events.first)
    #expect(event.priority == 3)
    #expect(event[field: .consumer] == "protection-server")
    #expect(event[field: .serial] == "KS-2")
    #expect(event[field: .confirmedSerial] == "KS-1")
    #expect(event[field: .slot] == "server")
    #expect(event.message.contains("protection-server") && event.message.contains("KS-2"))
    #expect(at.persistedTransition != nil, "the report is durable: a restart does not log it again")
    // Once: not again later, nor after a restart (the state says it was logged).
    let later = at.state.acknowledging(through: at.state.lastTransitionID)
    let again = engine.timeReached(now: due + .hours(5), state: later)
    #expect(again.renderedEvents.isEmpty)
    let reloaded = try JSONDecoder().decode(LicenseState.self, from: JSONEncoder().encode(later))
    #expect(engine.timeReached(now: due + .hours(6), state: reloaded).renderedEvents.isEmpty)
    #expect(reloaded.standing(of: server, slot: .server, expected: true, now: due, within: within) == .late)
  }

  @Test func N2_aLaterConfirmationClearsIt() throws {
    let state = promoted(heldWithReserve())
    let late = engine.timeReached(now: exp + within, state: state)
    #expect(late.renderedEvents.map(\.kind) == [.consumerNotUpdated])
    #expect(late.renderedEvents.first?[field: .confirmedSerial] == nil, "it never confirmed anything")
    let cleared = confirm("KS-2", at: exp + .minutes(5), late.state)
    #expect(
      cleared.standing(of: server, slot: .server, expected: true, now: exp, within: within) == .confirmed)
  }

  @Test func N2_aConsumerThatConfirmsAnOlderSerialStillLags() throws {
    let state = promoted(confirm("KS-1", at: t0 + .seconds(1), heldWithReserve()))
    // It confirms the key it enforced before the takeover (it did not reload).
    let d = engine.confirm(
      consumer: "protection-server", slot: .server, serial: "KS-1", now: exp + .seconds(5), state: state)
    let confirmed = try d.result.get()
    #expect(!confirmed.current)
    #expect(confirmed.activeSerial == "KS-2")
    #expect(d.persistedTransition == nil, "the same serial again writes nothing")
    let at = engine.timeReached(now: exp + within, state: d.state)
    #expect(at.renderedEvents.map(\.kind) == [.consumerNotUpdated])
    #expect(at.renderedEvents.first?[field: .confirmedSerial] == "KS-1")
  }

  @Test func N2_aConsumerNotExpectedIsRecordedButNeverReported() throws {
    var state = heldWithReserve()
    state = confirm("KS-1", at: t0 + .seconds(1), state, consumer: "dashboard")
    let dashboard = ConsumerName("dashboard")!
    #expect(state.consumers[dashboard]?[.server]?.confirmedSerial == "KS-1")
    let after = promoted(state)
    #expect(
      after.standing(of: dashboard, slot: .server, expected: false, now: exp, within: within) == .unconfirmed)
    let d = engine.timeReached(now: exp + within * 10, state: after)
    #expect(d.renderedEvents.allSatisfy { $0[field: .consumer] != "dashboard" })
  }

  @Test func N2_badConfirmationsAreRefusedAndChangeNothing() throws {
    let state = heldWithReserve()
    let cases: [(String, Slot, String, String)] = [
      ("", .server, "KS-1", "invalid_consumer"),
      ("has space", .server, "KS-1", "invalid_consumer"),
      (String(repeating: "a", count: 65), .server, "KS-1", "invalid_consumer"),
      ("protection-server", .workstation, "KS-1", "slot_not_in_use"),
      ("protection-server", .server, "", "invalid_serial"),
      ("protection-server", .server, "KS\n1", "invalid_serial"),
      ("protection-server", .server, String(repeating: "K", count: 129), "invalid_serial"),
    ]
    for (consumer, slot, serial, code) in cases {
      let d = engine.confirm(consumer: consumer, slot: slot, serial: serial, now: t0, state: state)
      guard case .failure(let violation) = d.result else {
        Issue.record("\(consumer) \(slot) \(serial) was accepted")
        continue
      }
      #expect(violation.rule == .N2)
      #expect(violation.code == code)
      #expect(d.state == state)
      #expect(d.persistedTransition == nil)
    }
  }

  @Test func N2_theConsumersKeptAreBounded() throws {
    var state = heldWithReserve()
    for index in 0..<(LicenseEngine.maximumConsumers - 1) {
      state = confirm("KS-1", at: t0, state, consumer: "c\(index)")
    }
    #expect(state.consumers.count == LicenseEngine.maximumConsumers)
    let d = engine.confirm(consumer: "one-more", slot: .server, serial: "KS-1", now: t0, state: state)
    guard case .failure(let violation) = d.result else {
      Issue.record("a consumer past the bound was kept")
      return
    }
    #expect(violation.code == "too_many_consumers")
    // An existing one may still confirm.
    _ = confirm("KS-2", at: t0, state, consumer: "c3")
  }

  @Test func N2_aBackwardClockStepKeepsWhatIsLeftOfTheDelay() throws {
    let state = promoted(heldWithReserve())
    // 20 s after the takeover the clock steps back an hour: 40 s are still left.
    let step = engine.clockChanged(
      deltaMicroseconds: -3_600_000_000, now: exp + .seconds(20) - .hours(1), state: state)
    let stepped = step.state.acknowledging(through: step.state.lastTransitionID)
    let due = try #require(engine.nextWake(stepped)).at
    #expect(due == exp + within - .hours(1))
    #expect(engine.timeReached(now: due - TimeSpan(microseconds: 1), state: stepped).renderedEvents.isEmpty)
    #expect(engine.timeReached(now: due, state: stepped).renderedEvents.map(\.kind) == [.consumerNotUpdated])
  }

  @Test func N2_aConsumerNewlyExpectedIsGivenTheDelayFromThen() throws {
    let plain = LicenseEngine(trust: issuer.trust)
    let state = heldWithReserve(engine: plain)
    // The configuration now expects the consumer (a reload, a day later).
    let reconfigured = engine.consumersReconfigured(now: t0 + .days(1), state: state)
    #expect(reconfigured.persistedTransition != nil)
    let tracked = reconfigured.state
    #expect(engine.nextWake(tracked)?.at == t0 + .days(1) + within)
    // No longer expected: nothing is due, and a consumer that confirmed nothing is forgotten.
    let dropped = plain.consumersReconfigured(now: t0 + .days(2), state: tracked)
    #expect(dropped.state.consumers.isEmpty)
  }

  @Test func N2_aStateWrittenForA030DowngradeHoldsNoConsumer() throws {
    let state = promoted(heldWithReserve())
    let late = engine.timeReached(now: exp + within, state: state).state
    #expect(late.outbox.contains { $0.kind == .consumerNotUpdated })
    let old = late.readableBy030
    #expect(old.consumers.isEmpty)
    #expect(!old.outbox.contains { $0.kind == .consumerNotUpdated })
    let text = String(decoding: try JSONEncoder().encode(old), as: UTF8.self)
    #expect(!text.contains("LICENSE_CONSUMER") && !text.contains("consumers"))
  }
}
