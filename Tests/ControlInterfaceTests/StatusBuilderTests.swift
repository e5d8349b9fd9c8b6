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
    #expect(status.slots[0].takeover == .reserve)
    #expect(status.slots[0].secondsLeft == 60 * 86_400)
    #expect(status.warnings.isEmpty)
    #expect(status.nextAction?.action == .warning)
    #expect(status.health.rawValue == 0)
  }

  @Test func aSlotWithoutReserveIsWarnedAboutAndExits1WithinTheFirstThreshold() {
    let far = build(add("KS-1", .active, exp: t0 + .days(60), to: LicenseState()))
    #expect(far.warnings.map(\.code) == [.noReserve])
    #expect(far.health.rawValue == 0)
    let near = build(add("KS-1", .active, exp: t0 + .days(20), to: LicenseState()))
    #expect(near.warnings.map(\.code) == [.expiringWithoutTakeover])
    #expect(near.health.rawValue == 1)
  }

  @Test func aReserveMissingForOneOSTypeIsPointedOut() {
    var state = add("KS-1", .active, exp: t0 + .days(60), to: LicenseState())
    state = add("KS-R", .reserve, exp: t0 + .days(400), to: state)
    state = add("KW-1", .active, slot: .workstation, exp: t0 + .days(60), to: state)
    let status = build(state)
    let warning = status.warnings.first { $0.code == .reserveMissingForOSType }
    #expect(warning?.slot == .workstation)
    #expect(warning?.message.contains("each needs its own") == true)
  }

  @Test func anExpiredSlotExits2() {
    let state = add("KS-1", .active, exp: t0 + .days(1), to: LicenseState())
    let expired = engine.timeReached(now: t0 + .days(1), state: state).state
    let status = build(expired, now: t0 + .days(2))
    #expect(status.slots.first?.status == .expired)
    #expect(status.slots.first?.expired?.serial == "KS-1")
    #expect(status.warnings.map(\.code) == [.slotExpired])
    #expect(status.health.rawValue == 2)
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

/// C6 in the status and the metrics: the window, the next attempt, the last error, the
/// pending key and when it was obtained, the alert of a refusal ahead.
@Suite struct RenewalAheadStatusTests {
  let issuer = TestIssuer()
  let t0 = TestIssuer.t0
  let exp = TestIssuer.t0 + .days(30)
  let code = ActivationCode("ABCDE-12345-FGHIJ-67890")!
  /// C6's defaults; no EXPIRING_SOON thresholds, so that the next action is C6's own.
  var engine: LicenseEngine {
    LicenseEngine(configuration: EngineConfiguration(warningThresholds: []), trust: issuer.trust)
  }

  func codeMode() -> LicenseState {
    engine.addKey(
      issuer.key("KS-1", exp: exp), role: .active, code: code, now: t0, state: LicenseState(stateID: "svm")
    ).state
  }

  func build(_ state: LicenseState, now: Timestamp) -> StatusReply {
    StatusBuilder.build(state: state, engine: engine, now: now, version: "test", startedAt: t0)
  }

  /// The state once the first request ahead was made.
  func asking() throws -> (LicenseState, Timestamp) {
    let state = codeMode()
    let due = try #require(engine.aheadAttemptDue(state[.server]))
    return (engine.timeReached(now: due, state: state).state, due)
  }

  @Test func C6_aWaitingSlotShowsItsWindowAndItsFirstRequest() throws {
    let state = codeMode()
    let status = build(state, now: t0)
    let ahead = try #require(status.slots.first?.renewalAhead)
    #expect(ahead.state == .waiting && ahead.attempts == 0 && ahead.codeHint == "67890")
    #expect(ahead.windowStart == (exp - .days(7)).rfc3339 && ahead.windowEnd == (exp - .days(4)).rfc3339)
    let first = try #require(engine.aheadAttemptDue(state[.server]))
    #expect(ahead.firstAttemptAt == first.rfc3339 && ahead.nextAttemptAt == first.rfc3339)
    #expect(status.slots.first?.takeover == .activationCode)
    #expect(status.health.rawValue == 0)
    let metrics = MetricsText.render(
      state: state, engine: engine, version: "t", product: "svm-protection", stateWriteFailures: 0)
    #expect(metrics.contains(#"license_agent_slot_takeover{slot="server",takeover="activation-code"} 1"#))
  }

  @Test func C6_aFailingRenewalAheadShowsTheNextAttemptAndTheLastErrorWithoutAlert() throws {
    let (asked, due) = try asking()
    let failed = engine.attemptFailed(
      slot: .server, failure: .transient(error: "network: connection refused", retryAfter: nil), ahead: true,
      jitter: 0.5, now: due + .seconds(1), state: asked
    ).state
    let status = build(failed, now: due + .seconds(2))
    let ahead = try #require(status.slots.first?.renewalAhead)
    #expect(ahead.state == .retrying && ahead.attempts == 1)
    #expect(ahead.lastError == "network: connection refused")
    #expect(ahead.nextAttemptAt == failed[.server]?.ahead?.attempts.dueAt?.rfc3339)
    #expect(status.warnings.map(\.code).contains(.renewalAheadFailing))
    #expect(status.alerts.isEmpty)
    #expect(status.health.rawValue == 0, "nothing needs a person yet")
    #expect(status.nextAction?.action == .renewalAhead)
    // not_yet_available is the vendor's calendar: no warning.
    let notYet = engine.attemptFailed(
      slot: .server, failure: .notYetAvailable(retryAfter: .hours(1)), ahead: true, jitter: 0.5,
      now: due + .seconds(1), state: asked
    ).state
    #expect(!build(notYet, now: due + .seconds(2)).warnings.map(\.code).contains(.renewalAheadFailing))
  }

  @Test func C6_aPendingRenewalIsShownWithWhenItWasObtainedAndExported() throws {
    let (asked, due) = try asking()
    let obtained = due + .seconds(3)
    let state = engine.attemptSucceeded(
      slot: .server, key: issuer.key("KS-2", nbf: exp, exp: exp + .days(365)), ahead: true, now: obtained,
      state: asked
    ).state
    let status = build(state, now: obtained)
    let slot = try #require(status.slots.first)
    #expect(slot.takeover == .pendingRenewal)
    #expect(slot.pending?.serial == "KS-2" && slot.pending?.addedAt == obtained.rfc3339)
    #expect(slot.pending?.codeHint == "67890" && slot.pending?.source == .activationCode)
    #expect(slot.renewalAhead == nil)
    #expect(status.nextAction?.action == .promotion)
    #expect(status.nextAction?.description.contains("KS-2") == true)
    #expect(status.health.rawValue == 0)
    let metrics = MetricsText.render(
      state: state, engine: engine, version: "t", product: "svm-protection", stateWriteFailures: 0)
    #expect(metrics.contains(#"role="pending",serial="KS-2"} "#))
    #expect(metrics.contains(#"license_agent_slot_takeover{slot="server",takeover="pending-renewal"} 1"#))
    // The status reply still round-trips through Varlink's JSON.
    let text = JSONValue.object(varlinkParameters(status)).serialized
    #expect(text.contains(#""pending":{"#) && !text.contains(code.value))
  }

  @Test func C6_aRefusalAheadIsAnAlertBeforeTheExpiry() throws {
    let (asked, due) = try asking()
    let refused = engine.attemptFailed(
      slot: .server, failure: .permanent(error: "code_blocked"), ahead: true, jitter: 0, now: due,
      state: asked
    ).state
    let status = build(refused, now: due)
    #expect(status.slots.first?.renewalAhead?.state == .stopped)
    #expect(status.alerts.count == 1 && status.alerts[0].contains("MANUAL ACTIVATION REQUIRED"))
    // The error is said once, in the slot's renewal ahead; the alert refers to it.
    #expect(status.alerts[0].contains("last error") && !status.alerts[0].contains(code.value))
    #expect(!status.alerts[0].contains("code_blocked"))
    #expect(status.slots.first?.renewalAhead?.lastError == "code_blocked")
    #expect(status.health.rawValue == 2)
    let metrics = MetricsText.render(
      state: refused, engine: engine, version: "t", product: "svm-protection", stateWriteFailures: 0)
    #expect(metrics.contains(#"license_agent_alert{slot="server",alert="manual_activation_required"} 1"#))
  }
}

/// The facts GetStatus carries so that callers need not work them out (issue 21): when each
/// slot's licence ends with nothing to take over, and the health that is agentctl's exit
/// status; computed in the core.
@Suite struct StatusFactsTests {
  let issuer = TestIssuer()
  let t0 = TestIssuer.t0
  let code = ActivationCode("ABCDE-12345-FGHIJ-67890")!
  var engine: LicenseEngine { LicenseEngine(trust: issuer.trust) }

  func status(_ state: LicenseState, at now: Timestamp) -> StatusReply {
    StatusBuilder.build(state: state, engine: engine, now: now, version: "t", startedAt: t0)
  }

  func add(
    _ serial: String, _ role: Role, exp: Timestamp, code: ActivationCode? = nil, to state: LicenseState
  )
    -> LicenseState
  {
    engine.addKey(issuer.key(serial, exp: exp), role: role, code: code, now: t0, state: state).state
  }

  @Test func lapsesAtFollowsWhatTakesOver() {
    let alone = add("KS-1", .active, exp: t0 + .days(60), to: LicenseState())
    #expect(status(alone, at: t0).slots.first?.lapsesAt == (t0 + .days(60)).rfc3339)
    let withReserve = add("KS-R", .reserve, exp: t0 + .days(400), to: alone)
    #expect(status(withReserve, at: t0).slots.first?.lapsesAt == (t0 + .days(400)).rfc3339)
    let renewing = add("KS-1", .active, exp: t0 + .days(60), code: code, to: LicenseState())
    #expect(status(renewing, at: t0).slots.first?.lapsesAt == nil, "a code renews it")
    let expired = engine.timeReached(now: t0 + .days(60), state: alone).state
    #expect(status(expired, at: t0 + .days(61)).slots.first?.lapsesAt == (t0 + .days(60)).rfc3339)
  }

  @Test func healthIsAgentctlsExitStatusPerSlotAndInAll() {
    let far = add("KS-1", .active, exp: t0 + .days(60), to: LicenseState())
    #expect(status(far, at: t0).health == .ok)
    let near = add("KS-1", .active, exp: t0 + .days(20), to: LicenseState())
    #expect(status(near, at: t0).health == .expiringWithoutTakeover)
    #expect(status(near, at: t0).slots.first?.health == .expiringWithoutTakeover)
    let expired = engine.timeReached(now: t0 + .days(20), state: near).state
    #expect(status(expired, at: t0 + .days(21)).health == .lapsedOrAlert)
    // The worst slot decides; on the wire it is agentctl's number.
    var both = add("KS-1", .active, exp: t0 + .days(60), to: LicenseState())
    both =
      engine.addKey(
        issuer.key("KW-1", slot: .workstation, exp: t0 + .days(20)), role: .active, now: t0, state: both
      ).state
    let reply = status(both, at: t0)
    #expect(
      reply.slots.map(\.health) == [.ok, .expiringWithoutTakeover] && reply.health == .expiringWithoutTakeover
    )
    #expect(varlinkParameters(reply)["health"] == .number(1))
  }
}

