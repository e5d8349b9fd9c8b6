import Foundation
import Glibc
import LicenseCore
import LicenseStorage
import LicenseTestSupport
import Testing

/// The state's schemas (LicenseStateCoding.swift): every state 0.1.0 writes (schema 1) is
/// read with nothing lost, written back as schema 2, and written again as schema 1 for a
/// downgrade. The fixtures are state files that 0.1.0's own engine wrote (its code at
/// 43c01d5, driven through the states below), in `Fixtures/state-v1/`:
///
/// | fixture | what it holds |
/// |---|---|
/// | held | a server key and its reserve (a threshold passed); a workstation key from a code, its renewal ahead failed once (due); counters, the outbox, a delivered event, an unclean close |
/// | pending-and-underway | a server key from a code with its pending key (obtained ahead); a workstation key whose first request ahead is under way |
/// | stopped-ahead | a renewal ahead stopped by a permanent refusal, its alert raised |
/// | lapsed | a renewal at expiry retrying (due), its alert raised; a slot expired for good |
/// | lapsed-stopped-and-underway | a renewal at expiry stopped (permanent); one under way |
@Suite struct StateSchemaTests {
  static let fixtures =
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().path + "/Fixtures/state-v1"
  static let names = [
    "held", "pending-and-underway", "stopped-ahead", "lapsed", "lapsed-stopped-and-underway",
  ]

  func fixture(_ name: String) throws -> Data {
    try Data(contentsOf: URL(fileURLWithPath: "\(Self.fixtures)/\(name).json"))
  }

  /// A store in a new folder whose state.json is `data`.
  func store(with data: Data) throws -> (FileStateStore, String) {
    let dir = makeTemporaryDirectory()
    try data.write(to: URL(fileURLWithPath: dir + "/state.json"))
    return (try FileStateStore(directory: dir), dir)
  }

  @Test(arguments: names)
  func aStateOf010IsReadWithNothingLost(name: String) throws {
    let data = try fixture(name)
    let original = try JSONDecoder().decode(LicenseStateVersion1.self, from: data)
    let (store, dir) = try store(with: data)
    defer { removeTemporaryDirectory(dir) }
    let loaded = try store.load()
    #expect(loaded.recovery == nil)
    // Back in schema 1 it is the file 0.1.0 wrote, field for field: nothing was lost.
    #expect(loaded.state.version1 == original)
    // Written in schema 2 and read again: the same state.
    try store.save(loaded.state)
    let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: store.stateFile)))
    #expect((json as? [String: Any])?["schemaVersion"] as? Int == 2)
    #expect(try FileStateStore(directory: dir).load().state == loaded.state)
  }

  @Test(arguments: names)
  func aDowngradeWritesBothFilesInSchema1AsTheyWere(name: String) throws {
    let data = try fixture(name)
    let original = try JSONDecoder().decode(LicenseStateVersion1.self, from: data)
    let (store, dir) = try store(with: data)
    defer { removeTemporaryDirectory(dir) }
    try store.save(try store.load().state)  // as the agent does at start: schema 2
    _ = try store.downgrade(toSchema: 1)
    for file in [store.stateFile, store.stateFile + ".prev"] {
      let written = try Data(contentsOf: URL(fileURLWithPath: file))
      #expect(try JSONDecoder().decode(LicenseStateVersion1.self, from: written) == original, "\(file)")
    }
  }

  /// What each slot became, case by case.
  @Test func theCasesOfTheFixtures() throws {
    func load(_ name: String) throws -> LicenseState {
      try JSONDecoder().decode(LicenseState.self, from: try fixture(name))
    }
    let held = try load("held")
    #expect(held[.server]?.reserve?.serial == "KS-R" && held[.server]?.held?.warned == [.days(30)])
    let ahead = try #require(held[.workstation]?.ahead)
    #expect(ahead.attempts.failures == 1 && ahead.attempts.dueAt != nil)
    #expect(ahead.attempts.lastError == "network: connection refused" && !ahead.attempts.alertRaised)
    #expect(held[.workstation]?.active?.activationCode?.hint == "67890")
    #expect(!held.outbox.isEmpty && held.delivered.count == 1 && !held.closedCleanly)
    #expect(held.counters[.workstation]?.transientFailures == 1)

    let pending = try load("pending-and-underway")
    #expect(pending[.server]?.pending?.serial == "KS-2")
    #expect(pending[.workstation]?.ahead?.attempts.isUnderWay == true)

    let stopped = try load("stopped-ahead")
    #expect(stopped[.server]?.ahead?.attempts.isStopped == true)
    #expect(stopped[.server]?.ahead?.attempts.alertRaised == true)

    let lapsed = try load("lapsed")
    let renewal = try #require(lapsed[.server]?.renewal)
    #expect(lapsed[.server]?.expired?.serial == "KS-1")
    #expect(
      renewal.attempts.dueAt != nil && renewal.attempts.alertRaised
        && renewal.attempts.lastError == "http_503")
    #expect(lapsed[.workstation]?.renewal == nil && lapsed[.workstation]?.expired?.serial == "KW-1")

    let mixed = try load("lapsed-stopped-and-underway")
    #expect(mixed[.server]?.renewal?.attempts.isStopped == true)
    #expect(mixed[.server]?.renewal?.attempts.lastError == "code_expired")
    #expect(mixed[.workstation]?.renewal?.attempts.isUnderWay == true)
  }

  /// A schema 2 file that holds two successors for one slot, or a slot neither held nor
  /// lapsed, is damaged (the last good copy is used), not half read.
  @Test func aSchema2SlotWithTwoSuccessorsIsDamaged() throws {
    let issuer = TestIssuer()
    let key = issuer.key("KS-1", exp: TestIssuer.t0 + .days(10))
    let reserve = issuer.key("KS-R", exp: TestIssuer.t0 + .days(40))
    let installed = { (text: String) in "{\"key\":\"\(text)\",\"addedAt\":{\"microseconds\":0}}" }
    let text = """
      {"schemaVersion":2,"stateID":"s","lastTransitionID":1,"outbox":[],"slots":{"server":{"held":{\
      "active":\(installed(key)),"warned":[],"reserve":\(installed(reserve)),"pending":\(installed(reserve))}}}}
      """
    #expect(throws: (any Error).self) { try JSONDecoder().decode(LicenseState.self, from: Data(text.utf8)) }
    let neither = #"{"schemaVersion":2,"stateID":"s","lastTransitionID":1,"outbox":[],"slots":{"server":{}}}"#
    #expect(throws: (any Error).self) {
      try JSONDecoder().decode(LicenseState.self, from: Data(neither.utf8))
    }
  }
}
