#if canImport(Glibc)
  import Glibc
#endif

/// The words of an `errno` value (the current one by default).
public func errnoText(_ code: Int32 = errno) -> String { String(cString: strerror(code)) }

/// `CLOCK_MONOTONIC`: for durations inside the process (deadlines, retry delays, rate
/// limits), which a step of the wall clock must not stretch or shrink. The one reader of
/// it in the project.
public enum MonotonicClock {
  /// Microseconds since an arbitrary instant (the boot).
  public static func microseconds() -> Int64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Int64(now.tv_sec) * 1_000_000 + Int64(now.tv_nsec) / 1000
  }

  /// Milliseconds since an arbitrary instant (the boot).
  public static func milliseconds() -> Int64 { microseconds() / 1000 }
}

extension StandardStream {
  /// Creates `path` for writing, exclusively: nothing already there (a file, a FIFO that
  /// would block, a symlink that would redirect the write) is ever opened. The mode is set
  /// whatever the umask. The descriptor, or -1 with `errno`.
  public static func createExclusive(_ path: String, mode: mode_t) -> Int32 {
    let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, mode)
    if fd >= 0 { _ = fchmod(fd, mode) }
    return fd
  }

  /// A file's bytes, read through a descriptor opened close-on-exec (a child started while
  /// it is open must not inherit it) and without blocking on a FIFO; nil when it cannot be
  /// opened.
  public static func readFile(_ path: String) -> [UInt8]? {
    let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    return readAll(fd)
  }
}
