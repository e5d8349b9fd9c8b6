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
public final class VarlinkClient {
  private let fd: Int32
  private var framer = MessageFramer(maximumMessageSize: 16 << 20)

  /// Connects to `path`; replies must come within `timeoutSeconds`.
  public init(path: String, timeoutSeconds: Int = 30) throws(VarlinkClientError) {
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
    var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    self.fd = fd
  }

  deinit { close(fd) }

  /// Calls `method` and waits for its reply (an error reply is a `.failure`, not a throw).
  public func call(_ method: String, _ parameters: [String: JSONValue] = [:]) throws(VarlinkClientError)
    -> VarlinkReply
  {
    try send(VarlinkCall(method: method, parameters: parameters).serialized)
    return try receive()
  }

  /// Sends raw text followed by NUL (for tests of malformed input).
  public func send(_ text: String) throws(VarlinkClientError) {
    var bytes = Array(text.utf8)
    bytes.append(0)
    var offset = 0
    while offset < bytes.count {
      let written = bytes[offset...].withUnsafeBytes {
        Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL))
      }
      if written < 0 {
        if errno == EINTR { continue }
        throw errno == EAGAIN ? .timedOut : .broken(String(cString: strerror(errno)))
      }
      offset += written
    }
  }

  /// Waits for the next reply.
  public func receive() throws(VarlinkClientError) -> VarlinkReply {
    var buffer = [UInt8](repeating: 0, count: 65_536)
    while true {
      do {
        if let message = try framer.next() { return try VarlinkReply.parse(message) }
      } catch {
        throw .broken(error.description)
      }
      let count = read(fd, &buffer, buffer.count)
      if count > 0 {
        framer.append(buffer[0..<count])
      } else if count == 0 {
        throw .broken("the service closed the connection")
      } else if errno == EINTR {
        continue
      } else {
        throw errno == EAGAIN ? .timedOut : .broken(String(cString: strerror(errno)))
      }
    }
  }
}
