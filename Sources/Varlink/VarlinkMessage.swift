import SimpleJSON

/// One Varlink call (https://varlink.org): `{"method": "iface.Method", "parameters": {...}}`.
public struct VarlinkCall: Sendable, Equatable {
  /// The fully qualified method, `io.licenseagent.Agent.GetStatus`.
  public var method: String
  public var parameters: [String: JSONValue]
  /// The caller wants no reply.
  public var oneway: Bool
  /// The caller accepts several replies.
  public var more: Bool
  /// The caller asks to take over the connection (not supported here).
  public var upgrade: Bool

  public init(
    method: String, parameters: [String: JSONValue] = [:], oneway: Bool = false, more: Bool = false,
    upgrade: Bool = false
  ) {
    self.method = method
    self.parameters = parameters
    self.oneway = oneway
    self.more = more
    self.upgrade = upgrade
  }

  /// The interface part of ``method`` (`io.licenseagent.Agent`).
  public var interface: String {
    guard let dot = method.lastIndex(of: ".") else { return "" }
    return String(method[..<dot])
  }

  /// The member part of ``method`` (`GetStatus`).
  public var member: String {
    guard let dot = method.lastIndex(of: ".") else { return method }
    return String(method[method.index(after: dot)...])
  }

  /// Reads a call from one message. Unknown top-level fields are ignored, as the protocol
  /// asks; anything that is not a call object is a protocol error (the connection ends).
  public static func parse(_ message: [UInt8]) throws(VarlinkProtocolError) -> VarlinkCall {
    guard let value = JSONValue.parse(message), let object = value.objectValue else {
      throw VarlinkProtocolError("the message is not a JSON object")
    }
    guard let method = object["method"]?.stringValue, !method.isEmpty else {
      throw VarlinkProtocolError("the message has no \"method\" string")
    }
    var parameters: [String: JSONValue] = [:]
    switch object["parameters"] {
    case nil, .null?: break
    case .object(let members)?: parameters = members
    default: throw VarlinkProtocolError("\"parameters\" is not an object")
    }
    func flag(_ name: String) throws(VarlinkProtocolError) -> Bool {
      switch object[name] {
      case nil, .null?: return false
      case .bool(let value)?: return value
      default: throw VarlinkProtocolError("\"\(name)\" is not a boolean")
      }
    }
    return VarlinkCall(
      method: method, parameters: parameters, oneway: try flag("oneway"), more: try flag("more"),
      upgrade: try flag("upgrade"))
  }

  /// `InvalidParameter` naming the first parameter (in name order) that is not in `allowed`:
  /// in Varlink an unknown parameter is an error, not something to ignore.
  public func unexpectedParameter(allowed: Set<String> = []) -> VarlinkError? {
    parameters.keys.sorted().first { !allowed.contains($0) }.map(VarlinkError.invalidParameter)
  }

  /// The call as one message (without the NUL terminator).
  public var serialized: String {
    var object: [String: JSONValue] = ["method": .string(method)]
    if !parameters.isEmpty { object["parameters"] = .object(parameters) }
    if oneway { object["oneway"] = .bool(true) }
    if more { object["more"] = .bool(true) }
    if upgrade { object["upgrade"] = .bool(true) }
    return JSONValue.object(object).serialized
  }
}

/// A message that breaks the protocol itself: the server closes that connection.
public struct VarlinkProtocolError: Error, Equatable, Sendable, CustomStringConvertible {
  public var description: String
  public init(_ description: String) { self.description = description }
}

/// A Varlink error reply: a qualified name and its parameters.
public struct VarlinkError: Error, Equatable, Sendable, CustomStringConvertible {
  public var name: String
  public var parameters: [String: JSONValue]

  public init(_ name: String, _ parameters: [String: JSONValue] = [:]) {
    self.name = name
    self.parameters = parameters
  }

  public var description: String {
    parameters.isEmpty ? name : "\(name) \(JSONValue.object(parameters).serialized)"
  }

  // The errors of org.varlink.service.
  public static func interfaceNotFound(_ interface: String) -> VarlinkError {
    VarlinkError("org.varlink.service.InterfaceNotFound", ["interface": .string(interface)])
  }
  public static func methodNotFound(_ method: String) -> VarlinkError {
    VarlinkError("org.varlink.service.MethodNotFound", ["method": .string(method)])
  }
  public static func methodNotImplemented(_ method: String) -> VarlinkError {
    VarlinkError("org.varlink.service.MethodNotImplemented", ["method": .string(method)])
  }
  public static func invalidParameter(_ parameter: String) -> VarlinkError {
    VarlinkError("org.varlink.service.InvalidParameter", ["parameter": .string(parameter)])
  }
  public static let expectedMore = VarlinkError("org.varlink.service.ExpectedMore")
}

/// A reply message: `{"parameters": {...}}`, or `{"error": name, "parameters": {...}}`.
public enum VarlinkReply: Sendable, Equatable {
  case success([String: JSONValue])
  case failure(VarlinkError)

