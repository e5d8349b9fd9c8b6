/// A strict RFC 8259 parser from UTF-8 bytes to ``JSONValue``, in one pass.
///
/// Written by hand because what it replaces, `JSONDecoder` decoding `JSONValue` by trying
/// each type in turn with `try?`, threw and caught an error per value: a 1 MB message from
/// any local user cost about a second of the agent's queue (issue 20). This parser never
/// throws: it walks the bytes once and gives nil for anything that is not JSON.
///
/// Refused, as a strict reader of signed documents should: invalid UTF-8, unescaped
/// control characters, lone surrogates, leading zeros, numbers out of `Double`'s range,
/// duplicate object keys (two parsers could read a signed payload differently), trailing
/// bytes, nesting deeper than ``maximumDepth`` (no input can exhaust the stack), object keys
/// longer than ``maximumKeyLength`` bytes, and text that is not stream-safe (more than
/// ``maximumNonStarters`` combining marks in a row, Unicode's UAX #15 limit): Swift
/// normalises a string when it hashes or compares it, and a long run of combining marks
/// makes that quadratic (a 1 MB key cost a minute of the agent's queue, issue 25's attack).
struct JSONParser {
  /// Arrays and objects nested deeper than this are refused.
  static let maximumDepth = 128
  /// Object keys longer than this (in UTF-8 bytes) are refused: no document read has one.
  static let maximumKeyLength = 256
  /// The longest run of non-starters (combining marks) a string may hold.
  static let maximumNonStarters = 30

  private let bytes: UnsafeBufferPointer<UInt8>
  private var index = 0
  private var depth = 0

  private init(_ bytes: UnsafeBufferPointer<UInt8>) { self.bytes = bytes }

  /// The document in `bytes`, or nil when it is not exactly one JSON value (white space
  /// around it allowed).
  static func parse(_ bytes: UnsafeBufferPointer<UInt8>) -> JSONValue? {
    var parser = JSONParser(bytes)
    parser.skipWhitespace()
    guard let value = parser.value() else { return nil }
    parser.skipWhitespace()
    return parser.index == bytes.count ? value : nil
  }

  private var current: UInt8? { index < bytes.count ? bytes[index] : nil }

  private mutating func skipWhitespace() {
    while index < bytes.count {
      switch bytes[index] {
      case 0x20, 0x09, 0x0A, 0x0D: index += 1
      default: return
      }
    }
  }

  private mutating func value() -> JSONValue? {
    guard let byte = current else { return nil }
    switch byte {
    case UInt8(ascii: "{"): return object()
    case UInt8(ascii: "["): return array()
    case UInt8(ascii: "\""): return string().map(JSONValue.string)
    case UInt8(ascii: "t"): return literal("true", .bool(true))
    case UInt8(ascii: "f"): return literal("false", .bool(false))
    case UInt8(ascii: "n"): return literal("null", .null)
    case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return number()
    default: return nil
    }
  }

  private mutating func literal(_ word: StaticString, _ value: JSONValue) -> JSONValue? {
    let count = word.utf8CodeUnitCount
    guard index + count <= bytes.count else { return nil }
    for offset in 0..<count where bytes[index + offset] != word.utf8Start[offset] { return nil }
    index += count
    return value
  }

  private mutating func object() -> JSONValue? {
    depth += 1
    defer { depth -= 1 }
    guard depth <= Self.maximumDepth else { return nil }
    index += 1  // {
    var members: [String: JSONValue] = [:]
    skipWhitespace()
    if current == UInt8(ascii: "}") {
      index += 1
      return .object(members)
    }
    while true {
      skipWhitespace()
      guard current == UInt8(ascii: "\""), let key = string(), key.utf8.count <= Self.maximumKeyLength else {
        return nil
      }
      skipWhitespace()
      guard current == UInt8(ascii: ":") else { return nil }
      index += 1
      skipWhitespace()
      guard let member = value() else { return nil }
      guard members.updateValue(member, forKey: key) == nil else { return nil }
      skipWhitespace()
      switch current {
      case UInt8(ascii: ","): index += 1
      case UInt8(ascii: "}"):
        index += 1
        return .object(members)
      default: return nil
      }
    }
  }

  private mutating func array() -> JSONValue? {
    depth += 1
    defer { depth -= 1 }
    guard depth <= Self.maximumDepth else { return nil }
    index += 1  // [
    var items: [JSONValue] = []
    skipWhitespace()
    if current == UInt8(ascii: "]") {
      index += 1
      return .array(items)
    }
    while true {
      skipWhitespace()
      guard let item = value() else { return nil }
      items.append(item)
      skipWhitespace()
      switch current {
      case UInt8(ascii: ","): index += 1
      case UInt8(ascii: "]"):
        index += 1
        return .array(items)
      default: return nil
      }
    }
  }

