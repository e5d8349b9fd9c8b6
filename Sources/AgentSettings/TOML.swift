/// A small TOML reader for `agent.toml`, in one pass, each value with its line.
///
/// It reads TOML's whole line structure (comments, `[table]` and `[[table]]` headers,
/// dotted and quoted keys, basic and literal strings, multi-line ones, arrays over several
/// lines, inline tables, bare values such as numbers, booleans and dates), so that a file
/// any TOML tool accepts is read, and anything else is refused with its line. The settings
/// themselves are strings and arrays of strings: other values are kept as their text, for
/// a message that says what a setting must be. Replaced TOMLKit (toml++), whose parser
/// aborted the process on some malformed names (found by fuzzing) and which needed a line
/// search to say where an error was.
struct TOMLDocument {
  /// A value as read, with the line it starts on.
  struct Value {
    enum Kind {
      case string(String)
      case array([Value])
      /// A number, boolean or date: its text.
      case bare(String)
      case inlineTable
    }
    var kind: Kind
    var line: Int
  }

  /// One `key = value`: the key's parts (`a.b` is two), the table it is in, its line.
  struct Entry {
    var table: [String]
    var key: [String]
    var value: Value
    var line: Int
  }

  /// A table header, `[name]`, and its line (`array` for `[[name]]`).
  struct Header {
    var name: [String]
    var line: Int
    var array: Bool
  }

  var entries: [Entry] = []
  var headers: [Header] = []

  /// A syntax error, with its line.
  struct SyntaxError: Error {
    var line: Int
    var text: String
  }

  init(parsing text: String) throws(SyntaxError) {
    var reader = Reader(text: text)
    do {
      try reader.document(into: &self)
    } catch {
      throw SyntaxError(line: reader.line, text: error.text)
    }
  }
}

private struct Problem: Error { var text: String }

/// The scanner: one position in the text, its line.
private struct Reader {
  private let scalars: [Unicode.Scalar]
  private var index = 0
  /// The 1-based line of the position.
  private(set) var line = 1
  private var table: [String] = []

  init(text: String) { scalars = Array(text.unicodeScalars) }

  private var current: Unicode.Scalar? { index < scalars.count ? scalars[index] : nil }

  private func starts(_ marker: String) -> Bool {
    let marks = Array(marker.unicodeScalars)
    return index + marks.count <= scalars.count && Array(scalars[index..<index + marks.count]) == marks
  }

  private mutating func advance(_ count: Int = 1) {
    for _ in 0..<count where index < scalars.count {
      if scalars[index] == "\n" { line += 1 }
      index += 1
    }
  }

  private static func isBare(_ scalar: Unicode.Scalar) -> Bool {
    scalar.isASCII
      && (("a"..."z").contains(scalar) || ("A"..."Z").contains(scalar) || ("0"..."9").contains(scalar)
        || scalar == "-" || scalar == "_")
  }

  private static func describe(_ scalar: Unicode.Scalar?) -> String {
    guard let scalar else { return "the end of the file" }
    if scalar == "\n" { return "the end of the line" }
    if scalar.isASCII && scalar.value >= 0x20 && scalar.value < 0x7F { return "\"\(scalar)\"" }
    if scalar.isASCII { return "the control character U+" + String(scalar.value, radix: 16, uppercase: true) }
    return "\"\(scalar)\" (names are ASCII letters, digits, '-' and '_', or quoted)"
  }

  private mutating func skipSpaces() {
    while let scalar = current, scalar == " " || scalar == "\t" { advance() }
  }

  /// Spaces, an optional comment, then the end of the line (or of the file).
  private mutating func endOfLine() throws(Problem) {
    skipSpaces()
    if current == "#" { try comment() }
    if current == "\r" { advance() }
    guard current == nil || current == "\n" else {
      throw Problem(text: "unexpected \(Self.describe(current)) where the line should end")
    }
    advance()
  }

  private mutating func comment() throws(Problem) {
    while let scalar = current, scalar != "\n" {
      if scalar.value < 0x20 && scalar != "\t" && scalar != "\r" {
        throw Problem(text: "the control character U+\(String(scalar.value, radix: 16)) in a comment")
      }
      advance()
    }
  }

  mutating func document(into document: inout TOMLDocument) throws(Problem) {
    while current != nil {
      skipSpaces()
      switch current {
      case nil: return
      case "\n", "\r", "#": try endOfLine()
      case "[": try header(into: &document)
      default: try keyValue(into: &document)
      }
    }
  }

