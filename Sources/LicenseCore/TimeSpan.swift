/// A length of time in microseconds, as written in the configuration and on the command
/// line: `250ms`, `5s`, `10m`, `1h`, `30d` (one number, one unit; `us` for microseconds).
///
/// Wall-clock instants are ``Timestamp``s; a `TimeSpan` is what separates two of them
/// (a warning threshold before `exp`, a retry delay).
public struct TimeSpan: Hashable, Comparable, Sendable, Codable, CustomStringConvertible {
  public var microseconds: Int64

  public init(microseconds: Int64) { self.microseconds = microseconds }
  // Saturating, as every operation on spans and instants: an absurd span is "forever".
  public static func seconds(_ s: Int64) -> TimeSpan {
    TimeSpan(microseconds: saturatingProduct(s, 1_000_000))
  }
  public static func minutes(_ m: Int64) -> TimeSpan { .seconds(saturatingProduct(m, 60)) }
  public static func hours(_ h: Int64) -> TimeSpan { .seconds(saturatingProduct(h, 3600)) }
  public static func days(_ d: Int64) -> TimeSpan { .seconds(saturatingProduct(d, 86_400)) }

  /// The longest span a setting may have: 100 years. Longer ones are refused where they
  /// are read (the configuration), so that no instant computed from one is ever near the
  /// end of the range.
  public static let maximumSetting = TimeSpan.days(36_525)

  public static func + (lhs: TimeSpan, rhs: TimeSpan) -> TimeSpan {
    TimeSpan(microseconds: saturatingSum(lhs.microseconds, rhs.microseconds))
  }

  public static func * (lhs: TimeSpan, rhs: Int64) -> TimeSpan {
    TimeSpan(microseconds: saturatingProduct(lhs.microseconds, rhs))
  }

  public static func < (lhs: TimeSpan, rhs: TimeSpan) -> Bool { lhs.microseconds < rhs.microseconds }

  private static let units: [(suffix: String, microseconds: Int64)] = [
    ("us", 1), ("ms", 1000), ("s", 1_000_000), ("m", 60_000_000), ("h", 3_600_000_000),
    ("d", 86_400_000_000),
  ]

  /// Parses `<digits><unit>`; nil for anything else (no sign, no spaces, no mixed units).
  public init?(_ text: String) {
    // Longest suffix first, so that "ms" is not read as "m" + "s".
    for unit in Self.units.sorted(by: { $0.suffix.count > $1.suffix.count })
    where text.hasSuffix(unit.suffix) {
      let digits = text.dropLast(unit.suffix.count)
      guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }),
        let value = Int64(digits)
      else { return nil }
      let (product, overflow) = value.multipliedReportingOverflow(by: unit.microseconds)
      guard !overflow else { return nil }
      self.microseconds = product
      return
    }
    return nil
  }

  /// The shortest exact spelling in the largest unit: `30d`, `90m`, `1500ms`.
  public var description: String {
    for unit in Self.units.reversed() where microseconds != 0 && microseconds % unit.microseconds == 0 {
      return "\(microseconds / unit.microseconds)\(unit.suffix)"
    }
    return "\(microseconds)us"
  }

  /// A person's reading of a span: `29 days 23 hours`, `5 minutes 3 seconds`, `400 ms`.
  /// Two units at most, rounded down; for status lines, never for parsing.
  public var inWords: String {
    let total = microseconds.magnitude
    if total < 1_000_000 { return "\(total / 1000) ms" }
    let parts: [(UInt64, String)] = [
      (total / 86_400_000_000, "day"), (total / 3_600_000_000 % 24, "hour"),
      (total / 60_000_000 % 60, "minute"), (total / 1_000_000 % 60, "second"),
    ]
    guard let first = parts.firstIndex(where: { $0.0 > 0 }) else { return "0 seconds" }
    return parts[first...].prefix(2).filter { $0.0 > 0 }
      .map { "\($0.0) \($0.1)\($0.0 == 1 ? "" : "s")" }.joined(separator: " ")
  }
}

extension Timestamp {
  public static func + (lhs: Timestamp, rhs: TimeSpan) -> Timestamp {
    lhs.adding(microseconds: rhs.microseconds)
  }
  public static func - (lhs: Timestamp, rhs: TimeSpan) -> Timestamp {
    // -Int64.min does not exist: subtracting the most negative span saturates forward.
    rhs.microseconds == .min
      ? Timestamp(microseconds: .max) : lhs.adding(microseconds: -rhs.microseconds)
  }

  /// Parses what an operator types for an instant: RFC 3339, `now`, or a span relative to
  /// `now` (`+90d`, `-1h`, `+5s`, `+250ms`).
  public init?(instant text: String, now: Timestamp) {
    if text == "now" {
      self = now
    } else if let sign = text.first, sign == "+" || sign == "-", let span = TimeSpan(String(text.dropFirst()))
    {
      self = sign == "+" ? now + span : now - span
    } else if let parsed = Timestamp(rfc3339: text) {
      self = parsed
    } else {
      return nil
    }
  }
}
