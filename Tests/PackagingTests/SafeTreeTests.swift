import Foundation
import Glibc
import LicenseTestSupport
import Testing

/// The test tooling's discipline with roots (`scripts/lib/safetree.py`, used by
/// `scripts/vm-proof`, `packaging/make-test-root`, the power-cut replay, the fleet lab and
/// ``BootedContainer``), on real mounts: a root with anything mounted under it is never
/// copied, removed, stamped or booted, and nothing of it is copied; an unmount that fails
/// is reported with what holds the mount; a chroot's own processes are ended, by their ids,
/// and no other. Needs root (mount).
@Suite(.serialized) struct SafeTreeTests {
  static let safetree = BootedContainer.repository + "/scripts/lib/safetree.py"

  func safetree(_ arguments: [String]) throws -> ProcessResult {
    try runProcess("/usr/bin/python3", [Self.safetree] + arguments)
  }

  /// A root (a folder with `etc/hostname`) with a tmpfs mounted at its `proc`, holding a
  /// file; nil (recorded) when not root.
  func mountedRoot() throws -> (folder: String, root: String)? {
    if getuid() != 0 {
      Issue.record("the safetree tests need root (mount)")
      return nil
    }
    let folder = makeTemporaryDirectory("safetree")
    let root = folder + "/root"
    try FileManager.default.createDirectory(atPath: root + "/etc", withIntermediateDirectories: true)
    try FileManager.default.createDirectory(atPath: root + "/proc", withIntermediateDirectories: true)
    try "svm\n".write(toFile: root + "/etc/hostname", atomically: true, encoding: .utf8)
    let mounted = try runProcess(
      "/bin/mount", ["-t", "tmpfs", "-o", "size=1m", "safetree-test", root + "/proc"])
    try #require(mounted.status == 0, "mount: \(mounted.stderr)")
    try "live\n".write(toFile: root + "/proc/inside-the-mount", atomically: true, encoding: .utf8)
    return (folder, root)
  }

  func cleanUp(_ folder: String) {
    for point in mountPoints(under: folder).reversed() {
      if let failed = unmount(point) { Issue.record(Comment(rawValue: failed)) }
    }
    #expect(mountPoints(under: folder).isEmpty)
    removeTemporaryDirectory(folder)
  }

  /// A process started here that sleeps with its working directory (and, when `chroot`,
  /// its root) inside `root`; its id.
  func holder(in directory: String, chroot root: String? = nil) throws -> Process {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
    let enter = root.map { "os.chroot(\"\($0)\"); " } ?? ""
    process.arguments = ["-c", "import os, time; os.chdir(\"\(directory)\"); \(enter)time.sleep(300)"]
    try process.run()
    // Until it has moved in.
    for _ in 0..<100 {
      let cwd =
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(process.processIdentifier)/cwd"))
      if cwd == directory { break }
      usleep(20_000)
    }
    usleep(100_000)
    return process
  }

  func end(_ process: Process) {
    if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    process.waitUntilExit()
  }

  @Test func aRootWithAMountUnderItIsNeitherCopiedNorRemovedNorBootedNorUsed() throws {
    guard let (folder, root) = try mountedRoot() else { return }
    defer { cleanUp(folder) }
    let copy = try safetree(["copy", root, folder + "/copy"])
    #expect(copy.status == 1)
    #expect(
      copy.stderr.contains("refusing to copy \(root): mounted under it: \(root)/proc"), "\(copy.stderr)")
    #expect(copy.stderr.contains("umount \(root)/proc"), "says what to do: \(copy.stderr)")
    #expect(!FileManager.default.fileExists(atPath: folder + "/copy"), "nothing copied")

    let remove = try safetree(["remove", root])
    #expect(remove.status == 1)
    #expect(remove.stderr.contains("refusing to remove \(root)"), "\(remove.stderr)")
    #expect(FileManager.default.fileExists(atPath: root + "/proc/inside-the-mount"))
    #expect(FileManager.default.fileExists(atPath: root + "/etc/hostname"))