  /// `[a.b]` or `[[a.b]]`.
  private mutating func header(into document: inout TOMLDocument) throws(Problem) {
    let start = line
    advance()
    let array = current == "["
    if array { advance() }
    skipSpaces()
    let name = try keyPath()
    guard current == "]" else {
      throw Problem(text: "a table header must end with ']', not \(Self.describe(current))")
    }
    advance()
    if array {
      guard current == "]" else { throw Problem(text: "an array-of-tables header must end with ']]'") }
      advance()
    }
    try endOfLine()
    if !array, document.headers.contains(where: { !$0.array && $0.name == name }) {
      line = start
      throw Problem(text: "the table [\(name.joined(separator: "."))] is defined twice")
    }
    document.headers.append(TOMLDocument.Header(name: name, line: start, array: array))
    table = name
  }

  /// `a.b = value`.
  private mutating func keyValue(into document: inout TOMLDocument) throws(Problem) {
    let start = line
    let key = try keyPath()
    guard current == "=" else {
      throw Problem(text: "expected '=' after a key, not \(Self.describe(current))")
    }
    advance()
    skipSpaces()
    let value = try singleValue(depth: 0)
    try endOfLine()
    if document.entries.contains(where: { $0.table == table && $0.key == key }) {
      line = start
      throw Problem(text: "the key \(key.joined(separator: ".")) is defined twice")
    }
    document.entries.append(TOMLDocument.Entry(table: table, key: key, value: value, line: start))
  }

  /// Dotted key parts, each bare or quoted, with spaces around the dots.
  private mutating func keyPath() throws(Problem) -> [String] {
    var parts: [String] = []
    while true {
      skipSpaces()
      switch current {
      case "\"": parts.append(try basicString())
      case "'": parts.append(try literalString())
      case let scalar? where Self.isBare(scalar):
        var name = ""
        while let scalar = current, Self.isBare(scalar) {
          name.unicodeScalars.append(scalar)
          advance()
        }
        parts.append(name)
      default: throw Problem(text: "expected a name, found \(Self.describe(current))")
      }
      skipSpaces()
      guard current == "." else { return parts }
      advance()
    }
  }

  /// Spaces, newlines and comments inside an array.
  private mutating func skipArraySpace() throws(Problem) {
    while let scalar = current {
      if scalar == " " || scalar == "\t" || scalar == "\r" || scalar == "\n" {
        advance()
      } else if scalar == "#" {
        try comment()
      } else {
        return
      }
    }
  }

  /// One value: a string, an array, an inline table, or a bare token (number, boolean,
  /// date), never empty.
  private mutating func singleValue(depth: Int) throws(Problem) -> TOMLDocument.Value {
    guard depth < 32 else { throw Problem(text: "arrays or inline tables nested deeper than 32 levels") }
    let start = line
    func value(_ kind: TOMLDocument.Value.Kind) -> TOMLDocument.Value { .init(kind: kind, line: start) }
    switch current {
    case "\"" where starts("\"\"\""): return value(.string(try multilineString(basic: true)))
    case "'" where starts("'''"): return value(.string(try multilineString(basic: false)))
    case "\"": return value(.string(try basicString()))
    case "'": return value(.string(try literalString()))
    case "[":
      advance()
      try skipArraySpace()
      var items: [TOMLDocument.Value] = []
      while current != "]" {
        items.append(try singleValue(depth: depth + 1))
        try skipArraySpace()
        if current == "," {
          advance()
          try skipArraySpace()
        } else if current != "]" {
          throw Problem(text: "expected ',' or ']' in an array, not \(Self.describe(current))")
        }
      }
      advance()
      return value(.array(items))
    case "{":
      advance()
      skipSpaces()
      while current != "}" {
        _ = try keyPath()
        guard current == "=" else {
          throw Problem(text: "expected '=' in an inline table, not \(Self.describe(current))")
        }
        advance()
        skipSpaces()
        _ = try singleValue(depth: depth + 1)
        skipSpaces()
        if current == "," {
          advance()
          skipSpaces()
          guard current != "}" else { throw Problem(text: "a ',' before '}' in an inline table") }
        } else if current != "}" {
          throw Problem(text: "expected ',' or '}' in an inline table, not \(Self.describe(current))")
        }
      }
      advance()
      return value(.inlineTable)
    default:
      var text = ""
      while let scalar = current,
        ![" ", "\t", "\r", "\n", ",", "]", "}", "#", "[", "{", "\"", "'", "="].contains(scalar)
      {
        guard scalar.isASCII, scalar.value >= 0x20, scalar.value != 0x7F else {
          throw Problem(text: "unexpected \(Self.describe(scalar)) in a value")
        }
        text.unicodeScalars.append(scalar)
        advance()
      }
      // Dates may hold one space between day and time: "1979-05-27 07:32:00".
      if text.unicodeScalars.count == 10, current == " ", index + 1 < scalars.count,
        ("0"..."9").contains(scalars[index + 1])
      {
        advance()
        text += " "
        while let scalar = current, ![" ", "\t", "\r", "\n", ",", "]", "}", "#"].contains(scalar) {
          guard scalar.isASCII, scalar.value >= 0x20 else {
            throw Problem(text: "unexpected \(Self.describe(scalar))")
          }
          text.unicodeScalars.append(scalar)
          advance()
        }
      }
      guard !text.isEmpty else { throw Problem(text: "expected a value, found \(Self.describe(current))") }
      return value(.bare(text))
    }
  }

