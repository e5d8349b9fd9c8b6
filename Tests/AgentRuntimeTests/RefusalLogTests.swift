import Testing

@testable import AgentRuntime

/// The rate of the control plane's refusal lines (issue 20: a stream of refused calls wrote
/// up to 498,674 lines in 12 s, and journald's rate limit then dropped the agent's events).
@Suite struct RefusalLogTests {
  @Test func oneLinePerMinuteAndUserWithTheCountOfThoseNotLogged() {
    var log = RefusalLog()
    let nobody = RefusalLog.Key(kind: .denied, uid: 65534)
    let other = RefusalLog.Key(kind: .denied, uid: 1000)
    #expect(log.admit(nobody, now: 0) == .log(unlogged: 0))
    #expect(log.admit(nobody, now: 1) == .suppressed(firstSinceLine: true))
    for t in 2..<100_000 {
      #expect(log.admit(nobody, now: Int64(t) / 2) == .suppressed(firstSinceLine: false))
    }
    // Another user, or another kind of refusal, has its own line.
    #expect(log.admit(other, now: 10) == .log(unlogged: 0))
    #expect(log.admit(RefusalLog.Key(kind: .dropped(.userLimit), uid: 65534), now: 10) == .log(unlogged: 0))
    // A minute later: one line, with the count of the others.
    #expect(log.admit(nobody, now: 60_000) == .log(unlogged: 99_999))
  }

  @Test func theClosingLineCountsWhatFollowedTheLastLineAndStartsAMinute() {
    var log = RefusalLog()
    let key = RefusalLog.Key(kind: .denied, uid: 65534)
    _ = log.admit(key, now: 0)
    for t in 1...5 { _ = log.admit(key, now: Int64(t)) }
    #expect(log.takeSuppressed(key, now: 60_000) == 5)
    #expect(log.takeSuppressed(key, now: 60_001) == nil)
    #expect(log.admit(key, now: 60_002) == .suppressed(firstSinceLine: true))
    #expect(log.admit(key, now: 120_000) == .log(unlogged: 1))
  }

  @Test func theKeysKeptAreBounded() {
    var log = RefusalLog()
    for uid in 0..<UInt32(3 * RefusalLog.maximumKeys) {
      _ = log.admit(RefusalLog.Key(kind: .denied, uid: uid), now: Int64(uid) * 60_000)
    }
    #expect(log.keyCount <= RefusalLog.maximumKeys)
    // Old quiet users are forgotten; a recent one is still limited.
    let recent = RefusalLog.Key(kind: .denied, uid: UInt32(3 * RefusalLog.maximumKeys - 1))
    #expect(
      log.admit(recent, now: Int64(3 * RefusalLog.maximumKeys - 1) * 60_000 + 1)
        == .suppressed(firstSinceLine: true))
  }
}
