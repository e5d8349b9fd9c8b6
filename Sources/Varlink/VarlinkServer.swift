import CLinux
import Dispatch
import Glibc
import SimpleJSON

/// Who is at the other end of a connection, from the kernel (`SO_PEERCRED`,
/// `SO_PEERGROUPS`): what state-changing methods authorize against.
public struct PeerCredentials: Sendable, Equatable {
  public var uid: uid_t
  public var gid: gid_t
  public var pid: pid_t
  /// Supplementary groups (empty when the kernel cannot say).
  public var groups: [gid_t]

  public init(uid: uid_t, gid: gid_t, pid: pid_t, groups: [gid_t]) {
    self.uid = uid
    self.gid = gid
    self.pid = pid
    self.groups = groups
  }

  /// True when the peer's primary or a supplementary group is `group`.
  public func isMember(of group: gid_t) -> Bool { gid == group || groups.contains(group) }

  /// Reads the credentials of the peer of socket `fd`.
  public static func of(socket fd: Int32) -> PeerCredentials? {
    var uid: uid_t = 0
    var gid: gid_t = 0
    var pid: pid_t = 0
    guard clinux_peer_credentials(fd, &uid, &gid, &pid) == 0 else { return nil }
    var groups = [gid_t](repeating: 0, count: 256)
    let count = clinux_peer_groups(fd, &groups, Int32(groups.count))
    return PeerCredentials(
      uid: uid, gid: gid, pid: pid, groups: count > 0 ? Array(groups.prefix(Int(count))) : [])
  }
}

/// What `org.varlink.service.GetInfo` answers.
public struct VarlinkServiceInfo: Sendable {
  public var vendor: String
  public var product: String
  public var version: String
  public var url: String

  public init(vendor: String, product: String, version: String, url: String) {
    self.vendor = vendor
    self.product = product
    self.version = version
    self.url = url
  }
}

/// Answers a call later: for a handler that returned nil. Call it exactly once, from any
/// thread; the connection's later calls wait until then, so replies stay in order.
public struct VarlinkResponder: Sendable {
  let deliver: @Sendable (VarlinkReply) -> Void
  public func callAsFunction(_ reply: VarlinkReply) { deliver(reply) }
}

/// One interface a server serves: its IDL (served verbatim by GetInterfaceDescription), the
/// methods it declares, and the handler for calls to them. The handler returns the reply,
/// or nil when it will answer later through the responder.
public struct VarlinkInterface: Sendable {
  public var name: String
  public var description: String
  public var methods: Set<String>
  public var handler: @Sendable (VarlinkCall, PeerCredentials, VarlinkResponder) -> VarlinkReply?

  public init(
    name: String, description: String, methods: Set<String>,
    handler: @escaping @Sendable (VarlinkCall, PeerCredentials, VarlinkResponder) -> VarlinkReply?
  ) {
    self.name = name
    self.description = description
    self.methods = methods
    self.handler = handler
  }
}

/// Why the server could not start.
public struct VarlinkServerError: Error, Sendable, CustomStringConvertible {
  public var description: String
}

/// A Varlink server on a Unix stream socket, driven by Dispatch sources on one serial queue.
///
/// Every connection's calls are answered in order, on `queue`: the handlers run there, so
/// they may use state confined to that queue without locks. Many clients may be connected
/// at once; a malformed message, an oversized one, or a client that stops reading its
/// replies ends only that connection.
public final class VarlinkServer: @unchecked Sendable {
  // @unchecked: every mutable property is touched only on `queue`.
  public let path: String
  public let queue: DispatchQueue
  private let info: VarlinkServiceInfo
  private let interfaces: [String: VarlinkInterface]
  private var listenSource: DispatchSourceRead?
  private var connections: [Int32: Connection] = [:]
  /// Connections beyond this are accepted and closed at once.
  public let maximumConnections: Int

