import Foundation
import LicenseTestSupport
import Testing

/// The systemd unit as shipped in systemd/.
@Suite struct UnitFileTests {
  let unit =
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().path + "/systemd/license-agent.service"

  @Test func theUnitsOfflineSecurityExposureIsAtMost1_5() throws {
    let result = try runProcess(
      "/usr/bin/systemd-analyze", ["security", "--offline=true", "--no-pager", unit])
    let line = try #require(
      result.stdout.split(separator: "\n").first { $0.contains("Overall exposure level") })
    let score = try #require(
      line.split(separator: ":").last?.split(separator: " ").first.flatMap { Double($0) })
    #expect(score <= 1.5, "\(line)")
  }

  @Test func theUnitIsANotifyServiceWithWatchdogReloadAndItsDirectories() throws {
    let text = try String(contentsOfFile: unit, encoding: .utf8)
    for directive in [
      "Type=notify", "WatchdogSec=", "Restart=on-failure", "ExecReload=/bin/kill -HUP $MAINPID",
      "StateDirectory=license-agent", "StateDirectoryMode=0700", "RuntimeDirectory=license-agent",
      "ConfigurationDirectory=license-agent", "User=license-agent", "Documentation=man:license-agent(8)",
      // Issue 20: attempts in cgroups of their own; a crash report without registers.
      "Delegate=yes", "registers=none", "images=none",
    ] {
      #expect(text.contains(directive), "\(directive)")
    }
    // Every directive set is explained in systemd/README.md.
    let readme = try String(
      contentsOfFile: (unit as NSString).deletingLastPathComponent + "/README.md", encoding: .utf8)
    let names = text.split(separator: "\n").compactMap { line -> String? in
      guard let equals = line.firstIndex(of: "="), !line.hasPrefix("#"), !line.hasPrefix("[") else {
        return nil
      }
      return String(line[..<equals])
    }
    for name in Set(names) where !["Description", "WantedBy"].contains(name) {
      #expect(readme.contains("`\(name)="), "systemd/README.md does not explain \(name)=")
    }
  }
}
