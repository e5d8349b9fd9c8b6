import AgentSettings
import ControlInterface
import Glibc
import LicenseCore
import LicenseStorage
import Logging
import SimpleJSON
import SystemClock
import Varlink

/// A call of root or the admin group, decoded: what the agent carries out on its queue.
enum ControlRequest: Sendable, Equatable {
  case getStatus
  case checkKey(KeyRequest)
  case addKey(KeyRequest)
  case removeReserve(Slot)
  case activate(ActivationCode, Role)
  case reportUsage(ReportUsageRequest)
  case confirm(ConfirmRequest)
  case addBlocklist(AddBlocklistRequest)
}

/// The agent's control socket (contract §5): the Varlink server and its ``ControlPlane``
/// on a queue of their own, the admin group, and the wire form of requests, replies and
/// errors. A value owned by the agent's actor; the agent decides what a request does.
struct ControlEndpoint {
  private(set) var plane: ControlPlane?
  private var server: VarlinkServer?
  /// The configured admin group's id, when it exists.
  private(set) var adminGroupID: gid_t?

  /// Looks the admin group up (at start and on reload).
  mutating func resolveAdminGroup(_ name: String, logger: Logger) {
    adminGroupID = name.withCString { getgrnam($0)?.pointee.gr_gid }
    if adminGroupID == nil {
      logger.notice(
        "The admin group does not exist: only root may change keys", metadata: ["admin_group": "\(name)"])
    }
  }

  func isAdmin(_ peer: PeerCredentials) -> Bool { ControlPlane.isAdmin(peer, adminGroupID: adminGroupID) }

  /// Opens the socket. Other users are answered on the control queue from `view`; the calls
  /// of root and the admin group go to `forward`, which hands them to the agent (with a
  /// blocklist the control plane verified, for AddBlocklist).
  mutating func start(
    paths: AgentPaths, view: ControlView, clock: WallClock, logger: Logger, version: String,
    forward: @escaping @Sendable (VarlinkCall, PeerCredentials, VarlinkResponder, Blocklist?) -> Void
  ) throws(AgentStartError) {
    let plane = ControlPlane(view: view, clock: clock, logger: logger, version: version, forward: forward)
    let server = VarlinkServer(
      path: paths.socketPath, executor: plane.executor,
      info: VarlinkServiceInfo(
        vendor: "license-agent", product: "license-agent", version: version,
        url: "https://github.com/license-agent/license-agent"),
      interfaces: [
        VarlinkInterface(
          name: AgentInterface.name, description: AgentInterface.description, methods: AgentInterface.methods
        ) { call, peer, respond in
          // The server shares the control plane's executor: its handlers run where it is.
          plane.assumeIsolated { $0.handle(call, peer: peer, respond: respond) }
        }
      ],
      // Root and the admin group keep capacity of their own and have no per-UID limit.
      isPrivileged: { peer in plane.assumeIsolated { $0.isAdmin(peer) } },
      onDrop: { reason, peer in plane.assumeIsolated { $0.connectionDropped(reason, peer: peer) } })
    // The plane streams Monitor's replies on the server it shares an executor with, and
    // forgets a subscriber when its connection closes.
    server.sync { server in
      plane.assumeIsolated { $0.attach(server) }
      server.whenConnectionCloses { id in plane.assumeIsolated { $0.forget(id) } }
    }
    do {
      try server.sync { try $0.start() }
    } catch {
      throw AgentStartError(
        description:
          "\(error); check that \(paths.runtimeDirectory) exists and is writable (RuntimeDirectory=)")
    }
    self.plane = plane
    self.server = server
  }

  mutating func stop() {
    server?.sync { $0.stop() }
    server = nil
    plane = nil
  }

  /// What the control plane answers other users from, after every change of the agent's.
  func publish(_ view: ControlView, changes: [DurableChange]) { plane?.publish(view, changes: changes) }