  public var serialized: String { serialized(continues: false) }

  /// The reply with `"continues": true` when more replies follow (a call made with `more`).
  public func serialized(continues: Bool) -> String {
    var object: [String: JSONValue]
    switch self {
    case .success(let parameters):
      object = ["parameters": .object(parameters)]
    case .failure(let error):
      object = ["error": .string(error.name), "parameters": .object(error.parameters)]
    }
    if continues { object["continues"] = .bool(true) }
    return JSONValue.object(object).serialized
  }

  /// Reads a reply to a call made with `more`: the reply, and whether more follow.
  public static func parseStreamed(_ message: [UInt8]) throws(VarlinkProtocolError) -> (
    reply: VarlinkReply, continues: Bool
  ) {
    let reply = try parse(message)
    let continues = JSONValue.parse(message)?.objectValue?["continues"]?.boolValue ?? false
    if continues, case .failure = reply { throw VarlinkProtocolError("an error reply says more follow") }
    return (reply, continues)
  }

  /// Reads a reply message (for clients).
  public static func parse(_ message: [UInt8]) throws(VarlinkProtocolError) -> VarlinkReply {
    guard let object = JSONValue.parse(message)?.objectValue else {
      throw VarlinkProtocolError("the reply is not a JSON object")
    }
    let parameters = object["parameters"]?.objectValue ?? [:]
    if let name = object["error"] {
      guard let name = name.stringValue else { throw VarlinkProtocolError("\"error\" is not a string") }
      return .failure(VarlinkError(name, parameters))
    }
    return .success(parameters)
  }
}

/// Splits a byte stream into NUL-terminated messages.
///
/// Taken messages are not shifted out of the buffer one by one (a stream of small calls
/// would move the whole buffer per message): a read offset advances, and the buffer is
/// compacted once what was taken is at least half of it. The search for the terminator
/// resumes where the previous one stopped, so a large message arriving in many reads is
/// scanned once.
public struct MessageFramer: Sendable {
  /// The largest message accepted; a larger one is a protocol error.
  public private(set) var maximumMessageSize: Int
  private var buffer: [UInt8] = []
  /// Where the untaken bytes start.
  private var start = 0
  /// Bytes from `start` already known to hold no NUL.
  private var scanned = 0
  /// Bytes searched for a NUL in all (tests check that nothing is searched twice).
  private(set) var bytesSearched = 0

  public init(maximumMessageSize: Int = 1 << 20) { self.maximumMessageSize = maximumMessageSize }

  /// Changes the limit (a connection's peer decides it, once known).
  public mutating func limit(to size: Int) { maximumMessageSize = size }

  /// Adds received bytes.
  public mutating func append(_ bytes: some Sequence<UInt8>) { buffer.append(contentsOf: bytes) }

  /// The next complete message, without its NUL; nil when none is complete yet.
  public mutating func next() throws(VarlinkProtocolError) -> [UInt8]? {
    guard let end = terminator() else {
      if bufferedCount > maximumMessageSize {
        throw VarlinkProtocolError("a message exceeds \(maximumMessageSize) bytes")
      }
      return nil
    }
    guard end - start <= maximumMessageSize else {
      throw VarlinkProtocolError("a message exceeds \(maximumMessageSize) bytes")
    }
    let message = Array(buffer[start..<end])
    start = end + 1
    scanned = 0
    if start == buffer.count {
      buffer.removeAll(keepingCapacity: buffer.capacity <= 1 << 16)
      start = 0
    } else if start >= buffer.count / 2 {
      buffer.removeSubrange(..<start)
      start = 0
    }
    return message
  }

  /// The index of the next message's NUL, searching only bytes not searched before: a
  /// message that arrives a byte at a time is scanned once in all, not once per byte.
  private mutating func terminator() -> Int? {
    let from = start + scanned
    if let end = buffer[from...].firstIndex(of: 0) {
      bytesSearched += end - from
      scanned = end - start
      return end
    }
    bytesSearched += buffer.count - from
    scanned = buffer.count - start
    return nil
  }

  /// True when a whole message is waiting, or bytes past the limit that ``next()`` refuses.
  /// Searches only the bytes that arrived since the last search.
  public var hasCompleteMessage: Bool {
    mutating get { terminator() != nil || bufferedCount > maximumMessageSize }
  }

  /// True when bytes of an unfinished message are waiting: bytes after the last NUL (calls
  /// that are complete and only wait for their turn do not count).
  public var hasPartialMessage: Bool { start < buffer.count && buffer.last != 0 }

  /// The bytes received and not yet taken as messages.
  public var bufferedCount: Int { buffer.count - start }

  /// Whether the buffer already holds more than one message may be, complete or not (a
  /// client that keeps sending while its earlier call waits for a deferred reply).
  public var exceedsLimit: Bool { bufferedCount > maximumMessageSize + 1 }
}
