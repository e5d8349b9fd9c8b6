/// An activation code (contract §2): 4 groups of 5 characters `[A-Z0-9]` joined by `-`;
/// lower case is accepted and upper-cased. A secret (rule C1): it is stored only in the
/// state file (0600) and shown only as its last 5 characters, its ``hint``.
public struct ActivationCode: Sendable, Equatable, Codable, CustomStringConvertible {
  /// The normalized code. Never log or print it.
  public let value: String

  /// Reads a code; surrounding white space is ignored. Nil when it has another shape.
  public init?(_ text: String) {
    let trimmed = text.trimmingWhitespace().uppercased()
    let groups = trimmed.split(separator: "-", omittingEmptySubsequences: false)
    guard groups.count == 4,
      groups.allSatisfy({
        $0.utf8.count == 5 && $0.utf8.allSatisfy { ($0 >= 65 && $0 <= 90) || ($0 >= 48 && $0 <= 57) }
      })
    else { return nil }
    value = trimmed
  }

  /// The last 5 characters: `LICENSE_CODE_HINT`, and all that status shows.
  public var hint: String { String(value.suffix(5)) }

  /// Never the code: `…` and the hint.
  public var description: String { "…" + hint }

  /// `text` with every occurrence of this code replaced by its ``description``: text from
  /// outside (a server's error message, a client program's diagnostics) may repeat the code
  /// it was sent, and what the agent keeps, logs and shows must not (rule C1). The code is
  /// recognised in any case, its groups joined by any run of `-`, `_` and spaces, or nothing.
  public func redacting(_ text: String) -> String {
    let code = Array(value.utf8).filter { $0 != UInt8(ascii: "-") }
    let bytes = Array(text.utf8)
    guard bytes.count >= code.count else { return text }
    var result: [UInt8] = []
    result.reserveCapacity(bytes.count)
    var index = 0
    var replaced = false
    while index < bytes.count {
      if let end = Self.match(code, in: bytes, at: index) {
        result.append(contentsOf: Array(description.utf8))
        index = end
        replaced = true
      } else {
        result.append(bytes[index])
        index += 1
      }
    }
    return replaced ? String(decoding: result, as: UTF8.self) : text
  }

  /// The end of `code` (20 characters in 4 groups) matched at `start`, or nil.
  private static func match(_ code: [UInt8], in bytes: [UInt8], at start: Int) -> Int? {
    var position = start
    for (offset, expected) in code.enumerated() {
      if offset > 0 && offset % 5 == 0 {
        while position < bytes.count,
          [UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: " ")].contains(bytes[position])
        {
          position += 1
        }
      }
      guard position < bytes.count else { return nil }
      var byte = bytes[position]
      if byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z") { byte -= 32 }
      guard byte == expected else { return nil }
      position += 1
    }
    return position
  }

  /// The violation for text that is not a code (refused locally, without any request).
  public static func formatViolation() -> RuleViolation {
    RuleViolation(
      rule: .C5, code: "invalid_code_format",
      message:
        "That is not an activation code: a code is 4 groups of 5 letters or digits joined by '-' (ABCDE-12345-FGHIJ-67890). Nothing was sent to the activation server; check the code and try again."
    )
  }

  public init(from decoder: Decoder) throws {
    let text = try decoder.singleValueContainer().decode(String.self)
    guard let code = ActivationCode(text) else {
      throw DecodingError.dataCorrupted(
        .init(codingPath: decoder.codingPath, debugDescription: "not an activation code"))
    }
    self = code
  }

  public func encode(to encoder: Encoder) throws {
    var container = encoder.singleValueContainer()
    try container.encode(value)
  }
}