    // packaging/make-test-root on it: refused before anything, even with its stamp.
    let made = try runProcess(BootedContainer.repository + "/packaging/make-test-root", [root])
    #expect(made.status == 1)
    #expect(made.stderr.contains("refusing to use \(root): mounted under it: \(root)/proc"), "\(made.stderr)")
    #expect(made.stdout.isEmpty, "no root printed: \(made.stdout)")
    #expect(FileManager.default.fileExists(atPath: root + "/etc/hostname"))

    // scripts/vm-proof with it as the guest's root: refused, nothing built or copied.
    let proof = try runProcess(
      BootedContainer.repository + "/scripts/vm-proof", ["--vm-root", root, "--json"])
    #expect(proof.status == 1)
    #expect(
      proof.stderr.contains("refusing to use \(root): mounted under it"), "\(proof.stderr.suffix(2000))")
    #expect(proof.stdout.isEmpty)
    #expect(try FileManager.default.contentsOfDirectory(atPath: root).sorted() == ["etc", "proc"])

    // A container is not booted on it.
    #expect(throws: ProcessError.self) { try BootedContainer(root: root, bindReadOnly: []) }

    // Without the mount, the same copy works, on one file system.
    #expect(unmount(root + "/proc") == nil)
    #expect(try safetree(["check", root]).status == 0)
    let copied = try safetree(["copy", root, folder + "/copy"])
    #expect(copied.status == 0, "\(copied.stderr)")
    #expect(try String(contentsOfFile: folder + "/copy/etc/hostname", encoding: .utf8) == "svm\n")
  }

  @Test func aFailingUnmountIsReportedWithWhatHoldsItAndNothingElseIsEnded() throws {
    guard let (folder, root) = try mountedRoot() else { return }
    defer { cleanUp(folder) }
    // A process that is not the chroot's own keeps the mount busy.
    let busy = try holder(in: root + "/proc")
    defer { end(busy) }
    let failed = try safetree(["unmount", root])
    #expect(failed.status == 1)
    #expect(failed.stderr.contains("could not unmount everything under \(root)"), "\(failed.stderr)")
    #expect(failed.stderr.contains("still mounted: \(root)/proc"), "\(failed.stderr)")
    #expect(failed.stderr.contains("target is busy"), "what umount said: \(failed.stderr)")
    #expect(failed.stderr.contains("held by \(busy.processIdentifier) (python3)"), "\(failed.stderr)")
    #expect(busy.isRunning, "a process that is not the chroot's own is not ended")
    #expect(mountPoints(under: root) == [root + "/proc"])
    end(busy)
    let done = try safetree(["unmount", root])
    #expect(done.status == 0, "\(done.stderr)")
    #expect(mountPoints(under: root).isEmpty)
  }

  @Test func theChrootsOwnProcessesAreEndedBeforeItsMountsGo() throws {
    guard let (folder, root) = try mountedRoot() else { return }
    defer { cleanUp(folder) }
    // As a package's script would leave a daemon in a chroot: its root is the chroot, its
    // working directory on the mount. And one outside it, which must be left alone.
    let daemon = try holder(in: root + "/proc", chroot: root)
    defer { end(daemon) }
    let outside = try holder(in: folder)
    defer { end(outside) }
    let unmounted = try safetree(["unmount", root])
    #expect(unmounted.status == 0, "\(unmounted.stderr)")
    #expect(mountPoints(under: root).isEmpty)
    daemon.waitUntilExit()
    // SIGTERM, or SIGKILL 5 s later when it is blocked (as processes spawned by the test
    // runner inherit).
    #expect(
      daemon.terminationReason == .uncaughtSignal && [SIGTERM, SIGKILL].contains(daemon.terminationStatus))
    #expect(outside.isRunning)
  }
}
