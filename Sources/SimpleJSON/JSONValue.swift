/// A JSON value, for documents whose every field must be checked by hand (key headers and
/// claims, so that each defect gets its own reason; Varlink messages, whose parameters are
/// checked by name) and for writing JSON with a stable key order.
public enum JSONValue: Sendable, Equatable {
  case null
  case bool(Bool)
  case number(Double)
  case string(String)
  case array([JSONValue])
  case object([String: JSONValue])

  /// Parses a whole document (strict RFC 8259, ``JSONParser``); nil when it is not valid
  /// JSON.
  public static func parse(_ bytes: some Sequence<UInt8>) -> JSONValue? {
    if let parsed = bytes.withContiguousStorageIfAvailable({ JSONParser.parse($0) }) { return parsed }
    return Array(bytes).withUnsafeBufferPointer { JSONParser.parse($0) }
  }

  /// A short name of the value's JSON type, for messages ("a number", "a string").
  public var typeName: String {
    switch self {
    case .null: return "null"
    case .bool: return "a boolean"
    case .number: return "a number"
    case .string: return "a string"
    case .array: return "an array"
    case .object: return "an object"
    }
  }
}

extension JSONValue {
  /// The object's members, or nil for another type.
  public var objectValue: [String: JSONValue]? {
    if case .object(let members) = self { return members }
    return nil
  }

  /// The string, or nil for another type.
  public var stringValue: String? {
    if case .string(let text) = self { return text }
    return nil
  }

  /// The boolean, or nil for another type.
  public var boolValue: Bool? {
    if case .bool(let flag) = self { return flag }
    return nil
  }

  /// Compact JSON text, with object keys sorted (stable output for tests and logs).
  public var serialized: String {
    var out = ""
    write(to: &out)
    return out
  }

  private func write(to out: inout String) {
    switch self {
    case .null: out += "null"
    case .bool(let flag): out += flag ? "true" : "false"
    case .number(let value):
      if value.rounded() == value, abs(value) < 1e15 {
        out += String(Int64(value))
      } else {
        out += "\(value)"
      }
    case .string(let text): out += jsonString(text)
    case .array(let items):
      out += "["
      for (index, item) in items.enumerated() {
        if index > 0 { out += "," }
        item.write(to: &out)
      }
      out += "]"
    case .object(let members):
      out += "{"
      for (index, key) in members.keys.sorted().enumerated() {
        if index > 0 { out += "," }
        out += jsonString(key) + ":"
        members[key]!.write(to: &out)
      }
      out += "}"
    }
  }
}
