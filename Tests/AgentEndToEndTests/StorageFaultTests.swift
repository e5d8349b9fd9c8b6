import Foundation
import LicenseCore
import LicenseTestSupport
import Testing

/// The state directory full or read-only (a small tmpfs mounted on it; needs root): the
/// built agent refuses what it cannot make durable, announces nothing it did not write,
/// keeps the state file intact, and catches up once the disk is usable again.
@Suite(.serialized) struct StorageFaultTests {
  /// An agent whose state directory is a tmpfs of 64 KiB.
  final class SmallDisk {
    let agent: AgentHarness
    var directory: String { agent.stateDirectory }
    var filler: String { directory + "/filler" }

    init() throws {
      agent = try AgentHarness()
      try FileManager.default.createDirectory(atPath: agent.stateDirectory, withIntermediateDirectories: true)
      let mounted = try runProcess(
        "/bin/mount", ["-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", agent.stateDirectory])
      try #require(mounted.status == 0, "mount a tmpfs (needs root): \(mounted.stderr)")
    }

    deinit {
      agent.stop()
      // Checked: the harness removes its folder only when nothing is mounted under it.
      if let failed = unmount(directory) { Issue.record(Comment(rawValue: failed)) }
    }

    /// Fills the file system to its last block.
    func fill() throws {
      _ = try runProcess("/bin/dd", ["if=/dev/zero", "of=\(filler)", "bs=4096"])
      let free = try runProcess("/bin/df", ["--output=avail", directory]).stdout
      #expect(free.split(separator: "\n").last?.trimmingCharacters(in: .whitespaces) == "0", "full: \(free)")
    }

    func free() { unlink(filler) }

    var stateBytes: Data? { try? Data(contentsOf: URL(fileURLWithPath: agent.stateFile)) }
  }

  @Test func aFullDiskRefusesAnAddAndKeepsTheState() throws {
    let disk = try SmallDisk()
    let agent = disk.agent
    try #require(try agent.start())
    let reserve = try agent.keyPair(activeUntil: AgentHarness.now() + .days(30), addReserve: false).reserve
    let before = try #require(disk.stateBytes)

    try disk.fill()
    let refused = try agent.agentctl(["add-key", "--reserve", reserve])
    #expect(refused.status == 74, "\(refused.stdout) \(refused.stderr)")
    #expect(refused.stderr.contains(agent.stateDirectory), "names the directory: \(refused.stderr)")
    #expect(disk.stateBytes == before, "the state file is untouched")
    let status = try agent.agentctl(["status", "--json"])
    #expect(status.stdout.contains(agent.serial("A")) && !status.stdout.contains(agent.serial("R")))
    #expect(
      try agent.journal(["MESSAGE_ID=\(EventKind.reserveAdded.messageID)"]).filter {
        $0["LICENSE_SERIAL"] == agent.serial("R")
      }.isEmpty, "nothing announced that was not written")

    disk.free()
    #expect(try agent.agentctl(["add-key", "--reserve", reserve]).status == 0, "accepted once there is room")
  }

  @Test func aFullDiskDelaysThePromotionUntilThereIsRoomAndNothingIsLost() throws {
    let disk = try SmallDisk()
    let agent = disk.agent
    try #require(try agent.start())
    let exp = AgentHarness.now() + .seconds(2)
    try agent.keyPair(activeUntil: exp)
    let before = try #require(disk.stateBytes)

    try disk.fill()
    AgentHarness.sleep(until: exp, margin: TimeSpan(microseconds: 1_500_000))
    #expect(disk.stateBytes == before, "nothing written while the disk is full")
    let promoted = ["MESSAGE_ID=\(EventKind.keyPromoted.messageID)", "LICENSE_SERIAL=\(agent.serial("R"))"]
    #expect(try agent.journal(promoted).isEmpty, "no promotion announced before it is durable")
    #expect(
      agent.notify.messages.contains { $0.contains("cannot write the state") },
      "the STATUS line says so: \(agent.notify.messages)")

    disk.free()
    let events = try agent.waitForJournal(promoted, count: 1, seconds: 10)
    #expect(events.count == 1, "promoted once the disk has room")
    let delay = try #require(events.first?["LICENSE_DELAY_USEC"].flatMap { Int64($0) })
    #expect(delay >= 1_500_000, "late, and says how late: \(delay) µs")
    let status = try agent.agentctl(["status", "--json"])
    #expect(status.stdout.contains("\"serial\":\"\(agent.serial("R"))\""), "\(status.stdout)")
    // Nothing more on its way (no persist retry left, no wake near exp), then exactly once.
    let next = try agent.settle()
    #expect(next.map { $0.at > exp + .days(1) } ?? true, "next: \(String(describing: next))")
    #expect(try agent.journal(promoted).count == 1, "announced exactly once")
  }

  @Test func aReadOnlyStateDirectoryRefusesAnAddAndKeepsTheState() throws {
    let disk = try SmallDisk()
    let agent = disk.agent
    try #require(try agent.start())
    let reserve = try agent.keyPair(activeUntil: AgentHarness.now() + .days(30), addReserve: false).reserve
    let before = try #require(disk.stateBytes)

    try #require(try runProcess("/bin/mount", ["-o", "remount,ro", disk.directory]).status == 0)
    let refused = try agent.agentctl(["add-key", "--reserve", reserve])
    #expect(refused.status == 74, "\(refused.stdout) \(refused.stderr)")
    #expect(disk.stateBytes == before)
    try #require(try runProcess("/bin/mount", ["-o", "remount,rw", disk.directory]).status == 0)
    #expect(try agent.agentctl(["add-key", "--reserve", reserve]).status == 0)
  }
}

extension StorageFaultTests {
  /// A refused add on a full disk must not leave the agent waiting for the disk instead
  /// of the expiry: once a retry finds nothing to write, the timer is armed at the expiry
  /// again and the promotion happens on time.
  @Test func aRefusedAddOnAFullDiskDoesNotDisarmThePromotion() throws {
    let disk = try SmallDisk()
    let agent = disk.agent
    try #require(try agent.start())
    let now = AgentHarness.now()
    let exp = now + .seconds(4)
    try agent.keyPair(activeUntil: exp)
    let other = try agent.keyFile("R2", agent.key("R2", nbf: now, exp: now + .days(91)))
    try disk.fill()
    #expect(try agent.agentctl(["add-key", "--reserve", other]).status == 74)
    disk.free()
    AgentHarness.sleep(until: exp, margin: .seconds(1))
    let promoted = try agent.waitForJournal(
      ["MESSAGE_ID=\(EventKind.keyPromoted.messageID)", "LICENSE_SERIAL=\(agent.serial("R"))"], count: 1,
      seconds: 5)
    // Before the fix no promotion came at all: the timer was never armed at the expiry again.
    #expect(promoted.count == 1, "promoted at the expiry")
  }
}
