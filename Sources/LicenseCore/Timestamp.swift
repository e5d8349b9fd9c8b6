/// An instant in UTC, in whole microseconds since the Unix epoch.
///
/// Keys carry `nbf`/`exp` as JSON numbers that may have fractions; an integer count of
/// microseconds keeps them exactly (to the microsecond) and compares without floating-point
/// surprises, which matters at the boundaries the rules care about (`now == exp`).
/// Nothing here reads a clock: the time always comes in as a value.
public struct Timestamp: Hashable, Comparable, Sendable, Codable, CustomStringConvertible {
  /// Microseconds since 1970-01-01T00:00:00Z.
  public var microseconds: Int64

  public init(microseconds: Int64) { self.microseconds = microseconds }

  /// Whole seconds since the epoch (saturating).
  public init(seconds: Int64) { self.microseconds = saturatingProduct(seconds, 1_000_000) }

  /// Converts a JSON number of seconds (fractions allowed) to the nearest microsecond.
  /// Returns nil when the value is not finite or out of the representable range.
  public init?(secondsSinceEpoch value: Double) {
    guard value.isFinite, abs(value) < 9.0e12 else { return nil }
    self.microseconds = Int64((value * 1_000_000).rounded())
  }

  public static func < (lhs: Timestamp, rhs: Timestamp) -> Bool { lhs.microseconds < rhs.microseconds }

  /// Shifts by a number of microseconds (negative goes back), saturating at the ends of
  /// the range: an instant computed from an absurd duration is "never", not a crash
  /// (`alert-after = "106751990d"` once overflowed at every expiry, issue 20).
  public func adding(microseconds delta: Int64) -> Timestamp {
    Timestamp(microseconds: saturatingSum(microseconds, delta))
  }

  /// Signed microseconds from `other` to `self`, saturating.
  public func microseconds(since other: Timestamp) -> Int64 {
    let (difference, overflow) = microseconds.subtractingReportingOverflow(other.microseconds)
    guard overflow else { return difference }
    return microseconds < other.microseconds ? .min : .max
  }

  /// Seconds since the epoch as a JSON number: integral when whole, else with up to six
  /// decimals and no trailing zeros (`1767225600`, `1767225600.5`).
  public var jsonSeconds: String {
    let sign = microseconds < 0 ? "-" : ""
    let magnitude = microseconds.magnitude
    let seconds = magnitude / 1_000_000
    let fraction = magnitude % 1_000_000
    if fraction == 0 { return sign + String(seconds) }
    var digits = String(fraction)
    digits = String(repeating: "0", count: 6 - digits.count) + digits
    while digits.hasSuffix("0") { digits.removeLast() }
    return "\(sign)\(seconds).\(digits)"
  }

  /// RFC 3339 in UTC: `2026-12-31T09:00:00Z`, with `.ffffff` only when not whole.
  public var rfc3339: String {
    let (seconds, fraction) = floorDivide(microseconds, 1_000_000)
    let (days, secondOfDay) = floorDivide(seconds, 86_400)
    let (year, month, day) = civilFromDays(days)
    let hour = secondOfDay / 3600
    let minute = (secondOfDay % 3600) / 60
    let second = secondOfDay % 60
    var text =
      "\(pad(year, 4))-\(pad(month, 2))-\(pad(day, 2))T\(pad(hour, 2)):\(pad(minute, 2)):\(pad(second, 2))"
    if fraction != 0 { text += "." + pad(fraction, 6) }
    return text + "Z"
  }

  public var description: String { rfc3339 }

