import ControlInterface
import Dispatch
import Glibc
import LicenseCore
import Logging
import SimpleJSON
import StandardIO
import SystemClock
import Varlink

/// What the control socket reads of the agent without touching the agent's queue: the
/// state and rules as of the last change, published by the agent after each one.
struct ControlView: Sendable {
  var state: LicenseState
  var engine: LicenseEngine
  var startedAt: Timestamp
  var adminGroup: String
  var adminGroupID: gid_t?
}

/// The control socket's half of the agent, on a queue of its own.
///
/// The licensing timeline (the expiry timer, the clock watch, the watchdog, every decision)
/// runs on the agent's queue; control traffic runs here, with the Varlink server, on a
/// queue of its own. Whatever any local user sends (calls back to back on one
/// connection without reading, refused calls, large messages) is read, parsed, budgeted
/// and answered here: what only reads (`GetStatus`, `CheckKey`) is answered from the
/// published ``ControlView``, refusals are decided here, and only the calls of root and
/// the admin group (their changes, and their `GetStatus`, which so sees the agent's work
/// in order) reach the agent's queue, one at a time. So no
/// client can delay a promotion or the watchdog (issue 20: one unprivileged connection
/// delayed a promotion by 15 s and the watchdog by 71 s).
actor ControlPlane: DispatchQueueActor {
  nonisolated let executor = DispatchQueueExecutor(
    queue: DispatchQueue(label: "license-agent.control", qos: Agent.queueQoS))
  /// Published by the agent after every change (``publish(_:)``).
  private var view: ControlView
  private let clock: WallClock
  private let logger: Logger
  private let version: String
  /// Hands a state-changing call of a privileged peer to the agent, which answers it.
  private let forward: @Sendable (VarlinkCall, PeerCredentials, VarlinkResponder, Blocklist?) -> Void
  private var refusals = RefusalLog()
  /// Monitor's subscribers (N1), by connection: each counts the replies it was sent.
  private var subscribers: [VarlinkConnectionID: Subscriber] = [:]
  /// The server that streams to them (it shares this executor).
  private var server: VarlinkServer?

  /// A subscriber counts the replies it was sent (its sequence).
  struct Subscriber {
    var sequence = 0
  }

  init(
    view: ControlView, clock: WallClock, logger: Logger, version: String,
    forward: @escaping @Sendable (VarlinkCall, PeerCredentials, VarlinkResponder, Blocklist?) -> Void
  ) {
    self.view = view
    self.clock = clock
    self.logger = logger
    self.version = version
    self.forward = forward
  }

  /// The agent's state as of its last change: queued behind what the control queue does
  /// now, so that a reply sent after a change (queued after this) finds it. No lock: the
  /// view is this actor's, reached only on its queue.
  nonisolated func publish(_ view: ControlView, changes: [DurableChange] = []) {
    queue.async {
      self.assumeIsolated { plane in
        plane.view = view
        plane.deliver(changes)
      }
    }
  }

  /// The server the subscribers are on (set once, before it starts).
  func attach(_ server: VarlinkServer) { self.server = server }

  /// How many subscribers there are (tests, metrics).
  var subscriberCount: Int { subscribers.count }

  /// A subscriber's connection closed.
  func forget(_ connection: VarlinkConnectionID) { subscribers[connection] = nil }

  /// N1: each change, in order, to every subscriber, with the status after it: built and
  /// serialized once for all. A subscriber that left too much unread is dropped (the server
  /// sends it SubscriberDropped); none is waited for.
  private func deliver(_ changes: [DurableChange]) {
    guard !changes.isEmpty, !subscribers.isEmpty, let server else { return }
    let status = JSONValue.object(varlinkParameters(currentStatus())).serialized
    let overflow = dropped()
    for change in changes {
      let event =
        change.journalObject.map { JSONValue.object($0.mapValues(JSONValue.string)).serialized } ?? "null"
      for (id, var subscriber) in subscribers {
        subscriber.sequence += 1
        let text =
          "{\"continues\":true,\"parameters\":{\"event\":\(event),\"sequence\":\(subscriber.sequence),\"status\":\(status)}}"
        let result = server.assumeIsolated {
          $0.stream(text, to: id, continues: true, overflow: overflow)
        }
        // Closed or dropped: the server logs a drop (rate-limited per user) when it closes it.
        subscribers[id] = result == .sent ? subscriber : nil
      }
    }
  }

  private func dropped() -> VarlinkError {
    let limit = server?.limits.maximumStreamBacklog ?? 0
    return VarlinkError(
      AgentInterface.subscriberDropped,
      [
        "message": .string(
          "This subscriber left more than \(limit / 1024) KiB of changes unread and is disconnected: what it had not read was not all sent, and nothing after it will be. Reconnect and call Monitor again: its first reply is the status, which is the truth; then read replies as they come."
        ),
        "backlog": .number(Double(limit)),
      ])
  }

  private func currentStatus() -> StatusReply {
    StatusBuilder.build(
      state: view.state, engine: view.engine, now: clock.now(), version: version, startedAt: view.startedAt)
  }

  /// Monitor (N1): any local user, within its connection and call budgets. The first reply
  /// is the status as published now; the changes published after it follow.
  private func monitor(_ call: VarlinkCall, peer: PeerCredentials, respond: VarlinkResponder) -> VarlinkReply?
  {
    guard call.more else { return .failure(.expectedMore) }
    let request: MonitorRequest
    switch MonitorRequest.decode(call.parameters) {
    case .failure(let invalid): return .failure(.invalidParameter(invalid.name))
    case .success(let decoded): request = decoded
    }
    // A consumer's name is checked as Confirm checks it; it confirms nothing by itself.
    if let name = request.consumer, ConsumerName(name) == nil {
      return .failure(ControlEndpoint.error(ConsumerName.violation(name)))
    }
    guard let server else { return .failure(.methodNotImplemented(call.method)) }
    let first = VarlinkReply.success(
      ["sequence": .number(0), "status": .object(varlinkParameters(currentStatus()))])
    let subscriber = Subscriber()
    let overflow = dropped()
    let result = server.assumeIsolated {
      $0.stream(first, to: respond.connection, continues: true, overflow: overflow)
    }
    if result == .sent { subscribers[respond.connection] = subscriber }
    return nil
  }

  /// Root, the agent's own user, and members of the admin group.
  func isAdmin(_ peer: PeerCredentials) -> Bool { Self.isAdmin(peer, adminGroupID: view.adminGroupID) }

  static func isAdmin(_ peer: PeerCredentials, adminGroupID: gid_t?) -> Bool {
    peer.uid == 0 || peer.uid == getuid() || (adminGroupID.map(peer.isMember) ?? false)
  }

  /// Answers one call of `io.licenseagent.Agent` (on this queue); nil when `respond` will.
  func handle(_ call: VarlinkCall, peer: PeerCredentials, respond: VarlinkResponder) -> VarlinkReply? {
    guard let method = AgentMethod(rawValue: call.member) else {
      return .failure(.methodNotFound(call.method))
    }
    // Monitor is this queue's, whoever calls: its replies come from the published view.
    if method == .monitor { return monitor(call, peer: peer, respond: respond) }
    // Root's and the admin group's calls are the agent's, in order with its work (a status
    // after a change, or after an expiry, sees what it did).
    if isAdmin(peer) {
      // B1: a blocklist (up to 1 MiB) is read and verified here, so that the agent's queue,
      // which keeps the timeline, only merges it; a list refused never reaches it.
      if method == .addBlocklist, case .success(let request) = AddBlocklistRequest.decode(call.parameters) {
        switch view.engine.verifiedBlocklist(request.blocklist) {
        case .failure(let violation): return .failure(ControlEndpoint.error(violation))
        case .success(let list):
          forward(call, peer, respond, list)
          return nil
        }
      }
      forward(call, peer, respond, nil)
      return nil
    }
    guard !method.changesState else { return denied(peer, call.member) }
    // Other users' reads, here, from the last published state.
    let now = clock.now()
    switch method {
    case .getStatus:
      if case .failure(let invalid) = GetStatusRequest.decode(call.parameters) {
        return .failure(.invalidParameter(invalid.name))
      }
      return .success(
        varlinkParameters(
          StatusBuilder.build(
            state: view.state, engine: view.engine, now: now, version: version, startedAt: view.startedAt)))
    case .checkKey:
      switch KeyRequest.decode(call.parameters) {
      case .failure(let invalid): return .failure(.invalidParameter(invalid.name))
      case .success(let request):
        return ControlEndpoint.checkKey(request, engine: view.engine, state: view.state, now: now)
      }
    case .addKey, .removeReserve, .activate, .reportUsage, .confirm, .monitor, .addBlocklist:
      return denied(peer, call.member)
    }
  }

  private func denied(_ peer: PeerCredentials, _ method: String) -> VarlinkReply {
    let group = view.adminGroup
    log(
      .denied, peer, "State change refused: caller is not an admin",
      metadata: ["method": "\(method)"], level: .notice)
    return .failure(ControlEndpoint.permissionDenied(method, adminGroup: group))
  }

  /// A connection the control server refused or closed.
  func connectionDropped(_ reason: VarlinkDropReason, peer: PeerCredentials) {
    let what: String
    switch reason {
    case .serverFull:
      what = "Control connection refused: every connection open to unprivileged users is in use"
    case .userLimit: what = "Control connection refused: this user has too many connections open"
    case .stalled: what = "Control connection closed: a message was begun and not finished in time"
    case .bufferLimit: what = "Control connection closed: unprivileged clients held too much unfinished input"
    case .protocolError:
      what = "Control connection closed: the client did not speak Varlink, or sent an oversized message"
    case .unreadReplies: what = "Control connection closed: the client left too many replies unread"
    case .rateLimit: what = "Control connection refused: this user opens connections faster than it may"
    case .slowSubscriber:
      what = "Control connection closed: a Monitor subscriber left too many changes unread"
    }
    log(.dropped(reason), peer, what, metadata: ["reason": "\(reason.rawValue)"], level: .warning)
  }

  /// At most one line per minute for each kind of refusal and each UID, saying how many
  /// were not logged since the previous one; and, a minute after the last line, one more
  /// with the count of those that followed it, so that a flood that stops is counted too.
  /// A flood of refusals never floods the journal, whose rate limit would then drop the
  /// agent's own events.
  private func log(
    _ kind: RefusalKind, _ peer: PeerCredentials, _ message: String, metadata: Logger.Metadata,
    level: Logger.Level
  ) {
    let key = RefusalLog.Key(kind: kind, uid: peer.uid)
    var fields = metadata
    fields["peer_uid"] = "\(peer.uid)"
    fields["peer_pid"] = "\(peer.pid)"
    switch refusals.admit(key, now: MonotonicClock.milliseconds()) {
    case .log(let unlogged):
      fields["not_logged_since_last"] = "\(unlogged)"
      logger.log(level: level, "\(message)", metadata: fields)
    case .suppressed(let firstSinceLine):
      guard firstSinceLine else { return }
      let delay = DispatchTimeInterval.milliseconds(Int(RefusalLog.intervalMilliseconds))
      queue.asyncAfter(deadline: .now() + delay) { [weak self] in
        self?.assumeIsolated { $0.flush(key, message: message, level: level, metadata: metadata) }
      }
    }
  }

  private func flush(_ key: RefusalLog.Key, message: String, level: Logger.Level, metadata: Logger.Metadata) {
    guard let count = refusals.takeSuppressed(key, now: MonotonicClock.milliseconds()), count > 0 else {
      return
    }
    var fields = metadata
    fields["peer_uid"] = "\(key.uid)"
    fields["not_logged_since_last"] = "\(count)"
    logger.log(
      level: level, "\(message) (\(count) more from this user in the last minute were not logged)",
      metadata: fields)
  }
}

/// What is refused, for the rate of its log lines.
enum RefusalKind: Hashable, Sendable {
  case denied
  case dropped(VarlinkDropReason)
}

/// Who is refused what: the key of ``ControlPlane``'s rate-limited refusal lines.
struct RefusalKey: Hashable, Sendable {
  var kind: RefusalKind
  var uid: uid_t
}

/// ``ControlPlane``'s refusal lines: one a minute per kind of refusal and UID.
typealias RefusalLog = RateLimitedLog<RefusalKey>
