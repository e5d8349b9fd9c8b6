import CLinux
import FoundationEssentials
import Glibc
import LicenseCore
import StandardIO
import Synchronization

/// The result of running a program to completion (or to its deadline).
public struct ChildResult: Sendable, Equatable {
  /// The exit status, or nil when the program was killed by a signal or could not start.
  public var exitStatus: Int32?
  public var stdout: [UInt8]
  public var stderr: [UInt8]
  /// The deadline passed and the program was killed.
  public var timedOut: Bool
  /// Why the program could not be started, when it could not.
  public var spawnError: String?
  /// Processes of the program's group were still there once it had exited, or at the
  /// deadline (a background child): they were killed.
  public var leftoverProcesses = false
  /// The program closed its standard output and error but had not exited by the deadline.
  public var outputClosedButRunning = false

  public init(
    exitStatus: Int32?, stdout: [UInt8], stderr: [UInt8], timedOut: Bool, spawnError: String?,
    leftoverProcesses: Bool = false, outputClosedButRunning: Bool = false
  ) {
    self.exitStatus = exitStatus
    self.stdout = stdout
    self.stderr = stderr
    self.timedOut = timedOut
    self.spawnError = spawnError
    self.leftoverProcesses = leftoverProcesses
    self.outputClosedButRunning = outputClosedButRunning
  }
}