  public init(
    path: String, queue: DispatchQueue, info: VarlinkServiceInfo, interfaces: [VarlinkInterface],
    maximumConnections: Int = 128
  ) {
    self.path = path
    self.queue = queue
    self.info = info
    self.interfaces = Dictionary(interfaces.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
    self.maximumConnections = maximumConnections
  }

  /// Binds the socket (replacing a stale one), makes it connectable by every local user
  /// (authorization is per method, by peer credentials), and starts accepting.
  public func start() throws(VarlinkServerError) {
    let fd = socket(
      AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
    guard fd >= 0 else { throw VarlinkServerError(description: "socket(): \(errnoText())") }
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
      close(fd)
      throw VarlinkServerError(description: "socket path \(path) is too long")
    }
    withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes + [0]) }
    unlink(path)
    let bound = withUnsafePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
      }
    }
    guard bound == 0 else {
      let text = errnoText()
      close(fd)
      throw VarlinkServerError(description: "cannot bind \(path): \(text)")
    }
    chmod(path, 0o666)
    guard listen(fd, 64) == 0 else {
      let text = errnoText()
      close(fd)
      throw VarlinkServerError(description: "cannot listen on \(path): \(text)")
    }
    let source = DispatchSource.makeReadSource(fileDescriptor: fd, queue: queue)
    source.setEventHandler { [weak self] in self?.acceptConnections(fd) }
    source.setCancelHandler { close(fd) }
    listenSource = source
    source.resume()
  }

  /// Stops accepting, closes every connection and removes the socket. Call on `queue`.
  public func stop() {
    listenSource?.cancel()
    listenSource = nil
    for connection in connections.values { connection.close() }
    connections.removeAll()
    unlink(path)
  }

  /// The number of open connections (for tests and status). Call on `queue`.
  public var connectionCount: Int { connections.count }

  private func acceptConnections(_ listener: Int32) {
    while true {
      let fd = clinux_accept_nonblocking(listener)
      guard fd >= 0 else { return }
      guard connections.count < maximumConnections, let peer = PeerCredentials.of(socket: fd) else {
        Glibc.close(fd)
        continue
      }
      let connection = Connection(fd: fd, peer: peer, queue: queue) { [weak self] call, peer, responder in
        guard let self else { return .failure(.methodNotImplemented(call.method)) }
        return self.answer(call, peer: peer, responder: responder)
      } onClose: { [weak self] fd in
        self?.connections[fd] = nil
      }
      connections[fd] = connection
      connection.start()
    }
  }

  /// Routes a call: `org.varlink.service` is answered here, the rest by its interface.
  private func answer(_ call: VarlinkCall, peer: PeerCredentials, responder: VarlinkResponder)
    -> VarlinkReply?
  {
    if call.upgrade { return .failure(.methodNotImplemented(call.method)) }
    if call.interface == "org.varlink.service" {
      switch call.member {
      case "GetInfo":
        if let error = call.unexpectedParameter() { return .failure(error) }
        return .success([
          "vendor": .string(info.vendor), "product": .string(info.product), "version": .string(info.version),
          "url": .string(info.url),
          "interfaces": .array((["org.varlink.service"] + interfaces.keys.sorted()).map(JSONValue.string)),
        ])
      case "GetInterfaceDescription":
        if let error = call.unexpectedParameter(allowed: ["interface"]) { return .failure(error) }
        guard let name = call.parameters["interface"]?.stringValue else {
          return .failure(.invalidParameter("interface"))
        }
        if name == "org.varlink.service" {
          return .success(["description": .string(Self.serviceDescription)])
        }
        guard let interface = interfaces[name] else { return .failure(.interfaceNotFound(name)) }
        return .success(["description": .string(interface.description)])
      default:
        return .failure(.methodNotFound(call.method))
      }
    }
    guard let interface = interfaces[call.interface] else {
      return .failure(.interfaceNotFound(call.interface))
    }
    guard interface.methods.contains(call.member) else { return .failure(.methodNotFound(call.method)) }
    return interface.handler(call, peer, responder)
  }

  /// The IDL of `org.varlink.service`, as the reference implementations serve it.
  public static let serviceDescription = """
    # The Varlink Service Interface is provided by every varlink service. It
    # describes the service and the interfaces it implements.
    interface org.varlink.service

    # Get a list of all the interfaces a service provides and information
    # about the implementation.
    method GetInfo() -> (
      vendor: string,
      product: string,
      version: string,
      url: string,
      interfaces: []string
    )

    # Get the description of an interface that is implemented by this service.
    method GetInterfaceDescription(interface: string) -> (description: string)

    # The requested interface was not found.
    error InterfaceNotFound (interface: string)

    # The requested method was not found
    error MethodNotFound (method: string)

    # The interface defines the requested method, but the service does not
    # implement it.
    error MethodNotImplemented (method: string)

    # One of the passed parameters is invalid.
    error InvalidParameter (parameter: string)

    # Client is denied access
    error PermissionDenied ()

    # Method is expected to be called with 'more' set to true, but wasn't
    error ExpectedMore ()

    """
}