  /// Parses RFC 3339 (`2026-12-31T09:00:00Z`, `2026-12-31T10:00:00.25+01:00`, `t`/`z` in
  /// lower case too). Fractions beyond microseconds are refused rather than rounded.
  public init?(rfc3339 text: String) {
    let chars = Array(text.utf8)
    func number(_ start: Int, _ count: Int) -> Int64? {
      guard start + count <= chars.count else { return nil }
      var value: Int64 = 0
      for c in chars[start..<start + count] {
        guard c >= 48, c <= 57 else { return nil }
        value = value * 10 + Int64(c - 48)
      }
      return value
    }
    guard chars.count >= 20,
      let year = number(0, 4), chars[4] == UInt8(ascii: "-"),
      let month = number(5, 2), chars[7] == UInt8(ascii: "-"),
      let day = number(8, 2), chars[10] == UInt8(ascii: "T") || chars[10] == UInt8(ascii: "t"),
      let hour = number(11, 2), chars[13] == UInt8(ascii: ":"),
      let minute = number(14, 2), chars[16] == UInt8(ascii: ":"),
      let second = number(17, 2)
    else { return nil }
    guard (1...12).contains(month), day >= 1, day <= daysInMonth(year, month), hour < 24,
      minute < 60, second < 60
    else { return nil }
    var index = 19
    var fraction: Int64 = 0
    if index < chars.count, chars[index] == UInt8(ascii: ".") {
      index += 1
      var digits = 0
      while index < chars.count, chars[index] >= 48, chars[index] <= 57 {
        guard digits < 6 else { return nil }
        fraction = fraction * 10 + Int64(chars[index] - 48)
        digits += 1
        index += 1
      }
      guard digits > 0 else { return nil }
      for _ in digits..<6 { fraction *= 10 }
    }
    guard index < chars.count else { return nil }
    var offsetSeconds: Int64 = 0
    switch chars[index] {
    case UInt8(ascii: "Z"), UInt8(ascii: "z"):
      index += 1
    case UInt8(ascii: "+"), UInt8(ascii: "-"):
      let sign: Int64 = chars[index] == UInt8(ascii: "+") ? 1 : -1
      guard let offHour = number(index + 1, 2), index + 3 < chars.count,
        chars[index + 3] == UInt8(ascii: ":"), let offMinute = number(index + 4, 2),
        offHour < 24, offMinute < 60
      else { return nil }
      offsetSeconds = sign * (offHour * 3600 + offMinute * 60)
      index += 6
    default:
      return nil
    }
    guard index == chars.count else { return nil }
    let days = daysFromCivil(year, month, day)
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offsetSeconds
    self.microseconds = seconds * 1_000_000 + fraction
  }
}

/// `a + b`, clamped to `Int64`'s range instead of trapping.
func saturatingSum(_ a: Int64, _ b: Int64) -> Int64 {
  let (sum, overflow) = a.addingReportingOverflow(b)
  guard overflow else { return sum }
  return b < 0 ? .min : .max
}

/// `a * b`, clamped to `Int64`'s range instead of trapping.
func saturatingProduct(_ a: Int64, _ b: Int64) -> Int64 {
  let (product, overflow) = a.multipliedReportingOverflow(by: b)
  guard overflow else { return product }
  return (a < 0) != (b < 0) ? .min : .max
}

private func pad(_ value: Int64, _ width: Int) -> String {
  let digits = String(value)
  return digits.count >= width ? digits : String(repeating: "0", count: width - digits.count) + digits
}

private func floorDivide(_ a: Int64, _ b: Int64) -> (Int64, Int64) {
  var q = a / b
  var r = a % b
  if r < 0 {
    q -= 1
    r += b
  }
  return (q, r)
}

private func isLeap(_ year: Int64) -> Bool { (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 }

private func daysInMonth(_ year: Int64, _ month: Int64) -> Int64 {
  switch month {
  case 2: return isLeap(year) ? 29 : 28
  case 4, 6, 9, 11: return 30
  default: return 31
  }
}

// Howard Hinnant's days_from_civil / civil_from_days (proleptic Gregorian calendar).
private func daysFromCivil(_ y0: Int64, _ m: Int64, _ d: Int64) -> Int64 {
  let y = m <= 2 ? y0 - 1 : y0
  let era = (y >= 0 ? y : y - 399) / 400
  let yoe = y - era * 400
  let doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1
  let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
  return era * 146_097 + doe - 719_468
}

private func civilFromDays(_ z0: Int64) -> (Int64, Int64, Int64) {
  let z = z0 + 719_468
  let era = (z >= 0 ? z : z - 146_096) / 146_097
  let doe = z - era * 146_097
  let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365
  let y = yoe + era * 400
  let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
  let mp = (5 * doy + 2) / 153
  let d = doy - (153 * mp + 2) / 5 + 1
  let m = mp < 10 ? mp + 3 : mp - 9
  return (m <= 2 ? y + 1 : y, m, d)
}
