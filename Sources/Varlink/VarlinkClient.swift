import Glibc
import SimpleJSON

/// Why a call could not be made or answered.
public enum VarlinkClientError: Error, Sendable, CustomStringConvertible {
  /// No service listens at the path (absent socket, refused, no permission).
  case cannotConnect(path: String, reason: String)
  /// The connection broke or the reply was not Varlink.
  case broken(String)
  /// No reply within the timeout.
  case timedOut

  public var description: String {
    switch self {
    case .cannotConnect(let path, let reason): return "cannot connect to \(path): \(reason)"
    case .broken(let reason): return "the connection failed: \(reason)"
    case .timedOut: return "no reply in time"
    }
  }
}

/// A blocking Varlink client over a Unix socket: one call at a time, replies in order.
///
/// Every call has one deadline, for the whole call (its request written and its reply read),
/// not a timeout per read: a service that answers a byte at a time cannot hold the caller
/// longer than the timeout, and a reply larger than `maximumReplySize` ends the call.
public final class VarlinkClient {
  private let fd: Int32
  private let timeoutMilliseconds: Int64
  private var deadline: Int64 = 0
  private var framer: MessageFramer

  /// Connects to `path`; each call (or each `send` and `receive` on its own) must end within
  /// `timeoutSeconds`.
  public init(path: String, timeoutSeconds: Int = 30, maximumReplySize: Int = 16 << 20)
    throws(VarlinkClientError)
  {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw .cannotConnect(path: path, reason: String(cString: strerror(errno))) }
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
      close(fd)
      throw .cannotConnect(path: path, reason: "path too long")
    }
    withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes + [0]) }
    // A Unix socket's connect does not wait for the service to accept (it fails at once
    // when the backlog is full), so it needs no deadline of its own.
    let connected = withUnsafePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
      }
    }
    guard connected == 0 else {
      let reason = String(cString: strerror(errno))
      close(fd)
      throw .cannotConnect(path: path, reason: reason)
    }
    self.fd = fd
    self.timeoutMilliseconds = Int64(max(timeoutSeconds, 0)) * 1000
    self.framer = MessageFramer(maximumMessageSize: maximumReplySize)
  }

  deinit { close(fd) }

  /// Calls `method` and waits for its reply (an error reply is a `.failure`, not a throw).
  public func call(_ method: String, _ parameters: [String: JSONValue] = [:]) throws(VarlinkClientError)
    -> VarlinkReply
  {
    startDeadline()
    try write(VarlinkCall(method: method, parameters: parameters).serialized)
    return try read()
  }

  /// Calls `method` with `more` (a subscription): its first reply, and whether more follow
  /// (then ``next(waitingForever:)`` reads them).
  public func callMore(_ method: String, _ parameters: [String: JSONValue] = [:]) throws(VarlinkClientError)
    -> (reply: VarlinkReply, continues: Bool)
  {
    startDeadline()
    try write(VarlinkCall(method: method, parameters: parameters, more: true).serialized)
    return try readStreamed()
  }

  /// The next reply of a call made with `more`: within the timeout, or whenever it comes
  /// (`waitingForever`: a subscriber waits for changes as long as there are none).
  public func next(waitingForever: Bool = false) throws(VarlinkClientError) -> (
    reply: VarlinkReply, continues: Bool
  ) {
    if waitingForever { deadline = Int64.max } else { startDeadline() }
    return try readStreamed()
  }

  private func readStreamed() throws(VarlinkClientError) -> (reply: VarlinkReply, continues: Bool) {
    let message = try readMessage()
    do { return try VarlinkReply.parseStreamed(message) } catch { throw .broken(error.description) }
  }

  /// Sends raw text followed by NUL (for tests of malformed input).
  public func send(_ text: String) throws(VarlinkClientError) {
    startDeadline()
    try write(text)
  }

  /// Waits for the next reply.
  public func receive() throws(VarlinkClientError) -> VarlinkReply {
    startDeadline()
    return try read()
  }

  private func startDeadline() { deadline = Self.monotonicMilliseconds() + timeoutMilliseconds }

  private static func monotonicMilliseconds() -> Int64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Int64(now.tv_sec) * 1000 + Int64(now.tv_nsec) / 1_000_000
  }

  /// Waits until the socket is ready for `events`, or throws when the deadline passes.
  private func wait(for events: Int32) throws(VarlinkClientError) {
    while true {
      let remaining = deadline == Int64.max ? -1 : deadline - Self.monotonicMilliseconds()
      guard remaining != 0, remaining >= -1 else { throw .timedOut }
      var descriptor = pollfd(fd: fd, events: Int16(events), revents: 0)
      let ready = poll(&descriptor, 1, Int32(min(remaining, Int64(Int32.max))))
      if ready > 0 { return }
      if ready == 0 { throw .timedOut }
      if errno != EINTR { throw .broken(String(cString: strerror(errno))) }
    }
  }

  private func write(_ text: String) throws(VarlinkClientError) {
    var bytes = Array(text.utf8)
    bytes.append(0)
    var offset = 0
    while offset < bytes.count {
      try wait(for: Int32(POLLOUT))
      let written = bytes[offset...].withUnsafeBytes {
        Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT))
      }
      if written < 0 {
        if errno == EINTR || errno == EAGAIN { continue }
        throw .broken(String(cString: strerror(errno)))
      }
      offset += written
    }
  }

  private func read() throws(VarlinkClientError) -> VarlinkReply {
    let message = try readMessage()
    do { return try VarlinkReply.parse(message) } catch { throw .broken(error.description) }
  }

  private func readMessage() throws(VarlinkClientError) -> [UInt8] {
    var buffer = [UInt8](repeating: 0, count: 65_536)
    while true {
      do {
        if let message = try framer.next() { return message }
      } catch {
        throw .broken(error.description)
      }
      // Waiting for ever is for the next message: one begun must end within the timeout.
      if deadline == Int64.max && framer.hasPartialMessage { startDeadline() }
      try wait(for: Int32(POLLIN))
      let count = recv(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT))
      if count > 0 {
        framer.append(buffer[0..<count])
      } else if count == 0 {
        throw .broken("the service closed the connection")
      } else if errno != EINTR && errno != EAGAIN {
        throw .broken(String(cString: strerror(errno)))
      }
    }
  }
}
