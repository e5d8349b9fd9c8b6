import Foundation
import Glibc
import LicenseTestSupport
import Testing

/// The short run of `scripts/vm-proof` (docs/RELIABILITY.md, "On a real virtual machine"):
/// one boot of a Debian 12 guest with qemu (KVM when it works, else TCG) with the package
/// installed and the agent under its real unit; a pause of the whole guest across an
/// expiry (QMP stop/cont), then the guest's clock set from its RTC; a real clock step
/// forward past an expiry and one backward; steps back and forward while a renewal
/// retries. The guest's clock is its own.
@Suite struct VirtualMachineTests {
  @Test func aRealGuestPromotesAcrossAPauseAndRealClockStepsOnce() throws {
    if getuid() != 0 {
      Issue.record("the virtual machine proof needs root (chroot, mkfs.ext4 -d, qemu)")
      return
    }
    let deb = try SystemdEndToEndTests.builtPackage()
    let result = try runProcess(
      BootedContainer.repository + "/scripts/vm-proof", ["--json", "--deb", deb, "--pause", "20"])
    let report = try #require(
      try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any],
      "vm-proof printed no report: \(result.stdout) \(result.stderr.suffix(3000))")
    #expect(
      report["finished"] as? Bool == true,
      "the guest's scenario did not finish: \(result.stderr.suffix(3000))")
    #expect(["kvm", "tcg"].contains(report["accel"] as? String ?? ""))
    let checks = try #require(report["checks"] as? [[String: Any]])
    #expect(checks.count == 8)
    for check in checks {
      #expect(check["ok"] as? Bool == true, "\(check["check"] ?? "?"): \(check["detail"] ?? "")")
    }
    #expect(result.status == 0)
  }
}
