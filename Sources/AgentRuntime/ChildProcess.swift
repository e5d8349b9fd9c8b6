import CLinux
import Glibc
import LicenseCore

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

/// Runs a program without a shell (`posix_spawn`), feeds it `input` on standard input,
/// collects its standard output and error (each capped at `maximumOutput` bytes), and kills
/// it when `timeout` passes. Blocking: call it from a queue of its own.
///
/// The program runs in a process group of its own. Nothing here waits past the deadline:
/// at the deadline the whole group is killed (SIGKILL) and reaped, whether the program
/// still writes, has closed its output and hangs, or exited while a background child holds
/// its pipes; once it has exited, whatever it left in its group is killed and reaped too.
/// The calling process is made a child subreaper, so that those orphans are reaped here.
///
/// Written with `posix_spawn` and `poll` rather than Foundation's `Process`, which waits
/// for children on libdispatch's global queues: the first job there starts a 1-second timer
/// that would wake the idle agent forever (see QueueTaskExecutor).
public func runChild(
  _ argv: [String], environment: [String: String], input: [UInt8], timeout: TimeSpan,
  maximumOutput: Int = 1 << 20
) -> ChildResult {
  var result = ChildResult(exitStatus: nil, stdout: [], stderr: [], timedOut: false, spawnError: nil)
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
  var actions = posix_spawn_file_actions_t()
  posix_spawn_file_actions_init(&actions)
  defer { posix_spawn_file_actions_destroy(&actions) }
  posix_spawn_file_actions_adddup2(&actions, inPipe[0], 0)
  posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
  posix_spawn_file_actions_adddup2(&actions, errPipe[1], 2)
  var attributes = posix_spawnattr_t()
  posix_spawnattr_init(&attributes)
  defer { posix_spawnattr_destroy(&attributes) }
  // The child starts with default signal handling (the agent ignores SIGPIPE).
  var defaults = sigset_t()
  sigemptyset(&defaults)
  sigaddset(&defaults, SIGPIPE)
  posix_spawnattr_setsigdefault(&attributes, &defaults)
  var mask = sigset_t()
  sigemptyset(&mask)
  posix_spawnattr_setsigmask(&attributes, &mask)
  // A process group of its own (pgid = its pid): at the deadline the whole group is killed.
  posix_spawnattr_setpgroup(&attributes, 0)
  posix_spawnattr_setflags(
    &attributes, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETPGROUP))
  _ = clinux_set_child_subreaper()

  let cArguments = argv.map { strdup($0) } + [nil]
  let cEnvironment = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
  defer {
    for pointer in cArguments { free(pointer) }
    for pointer in cEnvironment { free(pointer) }
  }
  var pid: pid_t = 0
  let spawned = posix_spawn(&pid, program, &actions, &attributes, cArguments, cEnvironment)
  close(inPipe[0])
  close(outPipe[1])
  close(errPipe[1])
  guard spawned == 0 else {
    close(inPipe[1])
    close(outPipe[0])
    close(errPipe[0])
    result.spawnError = "cannot run \(program): \(String(cString: strerror(spawned)))"
    return result
  }

  let deadline = monotonicMilliseconds() + timeout.microseconds / 1000
  for fd in [inPipe[1], outPipe[0], errPipe[0]] { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
  var stdinFD: Int32 = input.isEmpty ? -1 : inPipe[1]
  if input.isEmpty { close(inPipe[1]) }
  var written = 0
  var open: [Int32] = [outPipe[0], errPipe[0]]
  var buffer = [UInt8](repeating: 0, count: 65_536)
  while !open.isEmpty || stdinFD >= 0 {
    let remaining = deadline - monotonicMilliseconds()
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
    if result.timedOut || monotonicMilliseconds() >= deadline {
      result.outputClosedButRunning = !result.timedOut
      result.timedOut = true
      break
    }
    usleep(5_000)
  }
  // Whatever is left in the program's group is killed: the program itself at the deadline,
  // a background child that holds its pipes, or one it left behind when it exited.
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
  let until = monotonicMilliseconds() + 1000
  var status: Int32 = 0
  while monotonicMilliseconds() < until {
    let reaped = waitpid(-group, &status, WNOHANG)
    if reaped < 0 && errno == EINTR { continue }
    if reaped < 0 { return }  // ECHILD: none left
    if reaped == 0 { usleep(2_000) }
  }
}

private func failed(_ result: inout ChildResult, _ what: String) -> ChildResult {
  result.spawnError = "\(what): \(String(cString: strerror(errno)))"
  return result
}