/// One client connection: reads calls, answers them in order, closes on protocol errors.
private final class Connection: @unchecked Sendable {
  // @unchecked: confined to the server's queue.
  let fd: Int32
  let peer: PeerCredentials
  let queue: DispatchQueue
  let handle: (VarlinkCall, PeerCredentials, VarlinkResponder) -> VarlinkReply?
  let onClose: (Int32) -> Void
  /// A deferred reply is awaited: later calls wait, so that replies stay in order.
  var awaitingReply = false
  var framer = MessageFramer()
  var readSource: DispatchSourceRead?
  var writeSource: DispatchSourceWrite?
  var pending: [UInt8] = []
  var closed = false
  /// A client that leaves this much of its replies unread is disconnected.
  static let maximumPending = 4 << 20

  init(
    fd: Int32, peer: PeerCredentials, queue: DispatchQueue,
    handle: @escaping (VarlinkCall, PeerCredentials, VarlinkResponder) -> VarlinkReply?,
    onClose: @escaping (Int32) -> Void
  ) {
    self.fd = fd
    self.peer = peer
    self.queue = queue
    self.handle = handle
    self.onClose = onClose
  }

  func start() {
    let source = DispatchSource.makeReadSource(fileDescriptor: fd, queue: queue)
    let fd = self.fd
    source.setEventHandler { [weak self] in self?.readAvailable() }
    source.setCancelHandler { Glibc.close(fd) }
    readSource = source
    source.resume()
  }

  func readAvailable() {
    var buffer = [UInt8](repeating: 0, count: 65_536)
    while !closed {
      let count = read(fd, &buffer, buffer.count)
      if count > 0 {
        framer.append(buffer[0..<count])
        processMessages()
        continue
      }
      if count < 0 && (errno == EAGAIN || errno == EINTR) { return }
      // End of stream or a read error: the client is gone.
      close()
      return
    }
  }

  func processMessages() {
    do {
      while !closed, !awaitingReply, let message = try framer.next() {
        let call = try VarlinkCall.parse(message)
        let queue = self.queue
        let oneway = call.oneway
        let connection = WeakConnection(self)
        let responder = VarlinkResponder { reply in
          queue.async { connection.value?.finishDeferred(reply, oneway: oneway) }
        }
        if let reply = handle(call, peer, responder) {
          if !call.oneway { send(reply.serialized) }
        } else {
          awaitingReply = true
        }
      }
    } catch {
      close()
    }
  }

  func finishDeferred(_ reply: VarlinkReply, oneway: Bool) {
    guard !closed else { return }
    awaitingReply = false
    if !oneway { send(reply.serialized) }
    processMessages()
  }

  func send(_ text: String) {
    pending.append(contentsOf: text.utf8)
    pending.append(0)
    guard pending.count <= Self.maximumPending else {
      close()
      return
    }
    flush()
  }

  func flush() {
    while !pending.isEmpty {
      let written = pending.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
      if written > 0 {
        pending.removeFirst(written)
      } else if written < 0 && errno == EINTR {
        continue
      } else if written < 0 && errno == EAGAIN {
        if writeSource == nil {
          let source = DispatchSource.makeWriteSource(fileDescriptor: fd, queue: queue)
          source.setEventHandler { [weak self] in self?.flush() }
          writeSource = source
          source.resume()
        }
        return
      } else {
        close()
        return
      }
    }
    writeSource?.cancel()
    writeSource = nil
  }

  func close() {
    guard !closed else { return }
    closed = true
    writeSource?.cancel()
    writeSource = nil
    readSource?.cancel()
    readSource = nil
    onClose(fd)
  }
}

/// A weak reference that can cross threads: the connection itself is confined to the
/// server's queue, and only dereferenced there.
private final class WeakConnection: @unchecked Sendable {
  weak var value: Connection?
  init(_ value: Connection) { self.value = value }
}

func errnoText() -> String { String(cString: strerror(errno)) }