  /// A string literal, the opening quote at `index`: runs without escapes are validated as
  /// UTF-8 and copied as they are.
  private mutating func string() -> String? {
    index += 1  // "
    var text = ""
    var runStart = index
    while index < bytes.count {
      let byte = bytes[index]
      if byte == UInt8(ascii: "\"") {
        guard append(run: runStart..<index, to: &text) else { return nil }
        index += 1
        return Self.isStreamSafe(text) ? text : nil
      }
      if byte == UInt8(ascii: "\\") {
        guard append(run: runStart..<index, to: &text) else { return nil }
        index += 1
        guard let scalar = escape() else { return nil }
        text.unicodeScalars.append(scalar)
        runStart = index
        continue
      }
      guard byte >= 0x20 else { return nil }  // control characters must be escaped
      index += 1
    }
    return nil  // unterminated
  }

  /// Whether `text` has no run of more than ``maximumNonStarters`` combining marks (linear:
  /// ASCII text is checked by its bytes alone).
  static func isStreamSafe(_ text: String) -> Bool {
    guard !text.utf8.allSatisfy({ $0 < 0x80 }) else { return true }
    var run = 0
    for scalar in text.unicodeScalars {
      if scalar.value >= 0x300 && scalar.properties.canonicalCombiningClass.rawValue != 0 {
        run += 1
        if run > maximumNonStarters { return false }
      } else {
        run = 0
      }
    }
    return true
  }

  private func append(run: Range<Int>, to text: inout String) -> Bool {
    guard !run.isEmpty else { return true }
    guard let piece = String(validating: UnsafeBufferPointer(rebasing: bytes[run]), as: UTF8.self) else {
      return false
    }
    text += piece
    return true
  }

  /// The character of an escape, the byte after the backslash at `index`.
  private mutating func escape() -> Unicode.Scalar? {
    guard let byte = current else { return nil }
    index += 1
    switch byte {
    case UInt8(ascii: "\""): return "\""
    case UInt8(ascii: "\\"): return "\\"
    case UInt8(ascii: "/"): return "/"
    case UInt8(ascii: "b"): return "\u{08}"
    case UInt8(ascii: "f"): return "\u{0C}"
    case UInt8(ascii: "n"): return "\n"
    case UInt8(ascii: "r"): return "\r"
    case UInt8(ascii: "t"): return "\t"
    case UInt8(ascii: "u"):
      guard let high = hex4() else { return nil }
      switch high {
      case 0xD800...0xDBFF:
        // A surrogate pair: \uD83D\uDE00.
        guard index + 1 < bytes.count, bytes[index] == UInt8(ascii: "\\"),
          bytes[index + 1] == UInt8(ascii: "u")
        else { return nil }
        index += 2
        guard let low = hex4(), (0xDC00...0xDFFF).contains(low) else { return nil }
        return Unicode.Scalar(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))
      case 0xDC00...0xDFFF: return nil  // a lone low surrogate
      default: return Unicode.Scalar(high)
      }
    default: return nil
    }
  }

  private mutating func hex4() -> UInt32? {
    guard index + 4 <= bytes.count else { return nil }
    var value: UInt32 = 0
    for _ in 0..<4 {
      let byte = bytes[index]
      let digit: UInt32
      switch byte {
      case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = UInt32(byte - UInt8(ascii: "0"))
      case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = UInt32(byte - UInt8(ascii: "a") + 10)
      case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = UInt32(byte - UInt8(ascii: "A") + 10)
      default: return nil
      }
      value = value << 4 | digit
      index += 1
    }
    return value
  }

  /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`, as a `Double`; nil when it is
  /// malformed or out of range.
  private mutating func number() -> JSONValue? {
    let start = index
    if current == UInt8(ascii: "-") { index += 1 }
    guard let first = current, isDigit(first) else { return nil }
    index += 1
    if first == UInt8(ascii: "0") {
      if let next = current, isDigit(next) { return nil }  // leading zero
    } else {
      skipDigits()
    }
    if current == UInt8(ascii: ".") {
      index += 1
      guard let next = current, isDigit(next) else { return nil }
      skipDigits()
    }
    if current == UInt8(ascii: "e") || current == UInt8(ascii: "E") {
      index += 1
      if current == UInt8(ascii: "+") || current == UInt8(ascii: "-") { index += 1 }
      guard let next = current, isDigit(next) else { return nil }
      skipDigits()
    }
    let text = String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<index]), as: UTF8.self)
    guard let value = Double(text), value.isFinite else { return nil }
    return .number(value)
  }

  private func isDigit(_ byte: UInt8) -> Bool { byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") }

  private mutating func skipDigits() {
    while let byte = current, isDigit(byte) { index += 1 }
  }
}
