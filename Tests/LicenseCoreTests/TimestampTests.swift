import LicenseCore
import LicenseTestSupport
import Testing

@Suite struct TimestampTests {
  @Test(arguments: [
    ("1970-01-01T00:00:00Z", Int64(0)),
    ("2027-01-01T00:00:00Z", Int64(1_798_761_600_000_000)),
    ("2024-02-29T23:59:59.5Z", Int64(1_709_251_199_500_000)),
    ("2026-12-31T10:00:00+01:00", Int64(1_798_707_600_000_000)),
    ("2026-12-31t09:00:00.000001z", Int64(1_798_707_600_000_001)),
    ("1969-12-31T23:59:59.999999Z", Int64(-1)),
  ])
  func parsesRFC3339(text: String, microseconds: Int64) {
    #expect(Timestamp(rfc3339: text)?.microseconds == microseconds)
  }

  @Test(arguments: [
    "", "2026-12-31", "2026-12-31T09:00:00", "2026-13-01T00:00:00Z", "2025-02-29T00:00:00Z",
    "2026-12-31T24:00:00Z", "2026-12-31T09:00:00.1234567Z", "2026-12-31T09:00:00.Z", "2026-12-31T09:00:00Z ",
    "2026-12-31T09:00:00+1:00",
  ])
  func refusesWhatIsNotRFC3339(text: String) {
    #expect(Timestamp(rfc3339: text) == nil)
  }

  @Test func formatsUTCWithMicrosecondsOnlyWhenNeeded() {
    #expect(Timestamp(seconds: 1_798_761_600).rfc3339 == "2027-01-01T00:00:00Z")
    #expect(Timestamp(microseconds: 1_798_761_600_000_250).rfc3339 == "2027-01-01T00:00:00.000250Z")
    #expect(Timestamp(microseconds: -1).rfc3339 == "1969-12-31T23:59:59.999999Z")
  }

  @Test func roundTripsEveryDayOfALeapCentury() {
    var t = Timestamp(rfc3339: "1999-12-30T12:34:56.789Z")!
    for _ in 0..<(366 * 102) {
      #expect(Timestamp(rfc3339: t.rfc3339) == t)
      t = t + .days(1)
    }
  }

  @Test func keepsFractionalSecondsToTheMicrosecond() {
    #expect(Timestamp(secondsSinceEpoch: 1_798_761_600.123456)?.microseconds == 1_798_761_600_123_456)
    #expect(Timestamp(secondsSinceEpoch: 1_798_761_600.000001)?.microseconds == 1_798_761_600_000_001)
    #expect(Timestamp(microseconds: 1_798_761_600_123_456).jsonSeconds == "1798761600.123456")
    #expect(Timestamp(microseconds: 1_798_761_600_500_000).jsonSeconds == "1798761600.5")
    #expect(Timestamp(seconds: 1_798_761_600).jsonSeconds == "1798761600")
    #expect(Timestamp(secondsSinceEpoch: .infinity) == nil)
  }

  @Test(arguments: [
    ("250ms", Int64(250_000)), ("5s", 5_000_000), ("10m", 600_000_000), ("1h", 3_600_000_000),
    ("30d", 2_592_000_000_000), ("7us", 7),
  ])
  func parsesSpans(text: String, microseconds: Int64) {
    #expect(TimeSpan(text)?.microseconds == microseconds)
    #expect(TimeSpan(text)?.description == text)
  }

  @Test(arguments: ["", "5", "s", "-5s", "5 s", "1.5h", "5x", "99999999999999999d"])
  func refusesBadSpans(text: String) {
    #expect(TimeSpan(text) == nil)
  }

  @Test func describesSpansInWords() {
    #expect(TimeSpan.days(30).inWords == "30 days")
    #expect(
      (TimeSpan.days(1).microseconds + TimeSpan.hours(1).microseconds)
        == TimeSpan(microseconds: 90_000_000_000).microseconds)
    #expect(TimeSpan(microseconds: 90_000_000_000).inWords == "1 day 1 hour")
    #expect(TimeSpan(microseconds: 303_000_000).inWords == "5 minutes 3 seconds")
    #expect(TimeSpan(microseconds: 400_000).inWords == "400 ms")
    #expect(TimeSpan.hours(48).description == "2d")
  }

  @Test func readsOperatorInstants() {
    let now = Timestamp(seconds: 1_798_761_600)
    #expect(Timestamp(instant: "+90d", now: now) == now + .days(90))
    #expect(Timestamp(instant: "-1h", now: now) == now - .hours(1))
    #expect(Timestamp(instant: "now", now: now) == now)
    #expect(Timestamp(instant: "2027-01-02T00:00:00Z", now: now) == now + .days(1))
    #expect(Timestamp(instant: "tomorrow", now: now) == nil)
  }

  /// An absurd duration saturates instead of trapping (issue 20: `alert-after =
  /// "106751990d"` crashed the agent at every expiry).
  @Test func arithmeticSaturatesAtTheEndsOfTheRange() {
    let far = TimeSpan(microseconds: .max)
    let now = Timestamp(seconds: 1_798_761_600)
    #expect((now + far).microseconds == .max)
    #expect((now - far).microseconds == .min + 1 || (now - far).microseconds < 0)
    #expect((now - TimeSpan(microseconds: .min)).microseconds == .max)
    #expect(Timestamp(microseconds: .min).microseconds(since: now) == .min)
    #expect(Timestamp(microseconds: .max).microseconds(since: Timestamp(microseconds: -1)) == .max)
    #expect(TimeSpan.days(106_751_991_167).microseconds == .max)
    #expect(TimeSpan.seconds(.min).microseconds == .min)
    #expect((far + far).microseconds == .max)
    #expect((far * 2).microseconds == .max)
    #expect(Timestamp(seconds: .max).microseconds == .max)
    // In range, exact.
    #expect(now + .days(1) - .days(1) == now)
  }

  @Test func anAbsurdAlertDelayNeverTrapsThroughTheEngine() {
    let issuer = TestIssuer()
    var configuration = EngineConfiguration()
    configuration.alertAfter = TimeSpan(microseconds: .max)
    configuration.retryMax = TimeSpan(microseconds: .max)
    configuration.retryInitial = TimeSpan(microseconds: .max / 2)
    let engine = LicenseEngine(configuration: configuration, trust: issuer.trust)
    let t0 = TestIssuer.t0
    let exp = t0 + .days(1)
    let code = ActivationCode("abcde-12345-fghij-67890")!
    var state = engine.addKey(
      issuer.key("C", exp: exp), role: .active, code: code, now: t0, state: LicenseState()
    )
    .state
    state = engine.timeReached(now: exp, state: state).state
    state =
      engine.attemptFailed(
        slot: .server, failure: .transient(error: "network", retryAfter: nil), jitter: 0.99, now: exp,
        state: state
      ).state
    #expect(state[.server]?.renewal?.attempts.failures == 1)
    #expect(engine.nextWake(state) != nil)
    _ = engine.timeReached(now: Timestamp(microseconds: .max), state: state)
  }
}
