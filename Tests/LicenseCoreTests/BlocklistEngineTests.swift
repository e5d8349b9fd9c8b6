import Foundation
import LicenseCore
import LicenseTestSupport
import Testing

/// Rules B1 (the lists an agent keeps) and B3 (blocked keys refused and dropped), with the
/// engine; B2 is BlockedGraceTests.
@Suite struct BlocklistEngineTests {
  let issuer = TestIssuer()
  let t0 = TestIssuer.t0
  let exp = TestIssuer.t0 + .days(10)
  var engine: LicenseEngine { LicenseEngine(trust: issuer.trust) }

  /// A list of the test issuer's keys (`iss` test-issuer), signed by it.
  func list(_ seq: Int, _ serials: [String], iss: String = "test-issuer", product: String = "svm-protection")
    throws -> String
  {
    try BlocklistParser.sign(
      Blocklist(
        compact: "", kid: issuer.jwk.kid, issuer: iss, sequence: seq, issuedAt: t0, product: product,
        entries: serials.map { BlockedEntry(serial: $0, since: t0 - .days(2), reason: "resold") }),
      with: issuer.jwk)
  }

  /// KS-1 active, KS-2 in reserve, events delivered.
  func held() -> LicenseState {
    let a = engine.addKey(issuer.key("KS-1", exp: exp), role: .active, now: t0, state: LicenseState())
    let r = engine.addKey(issuer.key("KS-2", exp: exp + .days(90)), role: .reserve, now: t0, state: a.state)
    return r.state.acknowledging(through: r.state.lastTransitionID)
  }

  func violation<S>(_ d: Decision<S>) -> RuleViolation? {
    if case .failure(let v) = d.result { return v }
    return nil
  }

  @Test func B1_theHighestSequenceIsKeptDurablyAndAnOlderOneIsRefused() throws {
    let first = engine.addBlocklist(try list(2, ["KS-9"]), now: t0, state: held())
    let added = try first.result.get()
    #expect(!added.unchanged && added.blocks.isEmpty && added.sequence == 2)
    #expect(first.persistedTransition != nil)
    var state = first.state
    let reloaded = try JSONDecoder().decode(LicenseState.self, from: JSONEncoder().encode(state))
    #expect(reloaded.blocklists == state.blocklists)
    // The same list again: nothing to write.
    let again = engine.addBlocklist(try list(2, ["KS-9"]), now: t0 + .hours(1), state: state)
    #expect(try again.result.get().unchanged && again.persistedTransition == nil)
    // Older, or another list with the same sequence: refused, nothing changed.
    for text in [try list(1, []), try list(2, [])] {
      let refused = engine.addBlocklist(text, now: t0 + .hours(1), state: state)
      #expect(violation(refused)?.rule == .B1 && violation(refused)?.code == "blocklist_rollback")
      #expect(refused.state == state)
    }
    // A newer one that unblocks KS-9 and blocks KS-8 keeps when it learned of each.
    state = engine.addBlocklist(try list(3, ["KS-9", "KS-8"]), now: t0 + .hours(2), state: state).state
    #expect(state.blocklists["test-issuer"]?.entry(serial: "KS-9")?.learnedAt == t0)
    #expect(state.blocklists["test-issuer"]?.entry(serial: "KS-8")?.learnedAt == t0 + .hours(2))
    state = engine.addBlocklist(try list(4, ["KS-8"]), now: t0 + .hours(3), state: state).state
    #expect(state.blocklists["test-issuer"]?.entry(serial: "KS-9") == nil, "a newer list unblocks")
  }

  @Test func B1_aListThatCannotBeTrustedOrIsForAnotherProductChangesNothing() throws {
    let state = held()
    let stranger = TestIssuer(kid: "stranger")
    let foreign = try BlocklistParser.sign(
      Blocklist(
        compact: "", kid: "stranger", issuer: "test-issuer", sequence: 9, issuedAt: t0,
        product: "svm-protection",
        entries: [BlockedEntry(serial: "KS-1", since: t0, reason: "")]), with: stranger.jwk)
    #expect(violation(engine.addBlocklist(foreign, now: t0, state: state))?.code == "untrusted_issuer")
    #expect(violation(engine.addBlocklist("garbage", now: t0, state: state))?.code == "invalid_blocklist")
    let product = engine.addBlocklist(try list(1, ["KS-1"], product: "other"), now: t0, state: state)
    #expect(violation(product)?.code == "wrong_product")
    // A key is not a list.
    #expect(violation(engine.addBlocklist(issuer.key("KS-5", exp: exp), now: t0, state: state)) != nil)
  }

