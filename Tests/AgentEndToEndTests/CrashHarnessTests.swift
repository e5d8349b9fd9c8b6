import Foundation
import LicenseCore
import LicenseStorage
import LicenseTestSupport
import Testing

/// The crash-consistency harness (`license-agent-bench crash`, docs/RELIABILITY.md) in its
/// short form: 50 trials, half of them killed at each step of each of the first five state
/// writes, the others at random instants (12 of them while a code's key is renewed, 6 of
/// these ahead of its expiry); 6 promote at the end of a blocked key's grace (B2), 3 killed at
/// random instants and 3 at write steps. No invariant may break.
@Suite struct CrashHarnessTests {
  @Test func fiftyCrashTrialsBreakNoInvariant() throws {
    try #require(AgentHarness.journalIsRunning, "no journal socket: start systemd-journald (.ci/run does)")
    let result = try runProcess(
      productsDirectory() + "/license-agent-bench", ["crash", "--trials", "50", "--parallel", "2", "--json"])
    let summary = try #require(
      try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any],
      "\(result.stdout) \(result.stderr)")
    #expect(summary["trials"] as? Int == 50)
    #expect(summary["violations"] as? Int == 0, "\(summary["invariants"] ?? [:])")
    #expect(result.status == 0)
    let kinds = try #require(summary["kinds"] as? [String: Int])
    for step in WriteStep.allCases {
      for write in 1...5 {
        #expect(
          kinds["step \(step.rawValue) of write \(write)"] == 1,
          "a trial crashed at \(step) of write \(write)")
      }
    }
    #expect(kinds["SIGKILL at a random instant"] == 7)
    #expect(kinds["grace end, SIGKILL at a random instant"] == 3)
    #expect(kinds.filter { $0.key.hasPrefix("grace end, step ") }.values.reduce(0, +) == 3)
    #expect(kinds["renewal, SIGKILL at a random instant"] == 6)
    #expect(kinds["renewal ahead, SIGKILL at a random instant"] == 6)
    #expect((summary["restarts"] as? Int ?? 0) >= 50, "every trial was killed and restarted")
  }
}