  /// `"..."`, with TOML's escapes.
  private mutating func basicString() throws(Problem) -> String {
    advance()
    var text = ""
    while let scalar = current, scalar != "\"" {
      if scalar == "\n" { throw Problem(text: "a string is not closed on its line") }
      if scalar == "\\" {
        advance()
        text.unicodeScalars.append(try escape())
      } else {
        try checkInString(scalar)
        text.unicodeScalars.append(scalar)
        advance()
      }
    }
    guard current == "\"" else { throw Problem(text: "a string is not closed") }
    advance()
    return text
  }

  /// `'...'`: no escapes.
  private mutating func literalString() throws(Problem) -> String {
    advance()
    var text = ""
    while let scalar = current, scalar != "'" {
      if scalar == "\n" { throw Problem(text: "a string is not closed on its line") }
      try checkInString(scalar)
      text.unicodeScalars.append(scalar)
      advance()
    }
    guard current == "'" else { throw Problem(text: "a string is not closed") }
    advance()
    return text
  }

  /// `"""..."""` (with escapes, and a backslash at the end of a line joining it to the
  /// next's first non-space) or `'''...'''`; a newline right after the opening is dropped.
  private mutating func multilineString(basic: Bool) throws(Problem) -> String {
    let delimiter = basic ? "\"\"\"" : "'''"
    advance(3)
    if current == "\r" && index + 1 < scalars.count && scalars[index + 1] == "\n" { advance() }
    if current == "\n" { advance() }
    var text = ""
    while let scalar = current {
      if starts(delimiter) {
        advance(3)
        // Up to two more quotes belong to the string (TOML allows them before the end).
        for _ in 0..<2 where current == delimiter.unicodeScalars.first {
          text.unicodeScalars.append(delimiter.unicodeScalars.first!)
          advance()
        }
        return text
      }
      if basic && scalar == "\\" {
        advance()
        if let next = current, next == " " || next == "\t" || next == "\r" || next == "\n" {
          while let space = current, space == " " || space == "\t" || space == "\r" || space == "\n" {
            advance()
          }
        } else {
          text.unicodeScalars.append(try escape())
        }
        continue
      }
      if scalar != "\n" && scalar != "\r" { try checkInString(scalar) }
      text.unicodeScalars.append(scalar)
      advance()
    }
    throw Problem(text: "a multi-line string is not closed")
  }

  private func checkInString(_ scalar: Unicode.Scalar) throws(Problem) {
    if (scalar.value < 0x20 && scalar != "\t") || scalar.value == 0x7F {
      throw Problem(
        text: "the control character U+\(String(scalar.value, radix: 16, uppercase: true)) in a string")
    }
  }

  /// After a backslash: `\b \t \n \f \r \" \\ \uXXXX \UXXXXXXXX`.
  private mutating func escape() throws(Problem) -> Unicode.Scalar {
    guard let scalar = current else { throw Problem(text: "a string is not closed") }
    advance()
    switch scalar {
    case "b": return "\u{08}"
    case "t": return "\t"
    case "n": return "\n"
    case "f": return "\u{0C}"
    case "r": return "\r"
    case "\"": return "\""
    case "\\": return "\\"
    case "u", "U":
      let count = scalar == "u" ? 4 : 8
      var hex = ""
      for _ in 0..<count {
        guard let digit = current, digit.properties.isASCIIHexDigit else {
          throw Problem(text: "\\\(scalar) must be followed by \(count) hexadecimal digits")
        }
        hex.unicodeScalars.append(digit)
        advance()
      }
      guard let value = UInt32(hex, radix: 16), let decoded = Unicode.Scalar(value) else {
        throw Problem(text: "\\\(scalar)\(hex) is not a Unicode scalar value")
      }
      return decoded
    default:
      throw Problem(text: "the escape \\\(scalar) is not TOML's")
    }
  }
}
