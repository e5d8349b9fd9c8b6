/// The line structure of a TOML document, checked before TOMLKit parses it
/// (``AgentConfiguration/checkStructure(_:file:)`` says why).
struct TOMLLineScanner {
  struct Problem: Error { var text: String }

  private let scalars: [Unicode.Scalar]
  private var index = 0
  /// The 1-based line of the scanner's position.
  private(set) var line = 1

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

  mutating func scanDocument() throws(Problem) {
    while current != nil {
      skipSpaces()
      switch current {
      case nil: return
      case "\n", "\r", "#": try endOfLine()
      case "[": try header()
      default: try keyValue()
      }
    }
  }

  /// `[a.b]` or `[[a.b]]`.
  private mutating func header() throws(Problem) {
    advance()
    let array = current == "["
    if array { advance() }
    skipSpaces()
    try keyPath()
    guard current == "]" else {
      throw Problem(text: "a table header must end with ']', not \(Self.describe(current))")
    }
    advance()
    if array {
      guard current == "]" else { throw Problem(text: "an array-of-tables header must end with ']]'") }
      advance()
    }
    try endOfLine()
  }

  /// `a.b = value`.
  private mutating func keyValue() throws(Problem) {
    try keyPath()
    guard current == "=" else {
      throw Problem(text: "expected '=' after a key, not \(Self.describe(current))")
    }
    advance()
    try value()
  }

  /// Dotted key parts, each bare or quoted, with spaces around the dots.
  private mutating func keyPath() throws(Problem) {
    while true {
      skipSpaces()
      switch current {
      case "\"": try basicString()
      case "'": try literalString()
      case let scalar? where Self.isBare(scalar):
        while let scalar = current, Self.isBare(scalar) { advance() }
      default: throw Problem(text: "expected a name, found \(Self.describe(current))")
      }
      skipSpaces()
      guard current == "." else { return }
      advance()
    }
  }

  /// A value up to the end of its line (arrays may span lines), then the end of the line.
  private mutating func value() throws(Problem) {
    skipSpaces()
    try singleValue(depth: 0)
    try endOfLine()
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
  private mutating func singleValue(depth: Int) throws(Problem) {
    guard depth < 32 else { throw Problem(text: "arrays or inline tables nested deeper than 32 levels") }
    switch current {
    case "\"" where starts("\"\"\""): try multilineString("\"\"\"")
    case "'" where starts("'''"): try multilineString("'''")
    case "\"": try basicString()
    case "'": try literalString()
    case "[":
      advance()
      try skipArraySpace()
      while current != "]" {
        try singleValue(depth: depth + 1)
        try skipArraySpace()
        if current == "," {
          advance()
          try skipArraySpace()
        } else if current != "]" {
          throw Problem(text: "expected ',' or ']' in an array, not \(Self.describe(current))")
        }
      }
      advance()
    case "{":
      advance()
      skipSpaces()
      while current != "}" {
        try keyPath()
        guard current == "=" else {
          throw Problem(text: "expected '=' in an inline table, not \(Self.describe(current))")
        }
        advance()
        skipSpaces()
        try singleValue(depth: depth + 1)
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
    default:
      var length = 0
      while let scalar = current,
        ![" ", "\t", "\r", "\n", ",", "]", "}", "#", "[", "{", "\"", "'", "="].contains(scalar)
      {
        guard scalar.isASCII, scalar.value >= 0x20, scalar.value != 0x7F else {
          throw Problem(text: "unexpected \(Self.describe(scalar)) in a value")
        }
        advance()
        length += 1
      }
      // Dates may hold one space between day and time: "1979-05-27 07:32:00".
      if length == 10, current == " ", index + 1 < scalars.count, ("0"..."9").contains(scalars[index + 1]) {
        advance()
        while let scalar = current, ![" ", "\t", "\r", "\n", ",", "]", "}", "#"].contains(scalar) {
          guard scalar.isASCII, scalar.value >= 0x20 else {
            throw Problem(text: "unexpected \(Self.describe(scalar))")
          }
          advance()
        }
      }
      guard length > 0 else { throw Problem(text: "expected a value, found \(Self.describe(current))") }
    }
  }

  private mutating func basicString() throws(Problem) {
    advance()
    while let scalar = current, scalar != "\"" {
      if scalar == "\n" { throw Problem(text: "a string is not closed on its line") }
      advance(scalar == "\\" ? 2 : 1)
    }
    guard current == "\"" else { throw Problem(text: "a string is not closed") }
    advance()
  }

  private mutating func literalString() throws(Problem) {
    advance()
    while let scalar = current, scalar != "'" {
      if scalar == "\n" { throw Problem(text: "a string is not closed on its line") }
      advance()
    }
    guard current == "'" else { throw Problem(text: "a string is not closed") }
    advance()
  }

  private mutating func multilineString(_ delimiter: String) throws(Problem) {
    advance(3)
    while current != nil {
      if starts(delimiter) {
        advance(3)
        // Up to two more quotes belong to the string (TOML allows them before the end).
        for _ in 0..<2 where current == delimiter.unicodeScalars.first { advance() }
        return
      }
      advance(delimiter == "\"\"\"" && current == "\\" ? 2 : 1)
    }
    throw Problem(text: "a multi-line string is not closed")
  }
}
