import Foundation
import Glibc
import LicenseCore
import LicenseStorage
import LicenseTestSupport
import Testing

/// A crash injected at a named step of a write.
struct SimulatedCrash: Error {}

@Suite struct FileStateStoreTests {
  let issuer = TestIssuer()
  let t0 = TestIssuer.t0
  var engine: LicenseEngine { LicenseEngine(trust: issuer.trust) }

  /// A state holding an active key and a reserve, as an operator would build it.
  func sampleState() -> LicenseState {
    var s = LicenseState()
    s = engine.addKey(issuer.key("KS-1", exp: t0 + .days(10)), role: .active, now: t0, state: s).state
    s = engine.addKey(issuer.key("KS-R", exp: t0 + .days(40)), role: .reserve, now: t0, state: s).state
    return s
  }

  func mode(_ path: String) -> mode_t {
    var info = stat()
    #expect(stat(path, &info) == 0, "stat \(path)")
    return info.st_mode & 0o777
  }

  func files(_ directory: String) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).sorted()
  }

  @Test func savesAndLoadsTheWholeState() throws {
    let dir = makeTemporaryDirectory()
    defer { removeTemporaryDirectory(dir) }
    let store = try FileStateStore(directory: dir + "/state")
    #expect(try store.load() == LoadedState(state: LicenseState(), recovery: nil))
    let state = sampleState()
    try store.save(state)
    let reopened = try FileStateStore(directory: dir + "/state")
    #expect(try reopened.load() == LoadedState(state: state, recovery: nil))
  }

  @Test func stateFilesAre0600InA0700Directory() throws {
    let dir = makeTemporaryDirectory()
    defer { removeTemporaryDirectory(dir) }
    let stateDir = dir + "/state"
    let store = try FileStateStore(directory: stateDir)
    try store.save(sampleState())
    try store.save(sampleState())
    #expect(mode(stateDir) == 0o700)
    #expect(mode(store.stateFile) == 0o600)
    #expect(mode(store.stateFile + ".prev") == 0o600)
    // A directory made too wide by hand is tightened.
    chmod(stateDir, 0o755)
    _ = try FileStateStore(directory: stateDir)
    #expect(mode(stateDir) == 0o700)
  }

  @Test func theFileIsSchemaVersionedJSON() throws {
    let dir = makeTemporaryDirectory()
    defer { removeTemporaryDirectory(dir) }
    let store = try FileStateStore(directory: dir)
    try store.save(sampleState())
    let json =
      try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: store.stateFile)))
      as? [String: Any]
    #expect(json?["schemaVersion"] as? Int == LicenseState.currentSchemaVersion)
    #expect((json?["slots"] as? [String: Any])?.keys.sorted() == ["server"])
  }

  @Test func aLeftoverTemporaryFileIsIgnoredAndRemoved() throws {
    let dir = makeTemporaryDirectory()
    defer { removeTemporaryDirectory(dir) }
    let store = try FileStateStore(directory: dir)
    let state = sampleState()
    try store.save(state)
    try Data("{\"schemaVersion\":1,\"slo".utf8).write(to: URL(fileURLWithPath: store.stateFile + ".tmp"))
    #expect(try store.load() == LoadedState(state: state, recovery: nil))
    #expect(!files(dir).contains("state.json.tmp"))
  }

  /// Killing the process between any two steps of a write leaves a state that loads, and
  /// that is either the old state or the new one, never a mix, and loses no key.
  @Test(arguments: WriteStep.allCases)
  func aCrashAtAnyStepOfAWriteLeavesTheOldOrTheNewState(step: WriteStep) throws {
    let dir = makeTemporaryDirectory()
    defer { removeTemporaryDirectory(dir) }
    let old = sampleState()
    try FileStateStore(directory: dir).save(old)
    let promoted = engine.timeReached(now: t0 + .days(10), state: old).state
    let crashing = try FileStateStore(directory: dir) { reached in
      if reached == step { throw SimulatedCrash() }
    }
    #expect(throws: StateStoreError.self) { try crashing.save(promoted) }
    // The process is gone; a new one starts and loads.
    let loaded = try FileStateStore(directory: dir).load()
    #expect(loaded.recovery == nil)
    let renamedYet = [.renamed, .directorySynced].contains(step)
    #expect(loaded.state == (renamedYet ? promoted : old))
    // No key lost: both keys are still held, whichever state it is.
    let serials = [loaded.state[.server]?.active?.serial, loaded.state[.server]?.reserve?.serial].compactMap {
      $0
    }
    #expect(Set(serials).isSuperset(of: renamedYet ? ["KS-R"] : ["KS-1", "KS-R"]))
    #expect(!files(dir).contains { $0.hasSuffix(".tmp") })
  }

  /// P2 across a crash: the promotion is applied once, announced once.
  @Test func aCrashBetweenPersistAndAnnounceReplaysTheEventsOnceAndNeverRepromotes() throws {
    let dir = makeTemporaryDirectory()
    defer { removeTemporaryDirectory(dir) }
    var state = sampleState()
    state = state.acknowledging(through: state.lastTransitionID)
    let store = try FileStateStore(directory: dir)
    try store.save(state)
    let exp = t0 + .days(10)
    let decision = engine.timeReached(now: exp, state: state)
    try store.save(decision.state)
    // Crash here: saved, nothing announced yet. Restart:
    var announced: [JournalEvent] = []
    var delivered = Set<UInt64>()
    func deliver(_ s: LicenseState) -> LicenseState {
      for event in s.outbox where !delivered.contains(event.transitionID!) { announced.append(event) }
      delivered.formUnion(s.outbox.compactMap(\.transitionID))
      return s.acknowledging(through: s.lastTransitionID)
    }
    var restarted = try FileStateStore(directory: dir).load().state
    #expect(restarted.outbox.map(\.kind) == [.keyPromoted])
    // At start the agent re-evaluates time: nothing left to promote.
    let catchUp = engine.timeReached(now: exp + .seconds(5), state: restarted)
    #expect(catchUp.persistedTransition == nil)
    restarted = deliver(restarted)
    try store.save(restarted)
    // A second restart after acknowledging: nothing pending, nothing re-announced.
    let again = try FileStateStore(directory: dir).load().state
    #expect(again.outbox.isEmpty)
    _ = deliver(again)
    #expect(announced.map(\.kind) == [.keyPromoted])
    #expect(again[.server]?.active?.serial == "KS-R")
  }

  @Test(arguments: ["truncated", "garbage", "empty", "wrong-shape", "bad-key"])
  func aDamagedStateFileIsKeptAsideAndTheLastGoodCopyRestored(damage: String) throws {
    let dir = makeTemporaryDirectory()
    defer { removeTemporaryDirectory(dir) }
    let store = try FileStateStore(directory: dir)
    let first = sampleState()
    try store.save(first)
    let second = engine.addKey(
      issuer.key("KS-R2", exp: t0 + .days(50)), role: .reserve, now: t0, state: first
    ).state
    try store.save(second)
    let good = try Data(contentsOf: URL(fileURLWithPath: store.stateFile))
    let damaged: Data
    switch damage {
    case "truncated": damaged = good.prefix(good.count / 2)
    case "garbage": damaged = Data((0..<200).map { _ in UInt8.random(in: 0...255) })
    case "empty": damaged = Data()
    case "wrong-shape": damaged = Data("{\"schemaVersion\":1,\"slots\":[1,2]}".utf8)
    default:
      damaged = Data(String(decoding: good, as: UTF8.self).replacingOccurrences(of: "eyJ", with: "xyz").utf8)
    }
    try damaged.write(to: URL(fileURLWithPath: store.stateFile))
    let loaded = try FileStateStore(directory: dir).load()
    #expect(loaded.state == first, "the previous good copy")
    let recovery = try #require(loaded.recovery)
    #expect(!recovery.error.isEmpty)
    // The damaged file is kept for inspection, byte for byte.
    #expect(FileManager.default.contents(atPath: recovery.quarantinedFile) == damaged)
    #expect(recovery.quarantinedFile.contains("state.json.corrupt-"))
    // And the restored state is durable: the next start loads it without recovery.
    #expect(try FileStateStore(directory: dir).load() == LoadedState(state: first, recovery: nil))
    let event = LicenseEvent.stateRecovered(error: recovery.error, file: store.stateFile).rendered
    #expect(event.kind == .stateRecovered && event[field: .error] == recovery.error)
  }

  @Test func aDamagedFileWithNoGoodCopyRefusesToStartAndTouchesNothing() throws {
    let dir = makeTemporaryDirectory()
    defer { removeTemporaryDirectory(dir) }
    let store = try FileStateStore(directory: dir)
    try store.save(sampleState())
    try Data("{\"schemaVersion\":1,".utf8).write(to: URL(fileURLWithPath: store.stateFile))
    let before = files(dir)
    do {
      _ = try FileStateStore(directory: dir).load()
      Issue.record("a damaged state with no good copy must not load")
    } catch {
      #expect(error.file == store.stateFile)
      #expect(error.description.contains("damaged"))
      #expect(error.remedy.contains("Move the file aside"))
    }
    #expect(files(dir) == before)
    #expect(FileManager.default.contents(atPath: store.stateFile) == Data("{\"schemaVersion\":1,".utf8))
  }

  @Test func bothCopiesDamagedRefusesToStart() throws {
    let dir = makeTemporaryDirectory()
    defer { removeTemporaryDirectory(dir) }
    let store = try FileStateStore(directory: dir)
    try store.save(sampleState())
    try store.save(sampleState())
    try Data("x".utf8).write(to: URL(fileURLWithPath: store.stateFile))
    try Data("y".utf8).write(to: URL(fileURLWithPath: store.stateFile + ".prev"))
    #expect(throws: StateStoreError.self) { try FileStateStore(directory: dir).load() }
  }

  @Test func aStateFromANewerVersionIsRefusedNotDowngraded() throws {
    let dir = makeTemporaryDirectory()
    defer { removeTemporaryDirectory(dir) }
    let store = try FileStateStore(directory: dir)
    try store.save(sampleState())
    let newer = Data("{\"schemaVersion\":3,\"slots\":{},\"future\":true}".utf8)
    try newer.write(to: URL(fileURLWithPath: store.stateFile))
    do {
      _ = try store.load()
      Issue.record("expected a refusal")
    } catch {
      #expect(error.problem.contains("newer license-agent"))
    }
    #expect(FileManager.default.contents(atPath: store.stateFile) == newer)
  }

  @Test func aDeletedStateFileIsRestoredFromTheLastGoodCopy() throws {
    let dir = makeTemporaryDirectory()
    defer { removeTemporaryDirectory(dir) }
    let store = try FileStateStore(directory: dir)
    let state = sampleState()
    try store.save(state)
    try store.save(state)
    unlink(store.stateFile)
    let loaded = try store.load()
    #expect(loaded.state == state)
    #expect(loaded.recovery?.error == "state.json was missing")
  }

  @Test func aFailedWriteLeavesThePreviousStateIntactAndSaysWhatToDo() throws {
    guard getuid() != 0 else {
      // Root ignores directory permissions; the read-only case runs as a non-root user in
      // the packaging tests. Here, make the write fail by replacing the temp path with a directory.
      let dir = makeTemporaryDirectory()
      defer { removeTemporaryDirectory(dir) }
      let store = try FileStateStore(directory: dir)
      let state = sampleState()
      try store.save(state)
      try store.save(state)
      mkdir(store.stateFile + ".tmp", 0o700)
      mkdir(store.stateFile + ".tmp/x", 0o700)
      do {
        try store.save(LicenseState())
        Issue.record("the write must fail")
      } catch {
        #expect(error.remedy.contains("previous state is intact"))
      }
      rmdir(store.stateFile + ".tmp/x")
      rmdir(store.stateFile + ".tmp")
      #expect(try store.load().state == state)
      return
    }
    let dir = makeTemporaryDirectory()
    defer {
      chmod(dir, 0o700)
      removeTemporaryDirectory(dir)
    }
    let store = try FileStateStore(directory: dir)
    let state = sampleState()
    try store.save(state)
    chmod(dir, 0o500)
    #expect(throws: StateStoreError.self) { try store.save(LicenseState()) }
    chmod(dir, 0o700)
    #expect(try store.load().state == state)
  }
}

