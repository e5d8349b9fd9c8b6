import CSystemd

/// The service manager's notification protocol (`sd_notify`): READY, STATUS, WATCHDOG,
/// RELOADING and STOPPING. Without `NOTIFY_SOCKET` (not started by systemd) it does nothing.
public struct ServiceNotifier: Sendable {
  public init() {}

  /// Sends newline-separated assignments such as `READY=1\nSTATUS=...`.
  public func notify(_ assignments: String) {
    _ = sd_notify(0, assignments)
  }

  /// The watchdog timeout the manager set (`WatchdogSec=`), in microseconds, when it is
  /// enabled for this process.
  public static func watchdogTimeout() -> UInt64? {
    var usec: UInt64 = 0
    return sd_watchdog_enabled(0, &usec) > 0 && usec > 0 ? usec : nil
  }
}