  @Test func B1_anEntryForAnotherIssuersKeyBlocksNothing() throws {
    let d = engine.addBlocklist(try list(1, ["KS-1", "KS-2"], iss: "other-issuer"), now: t0, state: held())
    #expect(try d.result.get().blocks.isEmpty)
    #expect(d.state[.server]?.reserve?.serial == "KS-2")
    #expect(
      engine.addKey(issuer.key("KS-3", exp: exp), role: .active, now: t0, state: d.state).result.isSuccess)
  }

  @Test func B3_aBlockedReserveIsDroppedAtOnceAndABlockedActiveKeyIsListed() throws {
    let d = engine.addBlocklist(try list(1, ["KS-1", "KS-2"]), now: t0 + .hours(1), state: held())
    let added = try d.result.get()
    #expect(added.blocks.map(\.serial).sorted() == ["KS-1", "KS-2"])
    #expect(added.blocks.first { $0.serial == "KS-2" }?.dropped == true)
    #expect(added.blocks.first { $0.serial == "KS-1" }?.dropped == false)
    #expect(d.state[.server]?.reserve == nil)
    #expect(d.state[.server]?.active?.serial == "KS-1")
    let event = try #require(d.renderedEvents.first { $0.kind == .reserveDropped })
    #expect(event[field: .reason] == "blocked")
    #expect(d.renderedEvents.map(\.kind) == [.keyBlocked, .reserveDropped, .keyBlocked])
    #expect(event[field: .serial] == "KS-2" && event[field: .activeSerial] == "KS-1")
    #expect(event.message.contains("resold"))
  }

  @Test func B3_aBlockedKeyIsRefusedOnAddAndOnCheck() throws {
    let state = engine.addBlocklist(try list(1, ["KS-5", "KS-6"]), now: t0, state: held()).state
    for (serial, role, rule) in [("KS-5", Role.active, RuleID.A1), ("KS-6", .reserve, .R8)] {
      let text = issuer.key(serial, exp: exp + .days(100))
      var refusals = [violation(engine.addKey(text, role: role, now: t0, state: state))]
      if case .failure(let checked) = engine.checkKey(text, role: role, now: t0, state: state) {
        refusals.append(checked)
      } else {
        refusals.append(nil)
      }
      for refusal in refusals {
        #expect(
          refusal?.rule == rule && refusal?.code == "key_blocked", "\(serial): \(String(describing: refusal))"
        )
        #expect(refusal?.message.contains("blocked by its issuer") == true)
      }
    }
  }

  @Test func B3_aBlockedKeyFromTheActivationServerIsBadKeyFromServer() throws {
    let code = ActivationCode("abcde-12345-fghij-67890")!
    let a = engine.addKey(
      issuer.key("KS-1", exp: exp), role: .active, code: code, now: t0, state: LicenseState())
    var state = a.state.acknowledging(through: a.state.lastTransitionID)
    state = engine.addBlocklist(try list(1, ["KS-2"]), now: t0, state: state).state
    let renewing = engine.timeReached(now: exp, state: state).state
    let d = engine.attemptSucceeded(
      slot: .server, key: issuer.key("KS-2", exp: exp + .days(365)), now: exp, state: renewing)
    #expect(d.state[.server]?.active == nil)
    let alert = try #require(d.renderedEvents.first { $0.kind == .manualActivationRequired })
    #expect(alert[field: .error]?.hasPrefix("bad_key_from_server") == true)
    #expect(alert[field: .error]?.contains("key_blocked") == true, "\(alert[field: .error] ?? "")")
  }
}
