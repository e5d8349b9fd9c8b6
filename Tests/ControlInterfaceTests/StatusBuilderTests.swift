import ControlInterface
import LicenseCore
import LicenseTestSupport
import SimpleJSON
import Testing

@Suite struct StatusBuilderTests {
  let issuer = TestIssuer()
  let t0 = TestIssuer.t0
  var engine: LicenseEngine { LicenseEngine(trust: issuer.trust) }

  func add(_ serial: String, _ role: Role, slot: Slot = .server, exp: Timestamp, to state: LicenseState)
    -> LicenseState
  {
    let decision = engine.addKey(issuer.key(serial, slot: slot, exp: exp), role: role, now: t0, state: state)
    guard case .success = decision.result else {
      Issue.record("setup: \(decision.result)")
      return state
    }
    return decision.state
  }

  func build(_ state: LicenseState, now: Timestamp? = nil) -> StatusReply {
    StatusBuilder.build(state: state, engine: engine, now: now ?? t0, version: "test", startedAt: t0)
  }

  @Test func aSlotWithAReserveIsHealthy() {
    var state = add("KS-1", .active, exp: t0 + .days(60), to: LicenseState())
    state = add("KS-R", .reserve, exp: t0 + .days(400), to: state)
    let status = build(state)
    #expect(status.slots.count == 1)
    #expect(status.slots[0].takeover == "reserve")
    #expect(status.slots[0].secondsLeft == 60 * 86_400)
    #expect(status.warnings.isEmpty)
    #expect(status.nextAction?.action == "warning")
    #expect(StatusBuilder.exitCode(status) == 0)
  }

  @Test func aSlotWithoutReserveIsWarnedAboutAndExits1WithinTheFirstThreshold() {
    let far = build(add("KS-1", .active, exp: t0 + .days(60), to: LicenseState()))
    #expect(far.warnings.map(\.code) == ["no_reserve"])
    #expect(StatusBuilder.exitCode(far) == 0)
    let near = build(add("KS-1", .active, exp: t0 + .days(20), to: LicenseState()))
    #expect(near.warnings.map(\.code) == ["expiring_without_takeover"])
    #expect(StatusBuilder.exitCode(near) == 1)
  }

  @Test func aReserveMissingForOneOSTypeIsPointedOut() {
    var state = add("KS-1", .active, exp: t0 + .days(60), to: LicenseState())
    state = add("KS-R", .reserve, exp: t0 + .days(400), to: state)
    state = add("KW-1", .active, slot: .workstation, exp: t0 + .days(60), to: state)
    let status = build(state)
    let warning = status.warnings.first { $0.code == "reserve_missing_for_os_type" }
    #expect(warning?.slot == "workstation")
    #expect(warning?.message.contains("each needs its own") == true)
  }

  @Test func anExpiredSlotExits2() {
    let state = add("KS-1", .active, exp: t0 + .days(1), to: LicenseState())
    let expired = engine.timeReached(now: t0 + .days(1), state: state).state
    let status = build(expired, now: t0 + .days(2))
    #expect(status.slots.first?.status == "expired")
    #expect(status.slots.first?.expired?.serial == "KS-1")
    #expect(status.warnings.map(\.code) == ["slot_expired"])
    #expect(StatusBuilder.exitCode(status) == 2)
  }

  @Test func theReplyRoundTripsThroughVarlinkParameters() throws {
    var state = add("KS-1", .active, exp: t0 + .days(60), to: LicenseState())
    state = add("KS-R", .reserve, exp: t0 + .days(400), to: state)
    let status = build(state)
    let parameters = varlinkParameters(status)
    #expect(parameters["schemaVersion"] == .number(1))
    #expect(try decodeParameters(StatusReply.self, from: parameters) == status)
  }
}
