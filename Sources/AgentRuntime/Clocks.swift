import CLinux
import Dispatch
import Glibc
import LicenseCore
import Synchronization

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
  /// Whether the handler ran since the deadline was set.
  private let fired: FiredSinceArmed

  private final class FiredSinceArmed: Sendable {
    let value = Atomic<Bool>(false)
  }

  public init(queue: DispatchQueue, handler: @escaping @Sendable () -> Void) {
    source = DispatchSource.makeTimerSource(flags: [.strict], queue: queue)
    let fired = FiredSinceArmed()
    self.fired = fired
    source.setEventHandler {
      fired.value.store(true, ordering: .relaxed)
      handler()
    }
    source.schedule(wallDeadline: .distantFuture, leeway: .nanoseconds(0))
    source.resume()
  }

  deinit { source.cancel() }

  public func arm(at instant: Timestamp?) {
    // The same deadline, not fired yet: it stands. Scheduling the source again would drop a
    // firing that waits for the queue, and a queue kept busy (a flood of an admin's calls,
    // each re-arming after its change) would then never run it: the expiry would wait for
    // the flood to end.
    if instant != nil, instant == deadline, !fired.value.load(ordering: .relaxed) { return }
    fired.value.store(false, ordering: .relaxed)
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

/// Fires once after a delay on the monotonic clock: for durations (the retry of a state
/// write), which a step of the wall clock must not stretch or shrink. Re-arming replaces
/// the previous delay. Owned by the agent's actor, and armed only from it.
public protocol DelayTimer: AnyObject {
  /// Arms the timer to fire `delay` from now (nil: disarm). The handler runs on its queue.
  func arm(after delay: TimeSpan?)
}

/// A `DispatchSourceTimer` with a `DispatchTime` (monotonic) deadline. Not `Sendable`: it
/// belongs to the agent's actor.
public final class DispatchDelayTimer: DelayTimer {
  private let source: DispatchSourceTimer

  public init(queue: DispatchQueue, handler: @escaping @Sendable () -> Void) {
    source = DispatchSource.makeTimerSource(queue: queue)
    source.setEventHandler(handler: handler)
    source.schedule(deadline: .distantFuture)
    source.resume()
  }

  deinit { source.cancel() }

  public func arm(after delay: TimeSpan?) {
    guard let delay else {
      source.schedule(deadline: .distantFuture)
      return
    }
    source.schedule(deadline: .now() + .microseconds(Int(delay.microseconds)))
  }
}