@Suite struct TrustDirectoryTests {
  @Test func loadsPublicJWKsAndReportsEveryBadFile() throws {
    let dir = makeTemporaryDirectory()
    defer { removeTemporaryDirectory(dir) }
    let a = JWK.generate(kid: "a")
    let b = JWK.generate(kid: "b")
    let copyOfA = JWK.generate(kid: "a")
    try a.publicJSON.write(toFile: dir + "/a.jwk", atomically: true, encoding: .utf8)
    try b.privateJSON.write(toFile: dir + "/b.jwk", atomically: true, encoding: .utf8)
    try copyOfA.publicJSON.write(toFile: dir + "/c.jwk", atomically: true, encoding: .utf8)
    try "not json".write(toFile: dir + "/d.jwk", atomically: true, encoding: .utf8)
    try b.publicJSON.write(toFile: dir + "/README.txt", atomically: true, encoding: .utf8)
    let (trust, problems) = TrustDirectory.load(dir)
    #expect(trust.keys.keys.sorted() == ["a"])
    #expect(trust.keys["a"]?.publicKey == a.publicKey)
    #expect(problems.map { ($0.file as NSString).lastPathComponent } == ["b.jwk", "c.jwk", "d.jwk"])
    #expect(problems[0].problem.contains("private key"))
    #expect(problems[1].problem.contains("kid \"a\""))
  }

  @Test func aMissingDirectoryTrustsNobody() {
    let (trust, problems) = TrustDirectory.load("/nonexistent/trusted-issuers")
    #expect(trust.keys.isEmpty && problems.isEmpty)
  }
}
