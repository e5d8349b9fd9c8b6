import Foundation
import Glibc
import LicenseTestSupport
import Testing

/// The short run of `scripts/vm-proof` (docs/RELIABILITY.md, "On a real virtual machine"):
/// one boot of a Debian 12 guest with qemu (KVM when it works, else TCG) with the package
/// installed and the agent under its real unit; a pause of the whole guest across an
/// expiry (QMP stop/cont), then the guest's clock set from its RTC; the same for a
/// save/restore (the guest saved to a file, a new qemu started from it); a real clock step
/// forward past an expiry and one backward; steps back and forward while a renewal
/// retries. The guest's clock is its own. Then a few power cuts: the agent's state and the
/// journal on a dm-log-writes device in the guest, crash states replayed from its log and
/// the agent started on each.
@Suite(.serialized) struct VirtualMachineTests {
  /// Runs `scripts/vm-proof --json --deb <the built package> ARGUMENTS`: its report and how
  /// it ended; nil (recorded as an issue) when not root. Awaited on a thread of its own: the
  /// guest runs for minutes, and the other suites go on meanwhile.
  func vmProof(_ arguments: [String]) async throws -> (report: [String: Any], result: ProcessResult)? {
    if getuid() != 0 {
      Issue.record("the virtual machine proof needs root (chroot, mkfs.ext4 -d, qemu, mount)")
      return nil
    }
    let deb = try SystemdEndToEndTests.builtPackage()
    let result = try await runProcessInBackground(
      BootedContainer.repository + "/scripts/vm-proof", ["--json", "--deb", deb] + arguments)
    let report = try #require(
      try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any],
      "vm-proof printed no report: \(result.stdout) \(result.stderr.suffix(3000))")
    return (report, result)
  }

  @Test func aRealGuestPromotesAcrossAPauseASaveRestoreAndRealClockStepsOnce() async throws {
    guard let (report, result) = try await vmProof(["--pause", "20"]) else { return }
    #expect(
      report["finished"] as? Bool == true,
      "the guest's scenario did not finish: \(result.stderr.suffix(3000))")
    #expect(["kvm", "tcg"].contains(report["accel"] as? String ?? ""))
    let checks = try #require(report["checks"] as? [[String: Any]])
    #expect(checks.count == 10)
    for check in checks {
      #expect(check["ok"] as? Bool == true, "\(check["check"] ?? "?"): \(check["detail"] ?? "")")
    }
    #expect(result.status == 0)
  }

  /// The short run of `scripts/vm-proof --power-cuts` (docs/RELIABILITY.md, "Power cuts"):
  /// the guest adds keys, promotes and renews ahead with its state directory and journal on
  /// a dm-log-writes device; 12 crash states replayed from the log (at flush points and
  /// between them, unflushed writes dropped or torn), each mounted and the host's agent
  /// started on it: it starts, loses nothing announced or acknowledged before the cut, and
  /// announces nothing twice.
  @Test func powerCutsReplayedFromTheWriteLogLoseNothingAnnounced() async throws {
    guard let (report, result) = try await vmProof(["--power-cuts", "12", "--chain", "5"]) else { return }
    #expect(
      report["finished"] as? Bool == true, "the guest's story did not finish: \(result.stderr.suffix(3000))")
    #expect(report["states"] as? Int == 12)
    #expect((report["atFlushPoints"] as? Int ?? 0) >= 6)
    #expect((report["betweenFlushPoints"] as? Int ?? 0) >= 1)
    // The story did what it is for, and the marks came back in the log.
    #expect((report["promotionsSeenLive"] as? Int ?? 0) >= 1)
    #expect((report["renewalsSeenLive"] as? Int ?? 0) >= 1)
    #expect((report["marks"] as? Int ?? 0) >= 10)
    #expect((report["agentStarted"] as? Int ?? 0) >= 10)
    #expect(report["violations"] as? [String] == [], "\(report["violations"] ?? "")")
    #expect(result.status == 0)
  }
}
