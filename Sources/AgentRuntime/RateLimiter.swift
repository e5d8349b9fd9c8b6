/// Lets one log line through per key and interval, and counts the others, so that a flood
/// of refused connections becomes one line a minute saying how many there were. Keeps no
/// timer: the count is reported with the next line that gets through.
struct RateLimiter<Key: Hashable> {
  let intervalMilliseconds: Int64
  private var lastLogged: [Key: Int64] = [:]
  private var suppressed: [Key: Int] = [:]

  init(intervalMilliseconds: Int64) { self.intervalMilliseconds = intervalMilliseconds }

  /// nil when the line for `key` is to be dropped now; else how many were dropped since
  /// the last one that got through.
  mutating func admit(_ key: Key, nowMilliseconds now: Int64) -> Int? {
    if let last = lastLogged[key], now - last < intervalMilliseconds {
      suppressed[key, default: 0] += 1
      return nil
    }
    lastLogged[key] = now
    return suppressed.removeValue(forKey: key) ?? 0
  }
}