/// The control schema's requests, decoded by name and type: the first unknown parameter,
/// else the first missing or mistyped one, is named.
@Suite struct ControlRequestTests {
  @Test func requestsAreDecodedByNameAndType() {
    #expect(
      KeyRequest.decode(["key": .string("k"), "role": .string("reserve")])
        == .success(KeyRequest(key: "k", role: .reserve)))
    #expect(
      KeyRequest.decode(["key": .string("k"), "role": .string("spare")]) == .failure(InvalidParameter("role"))
    )
    #expect(KeyRequest.decode(["role": .string("active")]) == .failure(InvalidParameter("key")))
    #expect(
      KeyRequest.decode(["key": .string("k"), "role": .string("active"), "colour": .string("x")])
        == .failure(InvalidParameter("colour")))
    #expect(
      KeyRequest.decode(["key": .string("k"), "role": .string("active"), "replaceScheme": .string("yes")])
        == .failure(InvalidParameter("replaceScheme")))
    #expect(
      KeyRequest.decode(["key": .string("k"), "role": .string("active"), "replaceScheme": .null])
        == .success(KeyRequest(key: "k", role: .active)))
    #expect(
      RemoveReserveRequest.decode(["slot": .string("cores")]) == .success(RemoveReserveRequest(slot: .cores)))
    #expect(RemoveReserveRequest.decode(["slot": .number(1)]) == .failure(InvalidParameter("slot")))
    #expect(GetStatusRequest.decode(["x": .bool(true)]) == .failure(InvalidParameter("x")))
    // Every method of the IDL has a case, and only those.
    #expect(Set(AgentMethod.allCases.map(\.rawValue)) == AgentInterface.methods)
    for method in AgentMethod.allCases {
      #expect(AgentInterface.description.contains("method \(method.rawValue)("))
    }
  }
}
