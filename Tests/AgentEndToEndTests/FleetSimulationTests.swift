import Foundation
import LicenseTestSupport
import Testing

/// `license-agent-bench fleet` (docs/PERFORMANCE.md) at a small scale: the core's own
/// decisions for a fleet whose keys expire together, renewal at expiry against renewal
/// ahead (C6), under outages placed where they hurt.
@Suite struct FleetSimulationTests {
  func simulate(_ arguments: [String]) throws -> (atExpiry: [String: Any]?, ahead: [String: Any]) {
    let result = try runProcess(
      productsDirectory() + "/license-agent-bench", ["fleet", "--seed", "7", "--json"] + arguments)
    #expect(result.status == 0, "\(result.stderr)")
    let object = try #require(
      try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any], "\(result.stdout)")
    return (object["at-expiry"] as? [String: Any], try #require(object["ahead"] as? [String: Any]))
  }

  @Test func C6_anOutageCentredOnTheExpiryLapsesEverySVMAtExpiryAndNoneAhead() throws {
    let (atExpiry, ahead) = try simulate(["--svms", "2000", "--outage", "6h", "--capacity", "50"])
    let at = try #require(atExpiry)
    // At expiry: every SVM lapses until the server returns 3 h after the expiry, and is alerted.
    #expect(at["lapsedSVMs"] as? Int == 2000)
    #expect((at["lapseP50Seconds"] as? Double ?? 0) >= 3 * 3600)
    #expect(at["alertedSVMs"] as? Int == 2000)
    #expect((at["peakPerSecond"] as? Int ?? 0) >= 2000, "the whole fleet asks in the second of the expiry")
    // Ahead: one request per SVM days before, no lapse, no alert, a trickle at the server.
    #expect(ahead["lapsedSVMs"] as? Int == 0)
    #expect(ahead["alertedSVMs"] as? Int == 0)
    #expect(ahead["requests"] as? Int == 2000)
    #expect((ahead["peakPerMinuteRate"] as? Double ?? 99) < 1)
  }

  @Test func C6_anOutageInsideTheWindowIsRiddenOutWithoutLapseOrAlert() throws {
    // A day down, 5 days before the expiry (inside the window): the SVMs that drew an
    // instant in it retry after it, still ahead of the expiry.
    let (_, ahead) = try simulate([
      "--svms", "2000", "--outage", "24h", "--outage-centre=-5d", "--strategy", "ahead",
    ])
    #expect(ahead["lapsedSVMs"] as? Int == 0)
    #expect(ahead["alertedSVMs"] as? Int == 0)
    #expect((ahead["requests"] as? Int ?? 0) > 2000, "some SVMs retried")
    #expect((ahead["peakPerMinuteRate"] as? Double ?? 99) < 5)
  }

  @Test func C6_aPeriodOpenedLateSpreadsTheFleetAfterItsRetryAfter() throws {
    // The vendor opens the next period only 5 days before the expiry: the SVMs that asked
    // earlier hear not_yet_available and come back after Retry-After, spread out.
    let (_, ahead) = try simulate([
      "--svms", "2000", "--outage", "0s", "--opens-before", "5d", "--strategy", "ahead",
    ])
    #expect(ahead["lapsedSVMs"] as? Int == 0)
    #expect((ahead["requests"] as? Int ?? 0) > 2000, "some SVMs asked before the period opened")
    #expect((ahead["peakPerMinuteRate"] as? Double ?? 99) < 5, "no herd at the opening")
  }
}
