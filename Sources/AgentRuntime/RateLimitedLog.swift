/// The bookkeeping of lines logged at most once a minute per key, saying how many were not
/// logged since the previous one (a value, tested alone): the control plane's refusals (per
/// kind and UID) and the hooks' failures (per hook and kind) use it, so that no flood of
/// them floods the journal, whose rate limit would then drop the agent's own events.
struct RateLimitedLog<K: Hashable & Sendable>: Sendable {
  typealias Key = K

  enum Admission: Equatable {
    /// Log it, with this many not logged since the previous line.
    case log(unlogged: Int)
    /// Drop it; `firstSinceLine` when it is the first dropped since the last line (the
    /// caller may then arrange a closing line).
    case suppressed(firstSinceLine: Bool)
  }

  static var intervalMilliseconds: Int64 { 60_000 }
  /// Keys kept at most; the oldest quiet ones go first.
  static var maximumKeys: Int { 4096 }

  private var lastLogged: [Key: Int64] = [:]
  private var suppressed: [Key: Int] = [:]

  /// How many keys are kept (for tests).
  var keyCount: Int { lastLogged.count }

  mutating func admit(_ key: Key, now: Int64) -> Admission {
    if let last = lastLogged[key], now - last < Self.intervalMilliseconds {
      let count = suppressed[key, default: 0]
      suppressed[key] = count + 1
      return .suppressed(firstSinceLine: count == 0)
    }
    if lastLogged.count >= Self.maximumKeys {
      lastLogged = lastLogged.filter { now - $0.value < Self.intervalMilliseconds }
    }
    lastLogged[key] = now
    return .log(unlogged: suppressed.removeValue(forKey: key) ?? 0)
  }

  /// The count dropped since the last line, which a closing line reports (it counts as a
  /// line: the next one waits a minute after it).
  mutating func takeSuppressed(_ key: Key, now: Int64) -> Int? {
    guard let count = suppressed.removeValue(forKey: key) else { return nil }
    lastLogged[key] = now
    return count
  }
}
