import ControlInterface
import Foundation
import LicenseCore
import LicenseTestSupport
import Testing

/// The metrics text (contract §8), rendered from states the engine made.
@Suite struct MetricsTextTests {
  let issuer = TestIssuer()
  let t0 = TestIssuer.t0
  let code = ActivationCode("abcde-12345-fghij-67890")!
  var engine: LicenseEngine { LicenseEngine(trust: issuer.trust) }

  func render(_ state: LicenseState, failures: Int = 0) -> String {
    MetricsText.render(
      state: state, engine: engine, version: "0.1.0", product: "svm-protection", stateWriteFailures: failures)
  }

  /// The samples of `name`, by their label text.
  func samples(_ text: String, _ name: String) -> [String: String] {
    var found: [String: String] = [:]
    for line in text.split(separator: "\n") where line.hasPrefix(name + "{") || line.hasPrefix(name + " ") {
      let parts = line.split(separator: " ")
      found[String(parts[0].dropFirst(name.count))] = String(parts[1])
    }
    return found
  }

  @Test func everyFamilyOfTheContractHasItsTypeAndHelp() throws {
    var state = engine.addKey(
      issuer.key("A", exp: t0 + .days(10)), role: .active, now: t0, state: LicenseState()
    )
    .state
    state = engine.addKey(issuer.key("R", exp: t0 + .days(100)), role: .reserve, now: t0, state: state).state
    state = engine.timeReached(now: t0 + .days(10), state: state).state
    state = engine.reportUsage(slot: .server, units: 3, now: t0 + .days(10), state: state).state
    state =
      engine.confirm(
        consumer: "protection-server", slot: .server, serial: "R", now: t0 + .days(10), state: state
      )
      .state
    // A blocklist blocking the active key R (B1).
    let blocking = try BlocklistParser.sign(
      Blocklist(
        compact: "", kid: issuer.jwk.kid, issuer: "test-issuer", sequence: 1, issuedAt: t0,
        product: "svm-protection",
        entries: [BlockedEntry(serial: "R", since: t0, reason: "resold")]), with: issuer.jwk)
    state = engine.addBlocklist(blocking, now: t0 + .days(10), state: state).state
    #expect(
      samples(render(state), "license_agent_key_blocked") == [
        #"{slot="server",role="active",serial="R"}"#: "1"
      ])
    // B2: its grace ends 8 days after the agent learned of the block.
    let graceEnd = Double((t0 + .days(18)).microseconds / 1_000_000)
    #expect(
      samples(render(state), "license_agent_key_grace_end_timestamp_seconds").mapValues { Double($0) } == [
        #"{slot="server",serial="R"}"#: graceEnd
      ])
    let text = render(state)
    for family in MetricsText.families {
      #expect(text.contains("# TYPE \(family.name) \(family.type)\n"), "\(family.name)")
      #expect(text.contains("# HELP \(family.name) "), "\(family.name)")
    }
    #expect(MetricsText.families.count == 17)
    #expect(text.hasSuffix("\n"))
  }

  @Test func aSlotWithAReserveShowsBothKeysTheTakeoverAndTheNextAction() {
    let exp = t0 + .days(10)
    var state = engine.addKey(issuer.key("A", exp: exp), role: .active, now: t0, state: LicenseState()).state
    state = engine.addKey(issuer.key("R", exp: exp + .days(90)), role: .reserve, now: t0, state: state).state
    let text = render(state)
    let expiry = samples(text, "license_agent_key_expiry_timestamp_seconds")
    #expect(
      expiry == [
        #"{slot="server",role="active",serial="A"}"#: String(exp.microseconds / 1_000_000),
        #"{slot="server",role="reserve",serial="R"}"#: String((exp + .days(90)).microseconds / 1_000_000),
      ])
    #expect(
      samples(text, "license_agent_slot_takeover") == [
        #"{slot="server",takeover="reserve"}"#: "1", #"{slot="server",takeover="pending-renewal"}"#: "0",
        #"{slot="server",takeover="activation-code"}"#: "0", #"{slot="server",takeover="none"}"#: "0",
      ])
    #expect(samples(text, "license_agent_slot_expired") == [#"{slot="server"}"#: "0"])
    // The agent's next act for the slot, as the engine plans it.
    let wake = engine.nextWake(state, slot: .server)!
    #expect(
      samples(text, "license_agent_next_action_timestamp_seconds") == [
        "{slot=\"server\",action=\"\(StatusBuilder.action(wake))\"}": String(wake.at.microseconds / 1_000_000)
      ])
    #expect(samples(text, "license_agent_info") == [#"{version="0.1.0",product="svm-protection"}"#: "1"])
    #expect(samples(text, "license_agent_state_write_failures_total") == ["": "0"])
  }

  @Test func U1_theUnitsOfEachKeyAndTheUsageOnlyOnceReported() {
    let exp = t0 + .days(10)
    var state = engine.addKey(issuer.key("A", exp: exp), role: .active, now: t0, state: LicenseState()).state
    state = engine.addKey(issuer.key("R", exp: exp + .days(90)), role: .reserve, now: t0, state: state).state
    var text = render(state)
    #expect(
      samples(text, "license_agent_key_units") == [
        #"{slot="server",role="active",serial="A"}"#: "10",
        #"{slot="server",role="reserve",serial="R"}"#: "10",
      ])
    // Unknown usage is absent, never 0.
    #expect(samples(text, "license_agent_units_in_use").isEmpty)
    #expect(samples(text, "license_agent_usage_report_timestamp_seconds").isEmpty)
    state = engine.reportUsage(slot: .server, units: 0, now: t0 + .seconds(90), state: state).state
    text = render(state)
    #expect(samples(text, "license_agent_units_in_use") == [#"{slot="server"}"#: "0"])
    #expect(
      samples(text, "license_agent_usage_report_timestamp_seconds") == [
        #"{slot="server"}"#: String((t0 + .seconds(90)).microseconds / 1_000_000)
      ])
  }

  @Test func N2_eachExpectedConsumerAgainstTheActiveKey() {
    let exp = t0 + .days(10)
    let expecting = LicenseEngine(
      configuration: EngineConfiguration(expectedConsumers: [ConsumerName("protection-server")!]),
      trust: issuer.trust)
    func render(_ state: LicenseState) -> String {
      MetricsText.render(
        state: state, engine: expecting, version: "0.1.0", product: "svm-protection", stateWriteFailures: 0)
    }
    var state = expecting.addKey(issuer.key("A", exp: exp), role: .active, now: t0, state: LicenseState())
      .state
    state =
      expecting.addKey(issuer.key("R", exp: exp + .days(90)), role: .reserve, now: t0, state: state).state
    // Expected and not confirmed yet: 0, for the active key.
    #expect(
      samples(render(state), "license_agent_consumer_confirmed") == [
        #"{consumer="protection-server",slot="server",serial="A"}"#: "0"
      ])
    state =
      expecting.confirm(consumer: "protection-server", slot: .server, serial: "A", now: t0, state: state)
      .state
    state = expecting.confirm(consumer: "dashboard", slot: .server, serial: "A", now: t0, state: state).state
    #expect(
      samples(render(state), "license_agent_consumer_confirmed") == [
        #"{consumer="dashboard",slot="server",serial="A"}"#: "1",
        #"{consumer="protection-server",slot="server",serial="A"}"#: "1",
      ])
    // After the takeover the expected one lags behind the new active key until it confirms
    // it; the other, never awaited, is not shown as lagging (an alert watches the zeros).
    state = expecting.timeReached(now: exp, state: state).state
    #expect(
      samples(render(state), "license_agent_consumer_confirmed") == [
        #"{consumer="protection-server",slot="server",serial="R"}"#: "0"
      ])
  }

  @Test func P4_anExpiredSlotAndC4_anAlertAreOne() {
    let exp = t0 + .days(10)
    let added = engine.addKey(
      issuer.key("KS-1", exp: exp), role: .active, code: code, now: t0, state: LicenseState())
    var state = engine.timeReached(now: exp, state: added.state).state
    #expect(
      samples(render(state), "license_agent_slot_takeover")[#"{slot="server",takeover="activation-code"}"#]
        == "1")
    state =
      engine.attemptFailed(
        slot: .server, failure: .permanent(error: "code_blocked"), jitter: 0, now: exp, state: state
      ).state
    let text = render(state, failures: 3)
    #expect(samples(text, "license_agent_slot_expired") == [#"{slot="server"}"#: "1"])
    #expect(
      samples(text, "license_agent_alert") == [#"{slot="server",alert="manual_activation_required"}"#: "1"])
    #expect(samples(text, "license_agent_slot_takeover")[#"{slot="server",takeover="none"}"#] == "1")
    #expect(samples(text, "license_agent_key_expiry_timestamp_seconds").isEmpty)
    #expect(
      samples(text, "license_agent_activation_attempts_total") == [
        #"{slot="server",result="renewed"}"#: "0", #"{slot="server",result="transient"}"#: "0",
        #"{slot="server",result="permanent"}"#: "1",
      ])
    #expect(samples(text, "license_agent_state_write_failures_total") == ["": "3"])
  }

  @Test func instantsAndDelaysAreExactToTheMicrosecond() {
    let exp = Timestamp(microseconds: 1_798_761_600_250_000)
    var state = engine.addKey(issuer.key("A", exp: exp), role: .active, now: t0, state: LicenseState()).state
    state = engine.addKey(issuer.key("R", exp: exp + .days(90)), role: .reserve, now: t0, state: state).state
    state = engine.timeReached(now: exp + TimeSpan(microseconds: 1_234), state: state).state
    let text = render(state)
    #expect(samples(text, "license_agent_last_promotion_delay_seconds") == [#"{slot="server"}"#: "0.001234"])
    #expect(samples(text, "license_agent_promotions_total") == [#"{slot="server"}"#: "1"])
    #expect(
      samples(text, "license_agent_key_expiry_timestamp_seconds")[
        #"{slot="server",role="active",serial="R"}"#]
        == "1806537600.25")
  }

  @Test func labelValuesAreEscaped() throws {
    let text = MetricsText.render(
      state: LicenseState(), engine: engine, version: "1\"\\\n", product: "p", stateWriteFailures: 0)
    #expect(text.contains(#"license_agent_info{version="1\"\\\n",product="p"} 1"#))
  }

  /// promtool, Prometheus's own checker, on the text of a state with every family.
  @Test func promtoolChecksTheText() throws {
    let promtool = "/usr/bin/promtool"
    try #require(
      FileManager.default.isExecutableFile(atPath: promtool), "promtool (Debian's prometheus) is missing")
    let exp = t0 + .days(10)
    var state = engine.addKey(issuer.key("A", exp: exp), role: .active, now: t0, state: LicenseState()).state
    state = engine.addKey(issuer.key("R", exp: exp + .days(90)), role: .reserve, now: t0, state: state).state
    state = engine.timeReached(now: exp, state: state).state
    state =
      engine.addKey(
        issuer.key("W", slot: .workstation, exp: exp), role: .active, code: code, now: t0, state: state
      ).state
    state = engine.timeReached(now: exp + .seconds(1), state: state).state
    let result = try runProcess(promtool, ["check", "metrics"], input: render(state))
    #expect(result.status == 0, "\(result.stdout)\(result.stderr)")
    #expect(result.stdout.isEmpty && result.stderr.isEmpty, "lint: \(result.stdout)\(result.stderr)")
  }

  /// Metrics the contract's table (§8) has ahead of their code, by the open issue that
  /// implements them. That issue adds them to `MetricsText.families` and empties its entry
  /// here.
  static let ahead = SpecAhead([:])

  /// The contract (`../shared/spec/contract.md` §8): every metric of its table, with its
  /// type and labels, and no other, in text that has every family; the metrics listed
  /// ahead are the only ones that may be missing.
  @Test func theNamesTypesAndLabelsAreTheContractsTable() throws {
    let contract = SpecAhead.specFolder + "/contract.md"
    let table = try String(contentsOfFile: contract, encoding: .utf8).split(separator: "\n")
      .filter { $0.hasPrefix("| `license_agent_") }
    var expected: [String: (type: String, labels: Set<String>)] = [:]
    for row in table {
      let cells = row.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
      let name = cells[0].trimmingCharacters(in: ["`"])
      // "`slot`, `role` (`active`, ...), `serial`": the names in backquotes outside brackets.
      var labels: Set<String> = []
      var depth = 0
      for part in cells[2].split(separator: "`", omittingEmptySubsequences: false).enumerated() {
        if part.offset % 2 == 1, depth == 0 { labels.insert(String(part.element)) }
        depth += part.element.filter { $0 == "(" }.count - part.element.filter { $0 == ")" }.count
      }
      expected[name] = (cells[1], labels)
    }
    #expect(expected.count >= 17, "rows found in \(contract)")
    let mismatches = Self.ahead.mismatches(
      kind: "metric", documented: Set(expected.keys), implemented: Set(MetricsText.families.map(\.name)))
    #expect(mismatches.isEmpty, "\(mismatches.joined(separator: "\n"))")
    for family in MetricsText.families {
      #expect(family.type == expected[family.name]?.type, "\(family.name)")
    }
    // Labels as written, on a state with an active and a reserve key, a promotion, a renewal
    // and a failure.
    let exp = t0 + .days(10)
    var state = engine.addKey(issuer.key("A", exp: exp), role: .active, now: t0, state: LicenseState()).state
    state = engine.addKey(issuer.key("R", exp: exp + .days(90)), role: .reserve, now: t0, state: state).state
    state = engine.timeReached(now: exp, state: state).state
    state =
      engine.addKey(issuer.key("R2", exp: exp + .days(180)), role: .reserve, now: exp, state: state).state
    state = engine.reportUsage(slot: .server, units: 3, now: exp, state: state).state
    let text = render(state)
    for line in text.split(separator: "\n") where !line.hasPrefix("#") {
      let name = String(line.prefix { $0 != "{" && $0 != " " })
      var labels: Set<String> = []
      if let open = line.firstIndex(of: "{"), let close = line.lastIndex(of: "}") {
        for pair in line[line.index(after: open)..<close].split(separator: ",") {
          labels.insert(String(pair.prefix { $0 != "=" }))
        }
      }
      #expect(labels == expected[name]?.labels, "\(line)")
    }
  }
}
