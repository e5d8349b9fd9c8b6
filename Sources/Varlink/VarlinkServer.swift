import CLinux
import Dispatch
import Glibc
import SimpleJSON
import StandardIO

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
/// thread; the connection's later calls wait until then, so replies stay in order. A call
/// made with `more` is answered through ``VarlinkServer/stream(_:to:continues:)`` instead,
/// on the server's executor, naming ``connection``.
public struct VarlinkResponder: Sendable {
  let deliver: @Sendable (VarlinkReply) -> Void
  /// The connection the call came on.
  public let connection: VarlinkConnectionID

  public init(
    connection: VarlinkConnectionID = VarlinkConnectionID(fd: -1, serial: 0),
    deliver: @escaping @Sendable (VarlinkReply) -> Void
  ) {
    self.connection = connection
    self.deliver = deliver
  }

  public func callAsFunction(_ reply: VarlinkReply) { deliver(reply) }
}

/// Names one connection of a server for as long as it is open (a later connection that gets
/// the same descriptor is another one).
public struct VarlinkConnectionID: Sendable, Hashable {
  public let fd: Int32
  public let serial: UInt64
  public init(fd: Int32, serial: UInt64) {
    self.fd = fd
    self.serial = serial
  }
}

/// What became of a reply streamed to a connection.
public enum VarlinkStreamResult: Sendable, Equatable {
  /// Sent, or queued behind what the client has not read yet.
  case sent
  /// The connection is closed (the client left, or it was dropped).
  case closed
  /// The client left more than ``VarlinkConnectionLimits/maximumStreamBacklog`` unread: what
  /// was queued is discarded but the reply being written, the overflow error follows it,
  /// and the connection is closed once the client has read that (or after the stall
  /// timeout).
  case dropped
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

/// What keeps one local user from taking the control socket away from the others, as
/// systemd's own Varlink servers do: a limit per UID below the total, capacity only
/// privileged peers may use, a deadline for a message that was begun, and a bound on what
/// is buffered for unprivileged peers in all.
public struct VarlinkConnectionLimits: Sendable, Equatable {
  /// Connections in all; beyond, a new one is closed at once.
  public var maximumConnections = 128
  /// Connections of one unprivileged UID.
  public var maximumPerUser = 16
  /// Of `maximumConnections`, how many only privileged peers may use.
  public var reservedForPrivileged = 32
  /// Of those, how many only root may use: a privileged peer that is not root (a member of
  /// the admin group, e.g. a misbehaving consumer) cannot take the socket from root.
  public var reservedForRoot = 8
  /// Connections of one privileged UID other than root.
  public var maximumPerPrivilegedUser = 32
  /// A message begun and not finished within this many milliseconds closes its connection.
  public var stallTimeoutMilliseconds = 10_000
  /// Bytes held for unprivileged peers in all (what they sent and have not finished, and
  /// replies they have not read); past it, the connection that holds the most is closed.
  public var maximumUnprivilegedBuffered = 4 << 20
  /// The largest message a privileged peer may send.
  public var maximumMessageSize = 1 << 20
  /// Bytes of streamed replies (a call made with `more`) a client may leave unread; past
  /// it, it is dropped with an error it can read (``VarlinkStreamResult/dropped``), so that a
  /// subscriber that stops reading never holds more than this, nor delays the others.
  public var maximumStreamBacklog = 256 << 10
  /// The largest message an unprivileged peer may send: far below a privileged peer's, and
  /// far above any call it may make (a key to check is about a kilobyte).
  public var maximumUnprivilegedMessageSize = 64 << 10
  /// Calls an unprivileged UID may make per second, over all its connections, `oneway`
  /// ones included, and how many it may make at once after a quiet while. Past them its
  /// connections are not read until the budget allows the next call: the client waits
  /// (its socket fills), and the server does no work for it meanwhile.
  public var unprivilegedCallsPerSecond = 20.0
  public var unprivilegedCallBurst = 40.0
  /// What one wake-up of a connection may do before the queue goes to others: bytes read,
  /// calls answered. The rest is done in a later turn.
  public var readBudgetBytes = 64 << 10
  public var callsPerWakeup = 16
  /// A read that completes no call costs an unprivileged UID this share of a call: a
  /// client that trickles bytes is read at a bounded rate too, not once per byte.
  public var unprivilegedReadCost = 0.125
  /// New connections an unprivileged UID may open per second, and at once after a quiet
  /// while; past them a connection is closed as soon as it is accepted (`rate_limit`), so
  /// that connecting and closing in a loop costs the server an accept and a close.
  public var unprivilegedConnectionsPerSecond = 10.0
  public var unprivilegedConnectionBurst = 20.0
  /// Connections accepted in one wake-up before the queue goes to others.
  public var acceptsPerWakeup = 16

