import ControlInterface
import Dispatch
import Foundation
import LicenseCore
import LicenseTestSupport
import RuntimeTestSupport
import Testing

@testable import AgentRuntime
@testable import Varlink

/// The metrics file (contract §8) the running agent writes after each kind of change, read
/// back and held against the status the agent answers at the same moment: same keys, same
/// instants. On the runtime's twins: the clock is set and the timer fired by the test.
@Suite struct MetricsRuntimeTests {
  typealias Fixture = AgentRuntimeTests.Fixture

  /// The file once every write already asked for is done. A change under way on the agent's
  /// queue asks for the write from inside its block: the first sync waits for that block,
  /// the second for the rendering it queued, which queued the write on the metrics queue.
  func metrics(_ f: Fixture) throws -> [String: String] {
    f.agent.queue.sync {}
    f.agent.queue.sync {}
    f.agent.metricsQueue.sync {}
    return PrometheusText.samples(
      try String(contentsOfFile: f.folder + "/license-agent.prom", encoding: .utf8))
  }

  func micros(_ value: String?) -> Int64? { PrometheusText.microseconds(value) }

  /// Every key of the status is in the file with its instants, nothing else is, and the
  /// earliest next action is the status's.
  func expectSame(
    _ f: Fixture, _ samples: [String: String], sourceLocation: SourceLocation = #_sourceLocation
  ) {
    let status = f.agent.sync { $0.status() }
    var keys: [String: Int64] = [:]
    for slot in status.slots {
      for (role, key) in [("active", slot.active), ("reserve", slot.reserve)] {
        guard let key else { continue }
        keys["{slot=\"\(slot.slot)\",role=\"\(role)\",serial=\"\(key.serial)\"}"] =
          Timestamp(
            rfc3339: key.expiresAt)?.microseconds
      }
      let expired = samples["license_agent_slot_expired{slot=\"\(slot.slot)\"}"]
      #expect(expired == (slot.active == nil ? "1" : "0"), "\(slot.slot)", sourceLocation: sourceLocation)
      #expect(
        samples["license_agent_slot_takeover{slot=\"\(slot.slot)\",takeover=\"\(slot.takeover.rawValue)\"}"]
          == "1",
        "\(slot.slot) \(slot.takeover)", sourceLocation: sourceLocation)
    }
    let prefix = "license_agent_key_expiry_timestamp_seconds"
    let inFile = Dictionary(
      uniqueKeysWithValues: samples.filter { $0.key.hasPrefix(prefix + "{") }.map {
        (String($0.key.dropFirst(prefix.count)), micros($0.value) ?? -1)
      })
    #expect(inFile == keys, sourceLocation: sourceLocation)
    let next = samples.filter { $0.key.hasPrefix("license_agent_next_action_timestamp_seconds{") }
      .min { (micros($0.value) ?? 0) < (micros($1.value) ?? 0) }
    #expect(
      next.flatMap { micros($0.value) }
        == status.nextAction.flatMap { Timestamp(rfc3339: $0.at)?.microseconds },
      sourceLocation: sourceLocation)
    if let action = status.nextAction?.action {
      #expect(
        next?.key.contains("action=\"\(action)\"") == true, "\(String(describing: next))",
        sourceLocation: sourceLocation)
    }
  }

  @Test func afterAnAddAPromotionAndAClockStepTheFileTellsWhatTheStatusTells() throws {
    let f = try Fixture()
    defer { f.stop() }
    var samples = try metrics(f)
    #expect(samples["license_agent_info{version=\"\(Agent.version)\",product=\"svm-protection\"}"] == "1")
    #expect(samples["license_agent_state_write_failures_total"] == "0")
    let exp = TestIssuer.t0 + .days(40)
    f.keyPair(expiring: exp)
    samples = try metrics(f)
    expectSame(f, samples)
    #expect(samples.keys.contains { $0.contains("serial=\"R\"") && $0.contains("role=\"reserve\"") })
    // P1 at the timer: R becomes active, counted, with its delay.
    f.fire(at: exp + TimeSpan(microseconds: 2_000))
    samples = try metrics(f)
    expectSame(f, samples)
    #expect(samples["license_agent_promotions_total{slot=\"server\"}"] == "1")
    #expect((micros(samples["license_agent_last_promotion_delay_seconds{slot=\"server\"}"]) ?? 0) >= 2_000)
    #expect(samples["license_agent_slot_takeover{slot=\"server\",takeover=\"none\"}"] == "1")
    // T1: the clock is stepped past two warning thresholds of R (90 days): the warnings
    // are logged and the next action moves on, in the file as in the status.
    let step = exp + .days(90) - .days(7) + .seconds(1)
    f.clock.set(step)
    f.agent.sync { $0.clockStepped(by: step.microseconds(since: exp)) }
    samples = try metrics(f)
    expectSame(f, samples)
    #expect(
      samples.contains {
        $0.key.hasPrefix("license_agent_next_action_timestamp_seconds{slot=\"server\",action=\"warning\"}")
      })
  }

  @Test func aRenewalAndThenAnAlertAreInTheFile() throws {
    let issuer = TestIssuer()
    let exp = TestIssuer.t0 + .hours(2)
    let client = ScriptedClient([
      .key(issuer.key("K-1", exp: exp)),  // the manual activation
      .key(issuer.key("K-2", exp: exp + .days(1))),  // the renewal at exp
      .failure(.permanent(error: "code_blocked")),  // the next one
    ])
    let f = try Fixture(client: client, issuer: issuer)
    defer { f.stop() }
    #expect(f.activate())
    var samples = try metrics(f)
    expectSame(f, samples)
    #expect(samples["license_agent_slot_takeover{slot=\"server\",takeover=\"activation-code\"}"] == "1")
    f.fire(at: exp)
    #expect(f.sink.wait(for: .activationRenewed))
    samples = try metrics(f)
    expectSame(f, samples)
    #expect(samples["license_agent_activation_attempts_total{slot=\"server\",result=\"renewed\"}"] == "1")
    f.fire(at: exp + .days(1))
    #expect(f.sink.wait(for: .manualActivationRequired))
    samples = try metrics(f)
    expectSame(f, samples)
    #expect(samples["license_agent_alert{slot=\"server\",alert=\"manual_activation_required\"}"] == "1")
    #expect(samples["license_agent_slot_expired{slot=\"server\"}"] == "1")
    #expect(samples["license_agent_activation_attempts_total{slot=\"server\",result=\"permanent\"}"] == "1")
  }

  @Test func aFailedStateWriteIsCountedInTheFile() throws {
    let f = try Fixture()
    defer { f.stop() }
    f.store.fail(1)
    let reply = f.add(f.issuer.key("A", exp: TestIssuer.t0 + .days(40)), "active")
    guard case .failure? = reply else {
      Issue.record("the add should have failed: \(String(describing: reply))")
      return
    }
    #expect(try metrics(f)["license_agent_state_write_failures_total"] == "1")
    f.add(f.issuer.key("A", exp: TestIssuer.t0 + .days(40)), "active")
    let samples = try metrics(f)
    #expect(samples["license_agent_state_write_failures_total"] == "1")
    expectSame(f, samples)
  }

  @Test func theFileGoesWhenTheAgentStops() throws {
    let f = try Fixture()
    _ = try metrics(f)
    f.agent.sync { $0.stop() }
    #expect(!FileManager.default.fileExists(atPath: f.folder + "/license-agent.prom"))
    removeTemporaryDirectory(f.folder)
  }
}
