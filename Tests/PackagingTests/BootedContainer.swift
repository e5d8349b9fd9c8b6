import Foundation
import Glibc
import LicenseTestSupport

/// A Debian 12 machine booted with systemd as PID 1 in `systemd-nspawn`, on a throwaway
/// overlay (`--volatile=overlay`) over the root that `packaging/make-test-root` builds, so
/// that every boot starts from the same clean system. Commands run inside with `nsenter`.
///
/// nspawn is started in a cgroup of its own (in each hierarchy this process belongs to);
/// ``shutdown()`` powers the machine off, waits for nspawn, which removes its mounts and
/// namespaces, and removes that cgroup with everything nspawn made under it.
final class BootedContainer: @unchecked Sendable {  // immutable once booted
  let leader: pid_t
  private let root: String
  private let nspawn: Process
  private let cgroups: [String]

  /// The repository's root folder.
  static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .deletingLastPathComponent().deletingLastPathComponent().path

  /// Why this machine cannot boot a container, or nil when it can.
  static var unavailableReason: String? {
    if getuid() != 0 { return "the systemd end-to-end test needs root (systemd-nspawn, debootstrap)" }
    if !FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-nspawn") {
      return "systemd-nspawn is missing: apt-get install systemd-container (scripts/ensure-deps does)"
    }
    return nil
  }

  /// Throws, with safetree's message naming the mounts and what to do, when anything is
  /// mounted under `root` (`scripts/lib/safetree.py check`): a root with a chroot's /proc
  /// left mounted under it is never booted, and a container that left a mount behind on
  /// this machine is an error.
  static func refuseMounted(_ root: String, doing: String) throws {
    let checked = try runProcess(
      "/usr/bin/python3", [repository + "/scripts/lib/safetree.py", "check", root, "--doing", doing])
    if checked.status != 0 { throw ProcessError(description: checked.stderr) }
  }

  /// Boots `root`, with host folders bound read-only (`host:container` pairs).
  init(root: String, bindReadOnly: [String]) throws {
    try Self.refuseMounted(root, doing: "boot a container on")
    self.root = root
    let name = "license-agent-e2e-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    cgroups = Self.ownCgroupPaths().map { $0 + "/" + name }
    let script = """
      set -e
      for dir in \(cgroups.map { "'\($0)'" }.joined(separator: " ")); do
        mkdir "$dir"
        echo $$ >"$dir/cgroup.procs"
      done
      root=$1
      shift
      exec /usr/bin/systemd-nspawn -q -D "$root" --boot --volatile=overlay --register=no --keep-unit \
        --console=passive "$@"
      """
    nspawn = Process()
    nspawn.executableURL = URL(fileURLWithPath: "/bin/sh")
    nspawn.arguments = ["-c", script, "sh", root] + bindReadOnly.map { "--bind-ro=\($0)" }
    nspawn.standardOutput = FileHandle.nullDevice
    nspawn.standardError = FileHandle.nullDevice
    try nspawn.run()
    // The container's PID 1 is nspawn's child once it runs systemd.
    var found: pid_t?
    for _ in 0..<400 where found == nil && nspawn.isRunning {
      usleep(50_000)
      let id = nspawn.processIdentifier
      let children = (try? String(contentsOfFile: "/proc/\(id)/task/\(id)/children", encoding: .utf8)) ?? ""
      found = children.split(separator: " ").compactMap { pid_t($0) }.first { pid in
        (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8)) == "systemd\n"
      }
    }
    guard let found else {
      let reason = nspawn.isRunning ? "no systemd in the container after 20 s" : "systemd-nspawn exited"
      Self.stop(nspawn, leader: nil, cgroups: cgroups)
      throw ProcessError(description: "booting \(root) failed: \(reason)")
    }
    leader = found
    // Until its manager answers, systemctl in the container says "offline".
    var state = ""
    for _ in 0..<120 {
      state = try runBlocking("systemctl is-system-running --wait").stdout.trimmingCharacters(
        in: .whitespacesAndNewlines)
      if ["running", "degraded"].contains(state) { break }
      usleep(250_000)
    }
    guard ["running", "degraded"].contains(state) else {
      try? shutdown()
      throw ProcessError(description: "the container's systemd did not come up: \(state)")
    }
  }

  /// Boots `root` (see ``init(root:bindReadOnly:)``) on a thread of its own, awaited: the
  /// other suites go on while it boots.
  static func boot(root: String, bindReadOnly: [String]) async throws -> BootedContainer {
    try await onOwnThread { try BootedContainer(root: root, bindReadOnly: bindReadOnly) }
  }

  /// Runs a shell script as root inside the machine, with a clean environment; awaited, so
  /// that a test waiting on the machine holds none of the threads the other tests run on.
  @discardableResult
  func run(_ script: String, input: String? = nil) async throws -> ProcessResult {
    try await onOwnThread { try self.runBlocking(script, input: input) }
  }

  private func runBlocking(_ script: String, input: String? = nil) throws -> ProcessResult {
    try runProcess(
      "/usr/bin/nsenter",
      [
        "--target", String(leader), "--all", "/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG=C.UTF-8", "/bin/sh", "-c", script,
      ], input: input)
  }

  /// Powers the machine off (nspawn turns SIGTERM into a clean shutdown), waits for nspawn,
  /// and removes the cgroups made for it; throws when a mount under the root is left on
  /// this machine (nspawn mounts in the container's own namespace: there must be none).
  func shutdown() throws {
    Self.stop(nspawn, leader: leader, cgroups: cgroups)
    try Self.refuseMounted(root, doing: "leave behind")
  }

  private static func stop(_ nspawn: Process, leader: pid_t?, cgroups: [String]) {
    if nspawn.isRunning {
      kill(nspawn.processIdentifier, SIGTERM)
      for _ in 0..<300 where nspawn.isRunning { usleep(50_000) }
      if nspawn.isRunning { kill(nspawn.processIdentifier, SIGKILL) }
    }
    nspawn.waitUntilExit()
    // A killed nspawn may leave its machine running: end the machine's init by its id, only
    // while it is still in the cgroup made for it (the kernel then ends its PID namespace).
    if let leader, inCgroups(leader, cgroups) {
      kill(leader, SIGKILL)
      for _ in 0..<200 where inCgroups(leader, cgroups) { usleep(50_000) }
    }
    removeCgroups(cgroups)
  }

  /// Whether `pid` is a process of one of `cgroups` (not an id reused by another process).
  private static func inCgroups(_ pid: pid_t, _ cgroups: [String]) -> Bool {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/cgroup", encoding: .utf8) else { return false }
    let names = Set(cgroups.map { "/" + ($0.split(separator: "/").last.map(String.init) ?? "") })
    return text.split(separator: "\n").contains { line in
      names.contains { line.hasSuffix($0) || line.contains($0 + "/") }
    }
  }

  /// This process's cgroup folder in the hierarchies nspawn uses: the named v1 "systemd"
  /// one (hybrid hosts) and the unified v2 one.
  static func ownCgroupPaths() -> [String] {
    let text = (try? String(contentsOfFile: "/proc/self/cgroup", encoding: .utf8)) ?? ""
    let unified =
      FileManager.default.fileExists(atPath: "/sys/fs/cgroup/unified/cgroup.procs")
      ? "/sys/fs/cgroup/unified" : "/sys/fs/cgroup"
    return text.split(separator: "\n").compactMap { line in
      let parts = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
      guard parts.count == 3 else { return nil }
      let path = parts[2] == "/" ? "" : String(parts[2])
      if parts[1] == "name=systemd" { return "/sys/fs/cgroup/systemd" + path }
      if parts[0] == "0" && parts[1].isEmpty { return unified + path }
      return nil
    }
  }

  /// Whether any of `paths` (cgroup folders) is still there.
  static func anyExists(_ paths: [String]) -> Bool {
    paths.contains { FileManager.default.fileExists(atPath: $0) }
  }

  var cgroupPaths: [String] { cgroups }

  /// Removes cgroup folders and their sub-folders, deepest first (rmdir is how cgroups go).
  static func removeCgroups(_ paths: [String]) {
    for path in paths {
      let all = (FileManager.default.enumerator(atPath: path)?.allObjects as? [String] ?? [])
        .map { path + "/" + $0 }
        .filter {
          (try? FileManager.default.attributesOfItem(atPath: $0)[.type] as? FileAttributeType)
            == .typeDirectory
        }
      for dir in all.sorted(by: { $0.count > $1.count }) { rmdir(dir) }
      rmdir(path)
    }
  }
}
