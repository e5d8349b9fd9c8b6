import CLinux
import Dispatch
import Glibc
import LicenseCore

/// Fires once at a wall-clock instant. Re-arming replaces the previous deadline. Owned by
/// the agent's actor, and armed only from it.
public protocol WallClockTimer: AnyObject {
  /// Arms the timer at `instant` (nil: disarm). The handler runs on the timer's queue.
  func arm(at instant: Timestamp?)
}

/// A `DispatchSourceTimer` with a `DispatchWallTime` deadline and zero leeway: libdispatch
/// arms a `CLOCK_REALTIME` timerfd with `TFD_TIMER_ABSTIME`, so the deadline is a wall-clock
/// instant (a clock stepped forward past it fires it at once). Between deadlines the
/// process sleeps: no polling. Not `Sendable`: it belongs to the agent's actor.
public final class DispatchWallClockTimer: WallClockTimer {
  private let source: DispatchSourceTimer
  public private(set) var deadline: Timestamp?

  public init(queue: DispatchQueue, handler: @escaping @Sendable () -> Void) {
    source = DispatchSource.makeTimerSource(flags: [.strict], queue: queue)
    source.setEventHandler(handler: handler)
    source.schedule(wallDeadline: .distantFuture, leeway: .nanoseconds(0))
    source.resume()
  }

  deinit { source.cancel() }

  public func arm(at instant: Timestamp?) {
    deadline = instant
    guard let instant else {
      source.schedule(wallDeadline: .distantFuture, leeway: .nanoseconds(0))
      return
    }
    let (seconds, micros) = instant.microseconds.quotientAndRemainder(dividingBy: 1_000_000)
    let spec = timespec(tv_sec: Int(seconds), tv_nsec: Int(micros) * 1000)
    source.schedule(wallDeadline: DispatchWallTime(timespec: spec), leeway: .nanoseconds(0))
  }
}

/// Notices when the wall clock is set (T1): a `CLOCK_REALTIME` timerfd armed far in the future
/// with `TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET` becomes readable (its read fails with
/// `ECANCELED`) the moment anyone steps the clock. The size of the step is the change of the
/// offset between `CLOCK_REALTIME` and `CLOCK_MONOTONIC`. Not `Sendable`: it belongs to the
/// agent's actor; its read handler runs on the queue it was given, the actor's.
public final class ClockChangeMonitor {
  private let fd: Int32
  private let source: DispatchSourceRead
  private var offset: Int64

  /// The flags this monitor arms its timerfd with (visible in /proc/PID/fdinfo).
  public static let settimeFlags = Int32(TFD_TIMER_ABSTIME) | Int32(TFD_TIMER_CANCEL_ON_SET)

  /// Starts watching; `handler` gets the signed size of each step in microseconds.
  public init?(queue: DispatchQueue, handler: @escaping @Sendable (Int64) -> Void) {
    let fd = timerfd_create(CLOCK_REALTIME, Int32(TFD_NONBLOCK) | Int32(TFD_CLOEXEC))
    guard fd >= 0 else { return nil }
    self.fd = fd
    self.offset = Self.realtimeOffset()
    source = DispatchSource.makeReadSource(fileDescriptor: fd, queue: queue)
    guard arm() else {
      close(fd)
      return nil
    }
    source.setEventHandler { [weak self] in
      guard let self else { return }
      var expirations: UInt64 = 0
      let result = read(fd, &expirations, 8)
      guard result < 0, errno == ECANCELED else { return }
      let newOffset = Self.realtimeOffset()
      let delta = newOffset - self.offset
      self.offset = newOffset
      _ = self.arm()
      handler(delta)
    }
    source.setCancelHandler { close(fd) }
    source.resume()
  }

  deinit { source.cancel() }

  private func arm() -> Bool {
    // Far in the future (year 2200): it never expires, it only gets cancelled.
    var spec = itimerspec(it_interval: timespec(), it_value: timespec(tv_sec: 7_258_118_400, tv_nsec: 0))
    return timerfd_settime(fd, Self.settimeFlags, &spec, nil) == 0
  }

  /// `CLOCK_REALTIME - CLOCK_MONOTONIC` in microseconds.
  static func realtimeOffset() -> Int64 {
    var real = timespec()
    var mono = timespec()
    clock_gettime(CLOCK_REALTIME, &real)
    clock_gettime(CLOCK_MONOTONIC, &mono)
    return (Int64(real.tv_sec) - Int64(mono.tv_sec)) * 1_000_000 + (Int64(real.tv_nsec) - Int64(mono.tv_nsec))
      / 1000
  }
}

/// Where the agent's files are (contract §6): systemd's `*_DIRECTORY` variables, else the
/// defaults under /etc, /var/lib and /run.
public struct AgentPaths: Sendable, Equatable {
  public var configurationDirectory: String
  public var stateDirectory: String
  public var runtimeDirectory: String

  public init(configurationDirectory: String, stateDirectory: String, runtimeDirectory: String) {
    self.configurationDirectory = configurationDirectory
    self.stateDirectory = stateDirectory
    self.runtimeDirectory = runtimeDirectory
  }

  /// From the environment. systemd may list several directories separated by ':'; the
  /// first is used.
  public static func fromEnvironment(_ environment: [String: String]) -> AgentPaths {
    func directory(_ name: String, _ fallback: String) -> String {
      guard let value = environment[name], !value.isEmpty else { return fallback }
      return String(value.split(separator: ":").first ?? Substring(fallback))
    }
    return AgentPaths(
      configurationDirectory: directory("CONFIGURATION_DIRECTORY", "/etc/license-agent"),
      stateDirectory: directory("STATE_DIRECTORY", "/var/lib/license-agent"),
      runtimeDirectory: directory("RUNTIME_DIRECTORY", "/run/license-agent"))
  }

  public var configurationFile: String { configurationDirectory + "/agent.toml" }
  public var trustDirectory: String { configurationDirectory + "/trusted-issuers" }
  public var socketPath: String { runtimeDirectory + "/io.licenseagent.Agent" }
}

/// `CLOCK_MONOTONIC` in milliseconds: for durations inside the process (deadlines, rate
/// limits), which a step of the wall clock must not stretch or shrink.
func monotonicMilliseconds() -> Int64 {
  var now = timespec()
  clock_gettime(CLOCK_MONOTONIC, &now)
  return Int64(now.tv_sec) * 1000 + Int64(now.tv_nsec) / 1_000_000
}
