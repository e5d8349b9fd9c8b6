import Glibc
import LicenseCore

/// The wall clock, injected so that tests never depend on the machine's time. The one place
/// that reads `CLOCK_REALTIME` as a ``Timestamp``: the core never reads a clock, everything
/// else asks this.
public protocol WallClock: Sendable {
  func now() -> Timestamp
}

/// `CLOCK_REALTIME`, to the microsecond.
public struct SystemWallClock: WallClock {
  public init() {}
  public func now() -> Timestamp {
    var spec = timespec()
    clock_gettime(CLOCK_REALTIME, &spec)
    return Timestamp(microseconds: Int64(spec.tv_sec) * 1_000_000 + Int64(spec.tv_nsec) / 1000)
  }
}