/// Runs a program without a shell, feeds it `input` on standard input, collects its
/// standard output and error (each capped at `maximumOutput` bytes), and kills it when
/// `timeout` passes. Blocking: call it from a queue of its own.
///
/// The program runs in a process group of its own, with no descriptor of the agent's but
/// its three pipes (``clinux_spawn``), and, under systemd with a delegated cgroup
/// (`cgroups`), in a cgroup of its own before its first instruction. Nothing here waits past
/// the deadline: at the deadline, or once the program has exited, whatever is left of it
/// is killed and reaped: the whole cgroup (`cgroup.kill`), which nothing it starts can
/// leave, `setsid` or not; else the process group. The calling process is made a child
/// subreaper, so that orphans are reaped here.
///
/// Written with `fork`/`execve` (in C) and `poll` rather than Foundation's `Process`, which waits for
/// children on libdispatch's global queues: the first job there starts a 1-second timer
/// that would wake the idle agent forever (see QueueTaskExecutor).
public func runChild(
  _ argv: [String], environment: [String: String], input: [UInt8], timeout: TimeSpan,
  maximumOutput: Int = 1 << 20, cgroups: AttemptCgroups? = nil
) -> ChildResult {
  var result = ChildResult(exitStatus: nil, stdout: [], stderr: [], timedOut: false, spawnError: nil)
  // While this waits for its child, the daemon's reaper leaves every child alone (it would
  // take this one's exit status); whatever exited meanwhile is reaped when the last ends.
  ChildReaping.begin()
  defer { ChildReaping.end() }
  guard let program = argv.first else {
    result.spawnError = "no program to run"
    return result
  }
  var inPipe: [Int32] = [0, 0]
  var outPipe: [Int32] = [0, 0]
  var errPipe: [Int32] = [0, 0]
  guard pipe2(&inPipe, O_CLOEXEC) == 0 else { return failed(&result, "pipe") }
  guard pipe2(&outPipe, O_CLOEXEC) == 0 else {
    close(inPipe[0])
    close(inPipe[1])
    return failed(&result, "pipe")
  }
  guard pipe2(&errPipe, O_CLOEXEC) == 0 else {
    for fd in inPipe + outPipe { close(fd) }
    return failed(&result, "pipe")
  }
  _ = clinux_set_child_subreaper()
  let cgroup = cgroups?.make()

  let cArguments = argv.map { strdup($0) } + [nil]
  let cEnvironment = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
  defer {
    for pointer in cArguments { free(pointer) }
    for pointer in cEnvironment { free(pointer) }
  }
  let spawned = clinux_spawn(
    program, cArguments, cEnvironment, inPipe[0], outPipe[1], errPipe[1], cgroup?.procs ?? -1)
  close(inPipe[0])
  close(outPipe[1])
  close(errPipe[1])
  guard spawned > 0 else {
    close(inPipe[1])
    close(outPipe[0])
    close(errPipe[0])
    cgroup?.end()
    result.spawnError = "cannot run \(program): \(String(cString: strerror(-spawned)))"
    return result
  }
  let pid = pid_t(spawned)

  let deadline = MonotonicClock.milliseconds() + timeout.microseconds / 1000
  for fd in [inPipe[1], outPipe[0], errPipe[0]] { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
  var stdinFD: Int32 = input.isEmpty ? -1 : inPipe[1]
  if input.isEmpty { close(inPipe[1]) }
  var written = 0
  var open: [Int32] = [outPipe[0], errPipe[0]]
  var buffer = [UInt8](repeating: 0, count: 65_536)
  while !open.isEmpty || stdinFD >= 0 {
    let remaining = deadline - MonotonicClock.milliseconds()
    if remaining <= 0 {
      result.timedOut = true
      break
    }
    var fds = open.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
    if stdinFD >= 0 { fds.append(pollfd(fd: stdinFD, events: Int16(POLLOUT), revents: 0)) }
    let ready = poll(&fds, nfds_t(fds.count), Int32(min(remaining, 1_000_000)))
    if ready < 0 && errno != EINTR { break }
    for entry in fds where entry.revents != 0 {
      if entry.fd == stdinFD {
        let count = input[written...].withUnsafeBytes { write(stdinFD, $0.baseAddress, $0.count) }
        if count > 0 { written += count }
        if count < 0 && errno != EAGAIN && errno != EINTR || written >= input.count {
          close(stdinFD)
          stdinFD = -1
        }
        continue
      }
      let count = read(entry.fd, &buffer, buffer.count)
      if count > 0 {
        if entry.fd == outPipe[0] {
          if result.stdout.count < maximumOutput {
            result.stdout += buffer[0..<min(count, maximumOutput - result.stdout.count)]
          }
        } else if result.stderr.count < maximumOutput {
          result.stderr += buffer[0..<min(count, maximumOutput - result.stderr.count)]
        }
      } else if count == 0 || (errno != EAGAIN && errno != EINTR) {
        open.removeAll { $0 == entry.fd }
        close(entry.fd)
      }
    }
  }
  if stdinFD >= 0 { close(stdinFD) }
  for fd in open { close(fd) }

  // The program's output is closed (or the deadline passed): wait for it, never past the
  // deadline. Polling is fine here: it only runs while a program is running.
  var status: Int32 = 0
  var exited = false
  while true {
    let reaped = waitpid(pid, &status, WNOHANG)
    if reaped == pid {
      exited = true
      break
    }
    if reaped < 0 && errno != EINTR { break }
    if result.timedOut || MonotonicClock.milliseconds() >= deadline {
      result.outputClosedButRunning = !result.timedOut
      result.timedOut = true
      break
    }
    usleep(5_000)
  }
  // Whatever is left of the program is killed: the program itself at the deadline, a
  // background child that holds its pipes, or one it left behind when it exited; in its
  // cgroup all of them, wherever they moved (another session, another group).
  if let cgroup {
    if cgroup.end() && exited { result.leftoverProcesses = true }
  }
  if kill(-pid, SIGKILL) == 0 && exited { result.leftoverProcesses = true }
  if !exited {
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
  }
  reapGroup(pid)
  // WIFEXITED / WEXITSTATUS, which Swift does not import.
  if !result.timedOut && status & 0x7f == 0 { result.exitStatus = (status >> 8) & 0xff }
  return result
}

/// Reaps the members of process group `group` that were killed (they are this process's
/// children, or its orphans as their subreaper), for at most a second.
private func reapGroup(_ group: pid_t) {
  let until = MonotonicClock.milliseconds() + 1000
  var status: Int32 = 0
  while MonotonicClock.milliseconds() < until {
    let reaped = waitpid(-group, &status, WNOHANG)
    if reaped < 0 && errno == EINTR { continue }
    if reaped < 0 { return }  // ECHILD: none left
    if reaped == 0 { usleep(2_000) }
  }
}

/// Reaps every exited child and orphan of this process (it is their subreaper) without
/// waiting: a process that escaped an attempt's group (`setsid`) and exited later would
/// otherwise stay a zombie of the agent. Only for a process whose children are all
/// started by ``runChild`` (the daemon), on the queue that runs it.
public func reapExitedChildren() -> Int { ChildReaping.reapIfIdle() }

/// Programs run from more than one queue (activation attempts, hooks): the daemon reaps any
/// exited child (`waitpid(-1)`, as the subreaper of what they leave) only while no
/// ``runChild`` waits for its own, and once the last of those ends.
enum ChildReaping {
  private struct State {
    var running = 0
    var enabled = false
  }
  private static let state = Mutex(State())

  /// This process reaps every exited child (the daemon): not a test process, whose other
  /// children are Foundation's.
  static func enable() { state.withLock { $0.enabled = true } }

  static func begin() { state.withLock { $0.running += 1 } }

  static func end() {
    state.withLock { state in
      state.running -= 1
      if state.running == 0 && state.enabled { while clinux_reap_any() > 0 {} }
    }
  }

  static func reapIfIdle() -> Int {
    state.withLock { state in
      guard state.running == 0 else { return 0 }
      var reaped = 0
      while clinux_reap_any() > 0 { reaped += 1 }
      return reaped
    }
  }
}

/// The cgroup subtree systemd delegates to the agent's unit (`Delegate=yes`), where each
/// activation attempt gets a cgroup of its own, ended whole (`cgroup.kill`) when the
/// attempt ends: a client cannot escape it, whatever it does (issue 20: `setsid sleep 300 &`
/// outlived the attempt and the agent). Outside systemd, or when the subtree is not the
/// agent's to write, there is none, and attempts end by their process group.
public struct AttemptCgroups: Sendable {
  /// The unit's cgroup folder (`/sys/fs/cgroup/system.slice/license-agent.service`).
  public let folder: String

  public init(folder: String) { self.folder = folder }

  /// The delegated subtree of this process: under systemd (`INVOCATION_ID` set), this
  /// process's own cgroup v2 folder (where the cgroup2 file system is mounted:
  /// /sys/fs/cgroup, or /sys/fs/cgroup/unified on a hybrid host) writable by it; nil
  /// otherwise.
  public static func delegated(environment: [String: String]) -> AttemptCgroups? {
    guard environment["INVOCATION_ID"] != nil,
      let text = StandardStream.readFile("/proc/self/cgroup").map({ String(decoding: $0, as: UTF8.self) }),
      let line = text.split(separator: "\n").first(where: { $0.hasPrefix("0::/") }),
      let mounts = StandardStream.readFile("/proc/self/mountinfo").map({ String(decoding: $0, as: UTF8.self) }
      ),
      let unified = mounts.split(separator: "\n").first(where: { $0.contains(" - cgroup2 ") })?
        .split(separator: " ").dropFirst(4).first
    else { return nil }
    let folder = String(unified) + line.dropFirst(3)
    guard access(folder, W_OK) == 0, access(folder + "/cgroup.procs", W_OK) == 0,
      access(folder + "/cgroup.kill", F_OK) == 0
    else { return nil }
    return AttemptCgroups(folder: folder)
  }

  /// A new, empty cgroup for one attempt; nil when it cannot be made (the attempt then runs
  /// by its process group alone).
  func make() -> AttemptCgroup? {
    let path = folder + "/attempt-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    guard mkdir(path, 0o755) == 0 else { return nil }
    let procs = open(path + "/cgroup.procs", O_WRONLY | O_CLOEXEC)
    guard procs >= 0 else {
      rmdir(path)
      return nil
    }
    return AttemptCgroup(path: path, procs: procs)
  }
}

/// One attempt's cgroup: its folder, and its `cgroup.procs` open for writing (the child
/// writes itself there before it runs the program).
final class AttemptCgroup {
  let path: String
  let procs: Int32
  private var ended = false

  init(path: String, procs: Int32) {
    self.path = path
    self.procs = procs
  }

  /// Kills every process in it (`cgroup.kill`, Linux 5.14), waits until it is empty (at
  /// most a second), and removes it. Returns whether any process was still there.
  @discardableResult
  func end() -> Bool {
    guard !ended else { return false }
    ended = true
    let populated = isPopulated()
    if populated { write("1", to: "cgroup.kill") }
    let until = MonotonicClock.milliseconds() + 1000
    while isPopulated() && MonotonicClock.milliseconds() < until {
      _ = reapExitedChildrenOf()
      usleep(2_000)
    }
    close(procs)
    rmdir(path)
    return populated
  }

  /// The killed processes are this process's children or orphans (it is their subreaper):
  /// reaped as they die, so that the cgroup empties.
  private func reapExitedChildrenOf() -> Int {
    var status: Int32 = 0
    var reaped = 0
    for line in ((try? String(contentsOfFile: path + "/cgroup.procs", encoding: .utf8)) ?? "").split(
      separator: "\n")
    {
      if let pid = pid_t(line), waitpid(pid, &status, WNOHANG) == pid { reaped += 1 }
    }
    return reaped
  }

  private func isPopulated() -> Bool {
    let events = (try? String(contentsOfFile: path + "/cgroup.events", encoding: .utf8)) ?? ""
    return events.contains("populated 1")
  }

  private func write(_ text: String, to file: String) {
    let fd = open(path + "/" + file, O_WRONLY | O_CLOEXEC)
    guard fd >= 0 else { return }
    _ = text.withCString { Glibc.write(fd, $0, strlen($0)) }
    close(fd)
  }
}

private func failed(_ result: inout ChildResult, _ what: String) -> ChildResult {
  result.spawnError = "\(what): \(String(cString: strerror(errno)))"
  return result
}