  /// A forwarded call, decoded; the error to answer when it cannot be.
  func decode(_ call: VarlinkCall, peer: PeerCredentials, adminGroup: String) -> Result<
    ControlRequest, VarlinkError
  > {
    guard let method = AgentMethod(rawValue: call.member) else {
      return .failure(.methodNotFound(call.method))
    }
    // A second check (the control plane forwards only these callers' calls).
    guard !method.changesState || isAdmin(peer) else {
      return .failure(Self.permissionDenied(call.member, adminGroup: adminGroup))
    }
    func decoded<Request: AgentRequest>(_ type: Request.Type) -> Result<Request, VarlinkError> {
      Request.decode(call.parameters).mapError { .invalidParameter($0.name) }
    }
    switch method {
    case .getStatus: return decoded(GetStatusRequest.self).map { _ in .getStatus }
    case .checkKey: return decoded(KeyRequest.self).map(ControlRequest.checkKey)
    case .addKey: return decoded(KeyRequest.self).map(ControlRequest.addKey)
    case .removeReserve: return decoded(RemoveReserveRequest.self).map { .removeReserve($0.slot) }
    case .reportUsage: return decoded(ReportUsageRequest.self).map(ControlRequest.reportUsage)
    case .confirm: return decoded(ConfirmRequest.self).map(ControlRequest.confirm)
    case .addBlocklist: return decoded(AddBlocklistRequest.self).map(ControlRequest.addBlocklist)
    // The control plane answers Monitor itself; it is never forwarded.
    case .monitor: return .failure(.methodNotImplemented(call.method))
    case .activate:
      return decoded(ActivateRequest.self).flatMap { request in
        // Checked for shape here: a malformed code never reaches the network.
        guard let code = ActivationCode(request.code) else {
          return .failure(Self.error(ActivationCode.formatViolation()))
        }
        return .success(.activate(code, request.role))
      }
    }
  }

  /// CheckKey's reply: the checks of AddKey, changing nothing.
  static func checkKey(_ request: KeyRequest, engine: LicenseEngine, state: LicenseState, now: Timestamp)
    -> VarlinkReply
  {
    switch engine.checkKey(
      request.key, role: request.role, replaceScheme: request.replaceScheme ?? false, now: now, state: state)
    {
    case .success(let added): return .success(varlinkParameters(AddKeyReply(added, checkOnly: true)))
    case .failure(let violation): return .failure(error(violation))
    }
  }

  static func permissionDenied(_ method: String, adminGroup: String) -> VarlinkError {
    VarlinkError(
      AgentInterface.permissionDenied,
      [
        "message": .string(
          "\(method) changes the licence state: run it as root or as a member of the group \"\(adminGroup)\"."
        )
      ])
  }

  static func error(_ violation: RuleViolation) -> VarlinkError {
    var parameters: [String: JSONValue] = [
      "rule": .string(violation.rule.rawValue), "code": .string(violation.code),
      "message": .string(violation.message),
    ]
    if let reason = violation.reason { parameters["reason"] = .string(reason) }
    if let serial = violation.serial { parameters["serial"] = .string(serial) }
    return VarlinkError(AgentInterface.ruleViolation, parameters)
  }

  static func storageFailure(_ error: StateStoreError) -> VarlinkError {
    VarlinkError(
      AgentInterface.storageFailure, ["message": .string("Nothing was changed: \(error.description)")])
  }

  static func activationFailed(_ failure: ActivationFailure, code: ActivationCode) -> VarlinkError {
    let transient = !failure.isPermanent
    let advice =
      transient
      ? "The activation server could not be reached or was busy; nothing was changed. Try again later."
      : "The activation server refused the code …\(code.hint); nothing was changed. Check the code with the vendor."
    return VarlinkError(
      AgentInterface.activationFailed,
      ["error": .string(failure.error), "message": .string(advice), "transient": .bool(transient)])
  }
}