  public init() {}
}

/// Why the server refused or closed a connection (other than the client closing it).
public enum VarlinkDropReason: String, Sendable, CaseIterable {
  /// Every connection not reserved for privileged peers is in use.
  case serverFull = "server_full"
  /// The peer's UID has `maximumPerUser` connections.
  case userLimit = "user_limit"
  /// A message was begun and not finished in time.
  case stalled
  /// What unprivileged peers have buffered went past the bound; this one held the most.
  case bufferLimit = "buffer_limit"
  /// A message that is not Varlink, or larger than a message may be.
  case protocolError = "protocol_error"
  /// The client left too much of its replies unread.
  case unreadReplies = "unread_replies"
  /// The peer's UID opened new connections faster than it may.
  case rateLimit = "rate_limit"
  /// A subscriber (a call made with `more`) left too much of its stream unread.
  case slowSubscriber = "slow_subscriber"
}

/// Why the server could not start.
public struct VarlinkServerError: Error, Sendable, CustomStringConvertible {
  public var description: String
}

/// A Varlink server on a Unix stream socket, driven by Dispatch sources on one serial queue.
///
/// An actor whose executor is that queue (``DispatchQueueExecutor``): connections, their
/// buffers and the limits are confined to it, and the compiler checks it. Every
/// connection's calls are answered in order, on the queue: the handlers run there, so an
/// owner that shares the executor (the agent) enters its own isolation with
/// `assumeIsolated`. Many clients may be connected at once; a malformed message, an
/// oversized one, or a client that stops reading its replies ends only that connection.
public actor VarlinkServer: DispatchQueueActor {
  public nonisolated let path: String
  public nonisolated let executor: DispatchQueueExecutor
  private let info: VarlinkServiceInfo
  private let interfaces: [String: VarlinkInterface]
  private var listenSource: DispatchSourceRead?
  private var connections: [Int32: Connection] = [:]
  /// Numbers connections, so that a late reply never reaches a newer connection that got
  /// the same file descriptor.
  private var connectionSerial: UInt64 = 0
  public nonisolated let limits: VarlinkConnectionLimits
  /// Peers that may use the reserved capacity and have no per-UID limit (root, admins).
  private let isPrivileged: @Sendable (PeerCredentials) -> Bool
  /// Told of every connection refused or closed by the server (on the queue).
  private let onDrop: @Sendable (VarlinkDropReason, PeerCredentials) -> Void
  /// The call budget of each unprivileged UID (``VarlinkConnectionLimits``).
  private var budgets: [uid_t: CallBudget] = [:]
  /// The budget of new connections of each unprivileged UID.
  private var connectionBudgets: [uid_t: CallBudget] = [:]
  /// Where every read goes (one buffer, not one allocated per read).
  private var readBuffer: [UInt8] = []
  /// More connections wait to be accepted in a later turn.
  private var acceptTurnQueued = false
  /// Told of every connection that closes, whatever the reason (on the queue).
  private var onClose: @Sendable (VarlinkConnectionID) -> Void = { _ in }

  public init(
    path: String, executor: DispatchQueueExecutor, info: VarlinkServiceInfo, interfaces: [VarlinkInterface],
    limits: VarlinkConnectionLimits = VarlinkConnectionLimits(),
    isPrivileged: @escaping @Sendable (PeerCredentials) -> Bool = { $0.uid == 0 },
    onDrop: @escaping @Sendable (VarlinkDropReason, PeerCredentials) -> Void = { _, _ in }
  ) {
    self.path = path
    self.executor = executor
    self.info = info
    self.interfaces = Dictionary(interfaces.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
    self.limits = limits
    self.isPrivileged = isPrivileged
    self.onDrop = onDrop
  }

  public init(
    path: String, queue: DispatchQueue, info: VarlinkServiceInfo, interfaces: [VarlinkInterface],
    limits: VarlinkConnectionLimits = VarlinkConnectionLimits(),
    isPrivileged: @escaping @Sendable (PeerCredentials) -> Bool = { $0.uid == 0 },
    onDrop: @escaping @Sendable (VarlinkDropReason, PeerCredentials) -> Void = { _, _ in }
  ) {
    self.init(
      path: path, executor: DispatchQueueExecutor(queue: queue), info: info, interfaces: interfaces,
      limits: limits, isPrivileged: isPrivileged, onDrop: onDrop)
  }

  /// Sets what is told of each connection that closes (before ``start()``): an owner that
  /// streams replies forgets its subscribers there.
  public func whenConnectionCloses(_ handler: @escaping @Sendable (VarlinkConnectionID) -> Void) {
    onClose = handler
  }

  /// Sends one reply of a call made with `more` on `connection` (from the server's executor,
  /// e.g. by an owner that shares it): `continues` while more follow. The last one (without
  /// `continues`) ends the call, and the connection's next calls are read. A client that
  /// leaves more than ``VarlinkConnectionLimits/maximumStreamBacklog`` unread is sent
  /// `overflow` (after the reply it is reading, if any) and closed: it never holds more.
  public func stream(
    _ reply: VarlinkReply, to connection: VarlinkConnectionID, continues: Bool, overflow: VarlinkError
  ) -> VarlinkStreamResult {
    stream(reply.serialized(continues: continues), to: connection, continues: continues, overflow: overflow)
  }

  /// ``stream(_:to:continues:overflow:)`` with the reply already serialized (once for
  /// every subscriber of the same change).
  public func stream(
    _ text: String, to id: VarlinkConnectionID, continues: Bool, overflow: VarlinkError
  ) -> VarlinkStreamResult {
    guard let connection = open(id.fd, id.serial), !connection.draining else { return .closed }
    if connection.pending.count + text.utf8.count + 1 > limits.maximumStreamBacklog {
      drain(connection, VarlinkReply.failure(overflow).serialized)
      return .dropped
    }
    if !continues {
      connection.awaitingReply = false
      connection.streaming = false
      send(text, to: connection)
      if !connection.closed { scheduleTurn(connection) }
    } else {
      connection.streaming = true
      send(text, to: connection)
      // A message begun on it must still be finished in time, stream or not.
      if !connection.closed { watchForStall(connection) }
    }
    // What unprivileged subscribers leave unread counts against their bound at once.
    if !connection.privileged && !connection.closed { enforceBufferBound() }
    return connection.closed ? .closed : .sent
  }

  /// Ends `connection`'s stream with `final`, after the reply being written (the rest queued
  /// is dropped), reads nothing more from it, and closes it once `final` is read, or once
  /// it has read nothing for ``drainTimeoutMilliseconds`` (each write that goes through
  /// starts that wait again).
  private func drain(_ connection: Connection, _ final: String) {
    if let end = connection.pending.firstIndex(of: 0) {
      connection.pending.removeSubrange((end + 1)...)
    }
    connection.pending.append(contentsOf: final.utf8)
    connection.pending.append(0)
    connection.draining = true
    if let timer = connection.pauseTimer {
      timer.cancel()
      connection.pauseTimer = nil
    } else if !connection.readSuspended {
      connection.readSource?.suspend()
      connection.readSuspended = true
    }
    armDrainTimer(connection)
    flush(connection)
  }

  /// How long a dropped subscriber may read nothing before it is closed without its error:
  /// one paused for a while (stopped, swapping) still gets to read why it was dropped.
  var drainTimeoutMilliseconds: Int { limits.stallTimeoutMilliseconds * 6 }

  private func armDrainTimer(_ connection: Connection) {
    connection.stallTimer?.cancel()
    let timer = DispatchSource.makeTimerSource(queue: queue)
    let (fd, serial) = (connection.fd, connection.serial)
    timer.setEventHandler { [weak self] in
      self?.assumeIsolated { server in
        server.open(fd, serial).map { server.close($0, reason: .slowSubscriber) }
      }
    }
    timer.schedule(deadline: .now() + .milliseconds(drainTimeoutMilliseconds))
    connection.stallTimer = timer
    timer.resume()
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
      Glibc.close(fd)
      throw VarlinkServerError(description: "socket path \(path) is too long")
    }
    withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes + [0]) }
    unlink(path)
    // The socket file is made 0666 by bind itself (under a umask that keeps read and write
    // for all), never by a chmod of its path afterwards, which would follow a symlink put
    // there in between.
    let previousMask = umask(0o111)
    let bound = withUnsafePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
      }
    }
    let bindError = errno
    umask(previousMask)
    guard bound == 0 else {
      let text = String(cString: strerror(bindError))
      Glibc.close(fd)
      throw VarlinkServerError(description: "cannot bind \(path): \(text)")
    }
    guard listen(fd, 128) == 0 else {
      let text = errnoText()
      Glibc.close(fd)
      throw VarlinkServerError(description: "cannot listen on \(path): \(text)")
    }
    let source = DispatchSource.makeReadSource(fileDescriptor: fd, queue: queue)
    source.setEventHandler { [weak self] in self?.assumeIsolated { $0.acceptConnections(fd) } }
    source.setCancelHandler { Glibc.close(fd) }
    listenSource = source
    source.resume()
  }

  /// Stops accepting, closes every connection and removes the socket.
  public func stop() {
    listenSource?.cancel()
    listenSource = nil
    let open = connections.values
    for connection in open { close(connection, reason: nil) }
    connections.removeAll()
    unlink(path)
  }

  /// The number of open connections (for tests and status).
  public var connectionCount: Int { connections.count }

  /// Accepts waiting connections, ``VarlinkConnectionLimits/acceptsPerWakeup`` at a time:
  /// the rest in a later turn, behind whatever else the queue has to do, so that clients
  /// connecting in a loop never hold it (issue 20: four users doing so delayed root's calls
  /// by up to 1.7 s).
  private func acceptConnections(_ listener: Int32) {
    for _ in 0..<limits.acceptsPerWakeup {
      let fd = clinux_accept_nonblocking(listener)
      guard fd >= 0 else { return }
      guard let peer = PeerCredentials.of(socket: fd) else {
        Glibc.close(fd)
        continue
      }
      let privileged = isPrivileged(peer)
      if let refusal = refusal(of: peer, privileged: privileged) {
        Glibc.close(fd)
        onDrop(refusal, peer)
        continue
      }
      connectionSerial += 1
      let connection = Connection(fd: fd, serial: connectionSerial, peer: peer, privileged: privileged)
      connection.framer.limit(
        to: privileged ? limits.maximumMessageSize : limits.maximumUnprivilegedMessageSize)
      connections[fd] = connection
      let source = DispatchSource.makeReadSource(fileDescriptor: fd, queue: queue)
      let serial = connectionSerial
      source.setEventHandler { [weak self] in
        self?.assumeIsolated { server in server.open(fd, serial).map(server.service) }
      }
      source.setCancelHandler { Glibc.close(fd) }
      connection.readSource = source
      source.resume()
    }
    guard !acceptTurnQueued else { return }
    acceptTurnQueued = true
    queue.async { [weak self] in
      self?.assumeIsolated { server in
        server.acceptTurnQueued = false
        if server.listenSource != nil { server.acceptConnections(listener) }
      }
    }
  }

  /// Why a new connection of `peer` is refused, or nil when it may stay.
  private func refusal(of peer: PeerCredentials, privileged: Bool) -> VarlinkDropReason? {
    if connections.count >= limits.maximumConnections { return .serverFull }
    if privileged {
      if peer.uid == 0 { return nil }
      if connections.count >= limits.maximumConnections - limits.reservedForRoot { return .serverFull }
      if connections.values.count(where: { $0.peer.uid == peer.uid }) >= limits.maximumPerPrivilegedUser {
        return .userLimit
      }
      return nil
    }
    if !take(
      1, from: &connectionBudgets, peer.uid, rate: limits.unprivilegedConnectionsPerSecond,
      burst: limits.unprivilegedConnectionBurst)
    {
      return .rateLimit
    }
    let unprivileged = connections.values.filter { !$0.privileged }
    if unprivileged.count >= limits.maximumConnections - limits.reservedForPrivileged { return .serverFull }
    if unprivileged.count(where: { $0.peer.uid == peer.uid }) >= limits.maximumPerUser { return .userLimit }
    return nil
  }

  /// Past the bound on what unprivileged peers hold in all, closes the connection that
  /// holds the most (never the privileged ones: their messages are bounded one by one).
  private func enforceBufferBound() {
    var held = connections.values.filter { !$0.privileged && !$0.closed }
    var total = held.reduce(0) { $0 + $1.bufferedBytes }
    while total > limits.maximumUnprivilegedBuffered,
      let largest = held.max(by: { $0.bufferedBytes < $1.bufferedBytes })
    {
      total -= largest.bufferedBytes
      held.removeAll { $0 === largest }
      // Mostly replies it left unread (a subscriber), or mostly input it did not finish.
      close(
        largest, reason: largest.pending.count > largest.framer.bufferedCount ? .unreadReplies : .bufferLimit)
    }
  }

  // MARK: - Connections

  /// One turn of a connection, when it is readable or its turn comes again: its buffered
  /// calls first, then at most one read of ``VarlinkConnectionLimits/readBudgetBytes``,
  /// at most ``VarlinkConnectionLimits/callsPerWakeup`` calls in all. What is left waits for
  /// a later turn, queued behind whatever else the queue has to do, so that no client, however
  /// fast it writes, holds the queue.
  private func service(_ connection: Connection) {
    guard !connection.closed, connection.pauseTimer == nil, !connection.draining else { return }
    var calls = limits.callsPerWakeup
    processMessages(connection, calls: &calls)
    // Replies this turn left unread count against what unprivileged peers may hold.
    enforceBufferBound()
    guard !connection.closed, connection.pauseTimer == nil else { return }
    if calls == 0 {
      scheduleTurn(connection)
      return
    }
    // Reading costs too: an unprivileged peer whose budget is spent is not read at all.
    guard hasBudget(connection) else {
      enforceBufferBound()
      return
    }
    if readBuffer.count != limits.readBudgetBytes {
      readBuffer = [UInt8](repeating: 0, count: limits.readBudgetBytes)
    }
    let count = readBuffer.withUnsafeMutableBytes { read(connection.fd, $0.baseAddress, $0.count) }
    if count > 0 {
      connection.framer.append(readBuffer[0..<count])
      if connection.framer.exceedsLimit {
        close(connection, reason: .protocolError)
        return
      }
      let before = calls
      processMessages(connection, calls: &calls)
      if connection.closed { return }
      // A read that completed no call still costs a share of one.
      if calls == before && !connection.privileged { charge(connection, limits.unprivilegedReadCost) }
      enforceBufferBound()
      // More may be waiting, in the socket or in the framer: another turn, later.
      if !connection.closed, connection.pauseTimer == nil, count == readBuffer.count || calls == 0 {
        scheduleTurn(connection)
      }
      return
    }
    if count < 0 && (errno == EAGAIN || errno == EINTR) { return }
    // End of stream or a read error: the client is gone.
    close(connection, reason: nil)
  }

  /// Queues another turn of `connection` (once: a turn already queued is enough).
  private func scheduleTurn(_ connection: Connection) {
    guard !connection.turnQueued else { return }
    connection.turnQueued = true
    let (fd, serial) = (connection.fd, connection.serial)
    queue.async { [weak self] in
      self?.assumeIsolated { server in
        guard let connection = server.open(fd, serial) else { return }
        connection.turnQueued = false
        server.service(connection)
      }
    }
  }

  /// Whether `connection`'s UID may be read now; when not, the connection is paused until
  /// its budget allows one call.
  private func hasBudget(_ connection: Connection) -> Bool {
    guard !connection.privileged else { return true }
    let tokens = refilled(
      &budgets, connection.peer.uid, rate: limits.unprivilegedCallsPerSecond,
      burst: limits.unprivilegedCallBurst)
    guard tokens < 1 else { return true }
    pauseUntilBudget(connection, tokens: tokens)
    return false
  }

  /// A message that broke the protocol (oversized, not Varlink) costs its unprivileged UID
  /// its whole burst: its other connections are not read for a while, so that a client
  /// sending oversized messages on one new connection after another makes the server read
  /// little (each costs one read, then nothing until the budget is back). A read that
  /// completed no call costs a share of one.
  private func charge(_ connection: Connection, _ cost: Double) {
    guard !connection.privileged else { return }
    _ = refilled(
      &budgets, connection.peer.uid, rate: limits.unprivilegedCallsPerSecond,
      burst: limits.unprivilegedCallBurst)
    budgets[connection.peer.uid]?.tokens -= cost
  }

  /// Takes one call from the budget of `connection`'s UID; false (and the connection
  /// paused until the budget allows a call) when there is none.
  private func takeCall(_ connection: Connection) -> Bool {
    guard !connection.privileged else { return true }
    if take(
      1, from: &budgets, connection.peer.uid, rate: limits.unprivilegedCallsPerSecond,
      burst: limits.unprivilegedCallBurst)
    {
      return true
    }
    pauseUntilBudget(connection, tokens: budgets[connection.peer.uid]?.tokens ?? 0)
    return false
  }

  private func pauseUntilBudget(_ connection: Connection, tokens: Double) {
    let wait = Int(((1 - tokens) / limits.unprivilegedCallsPerSecond * 1000).rounded(.up))
    pause(connection, milliseconds: max(wait, 1))
  }

  /// The tokens of `uid` in `budgets`, refilled to now (a new UID starts with its burst).
  private func refilled(_ budgets: inout [uid_t: CallBudget], _ uid: uid_t, rate: Double, burst: Double)
    -> Double
  {
    let now = MonotonicClock.milliseconds()
    var budget = budgets[uid] ?? CallBudget(tokens: burst, at: now)
    budget.refill(at: now, rate: rate, burst: burst)
    budgets[uid] = budget
    // The UIDs kept are bounded: those back at their burst carry nothing worth keeping.
    if budgets.count > 4096 { budgets = budgets.filter { $0.value.tokens < burst } }
    return budget.tokens
  }

  /// Takes `cost` from `uid`'s budget when it has that much; false otherwise.
  private func take(
    _ cost: Double, from budgets: inout [uid_t: CallBudget], _ uid: uid_t, rate: Double, burst: Double
  )
    -> Bool
  {
    guard refilled(&budgets, uid, rate: rate, burst: burst) >= cost else { return false }
    budgets[uid]?.tokens -= cost
    return true
  }

  /// Stops reading `connection` for `milliseconds`: the kernel holds what it sends, and its
  /// writes block once the socket is full.
  private func pause(_ connection: Connection, milliseconds: Int) {
    guard connection.pauseTimer == nil, !connection.draining else { return }
    connection.readSource?.suspend()
    connection.readSuspended = true
    let timer = DispatchSource.makeTimerSource(queue: queue)
    let (fd, serial) = (connection.fd, connection.serial)
    timer.setEventHandler { [weak self] in
      self?.assumeIsolated { server in
        guard let connection = server.open(fd, serial) else { return }
        server.unpause(connection)
        server.service(connection)
      }
    }
    timer.schedule(deadline: .now() + .milliseconds(milliseconds))
    connection.pauseTimer = timer
    timer.resume()
  }

  private func unpause(_ connection: Connection) {
    guard let timer = connection.pauseTimer else { return }
    timer.cancel()
    connection.pauseTimer = nil
    connection.readSource?.resume()
    connection.readSuspended = false
  }

  private func processMessages(_ connection: Connection, calls: inout Int) {
    do {
      while calls > 0, !connection.closed, !connection.awaitingReply, connection.framer.hasCompleteMessage {
        guard takeCall(connection) else { break }
        guard let message = try connection.framer.next() else { break }
        calls -= 1
        let call = try VarlinkCall.parse(message)
        let queue = self.queue
        let oneway = call.oneway
        let (fd, serial) = (connection.fd, connection.serial)
        let responder = VarlinkResponder(connection: VarlinkConnectionID(fd: fd, serial: serial)) {
          [weak self] reply in
          let server = self
          queue.async { server?.assumeIsolated { $0.finishDeferred(fd, serial, reply, oneway: oneway) } }
        }
        if let reply = answer(call, peer: connection.peer, responder: responder) {
          if !call.oneway { send(reply.serialized, to: connection) }
        } else {
          connection.awaitingReply = true
        }
      }
    } catch {
      close(connection, reason: .protocolError)
      return
    }
    watchForStall(connection)
  }

  /// A begun message must be finished in time; while calls wait for a deferred reply the
  /// client is not the one stalling.
  private func watchForStall(_ connection: Connection) {
    guard !connection.draining else { return }
    // A stream's connection answers nothing more, but a message begun on it is held to the
    // same deadline (a subscriber cannot keep a half-sent call for ever).
    guard !connection.closed, connection.framer.hasPartialMessage,
      !connection.awaitingReply || connection.streaming
    else {
      connection.stallTimer?.cancel()
      connection.stallTimer = nil
      return
    }
    guard connection.stallTimer == nil else { return }
    let timer = DispatchSource.makeTimerSource(queue: queue)
    let (fd, serial) = (connection.fd, connection.serial)
    timer.setEventHandler { [weak self] in
      self?.assumeIsolated { server in server.open(fd, serial).map { server.close($0, reason: .stalled) } }
    }
    timer.schedule(deadline: .now() + .milliseconds(limits.stallTimeoutMilliseconds))
    connection.stallTimer = timer
    timer.resume()
  }

  /// The connection a Dispatch handler or a deferred reply is for, while it is open: the
  /// handlers name it by descriptor and serial, so that nothing confined to the server
  /// crosses into them.
  private func open(_ fd: Int32, _ serial: UInt64) -> Connection? {
    guard let connection = connections[fd], connection.serial == serial, !connection.closed else {
      return nil
    }
    return connection
  }

  private func finishDeferred(_ fd: Int32, _ serial: UInt64, _ reply: VarlinkReply, oneway: Bool) {
    guard let connection = open(fd, serial) else { return }
    connection.awaitingReply = false
    if !oneway { send(reply.serialized, to: connection) }
    // The calls that waited behind it, in a turn of their own.
    if !connection.closed { scheduleTurn(connection) }
  }

  private func send(_ text: String, to connection: Connection) {
    connection.pending.append(contentsOf: text.utf8)
    connection.pending.append(0)
    guard connection.pending.count <= Connection.maximumPending else {
      close(connection, reason: .unreadReplies)
      return
    }
    flush(connection)
  }

  private func flush(_ connection: Connection) {
    while !connection.pending.isEmpty {
      let written = connection.pending.withUnsafeBytes { write(connection.fd, $0.baseAddress, $0.count) }
      if written > 0 {
        connection.pending.removeFirst(written)
        // A dropped subscriber that reads is given the time to read its error.
        if connection.draining && !connection.pending.isEmpty { armDrainTimer(connection) }
      } else if written < 0 && errno == EINTR {
        continue
      } else if written < 0 && errno == EAGAIN {
        if connection.writeSource == nil {
          let source = DispatchSource.makeWriteSource(fileDescriptor: connection.fd, queue: queue)
          let (fd, serial) = (connection.fd, connection.serial)
          source.setEventHandler { [weak self] in
            self?.assumeIsolated { server in server.open(fd, serial).map(server.flush) }
          }
          connection.writeSource = source
          source.resume()
        }
        return
      } else {
        close(connection, reason: nil)
        return
      }
    }
    connection.writeSource?.cancel()
    connection.writeSource = nil
    if connection.draining { close(connection, reason: .slowSubscriber) }
  }

  /// Closes a connection; `reason` when the server ends it (nil: the client left).
  private func close(_ connection: Connection, reason: VarlinkDropReason?) {
    guard !connection.closed else { return }
    connection.closed = true
    if reason == .protocolError { charge(connection, limits.unprivilegedCallBurst) }
    connection.stallTimer?.cancel()
    connection.stallTimer = nil
    connection.writeSource?.cancel()
    connection.writeSource = nil
    // A suspended source is resumed first: its cancellation (which closes the descriptor)
    // runs only once it is not suspended.
    connection.pauseTimer?.cancel()
    connection.pauseTimer = nil
    if connection.readSuspended {
      connection.readSource?.resume()
      connection.readSuspended = false
    }
    connection.readSource?.cancel()
    connection.readSource = nil
    if connections[connection.fd] === connection { connections[connection.fd] = nil }
    if let reason { onDrop(reason, connection.peer) }
    onClose(VarlinkConnectionID(fd: connection.fd, serial: connection.serial))
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

/// What the server holds for one client connection (confined to the server's actor, which
/// reads its calls, answers them in order and closes it on protocol errors).
private final class Connection {
  let fd: Int32
  let serial: UInt64
  let peer: PeerCredentials
  let privileged: Bool
  /// Armed while a message is begun and not finished: its deadline runs from its first byte.
  var stallTimer: DispatchSourceTimer?
  /// A deferred reply is awaited: later calls wait, so that replies stay in order.
  var awaitingReply = false
  var framer = MessageFramer()
  var readSource: DispatchSourceRead?
  var writeSource: DispatchSourceWrite?
  /// Armed while the peer's call budget is spent: the read source is suspended meanwhile.
  var pauseTimer: DispatchSourceTimer?
  /// Another turn is queued (``VarlinkServer/service(_:)``).
  var turnQueued = false
  var pending: [UInt8] = []
  var closed = false
  /// The read source is suspended (a pause, or draining).
  var readSuspended = false
  /// Dropped as a slow subscriber: the last replies are being written, then it closes.
  var draining = false
  /// A call made with `more` is being answered (``VarlinkServer/stream(_:to:continues:overflow:)``).
  var streaming = false
  /// A client that leaves this much of its replies unread is disconnected.
  static let maximumPending = 4 << 20

  init(fd: Int32, serial: UInt64, peer: PeerCredentials, privileged: Bool) {
    self.fd = fd
    self.serial = serial
    self.peer = peer
    self.privileged = privileged
  }

  /// What this connection holds: received bytes not yet taken, replies not yet sent.
  var bufferedBytes: Int { framer.bufferedCount + pending.count }
}

/// An unprivileged UID's calls: a token bucket refilled at a steady rate.
private struct CallBudget {
  var tokens: Double
  var at: Int64

  mutating func refill(at now: Int64, rate: Double, burst: Double) {
    tokens = min(burst, tokens + Double(max(now - at, 0)) / 1000 * rate)
    at = now
  }
}
