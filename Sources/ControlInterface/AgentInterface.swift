import FoundationEssentials
import LicenseCore
import SimpleJSON

/// The `io.licenseagent.Agent` Varlink interface (contract §5): its IDL and the wire types
/// that the daemon and `agentctl` share. The IDL is what `GetInterfaceDescription` serves;
/// tests check that every reply the daemon sends matches it (with the reference Python
/// client, which validates by introspection).
public enum AgentInterface {
  public static let name = "io.licenseagent.Agent"
  /// The default socket path (`$RUNTIME_DIRECTORY/io.licenseagent.Agent`).
  public static let defaultSocketPath = "/run/license-agent/io.licenseagent.Agent"

  /// The methods, as ``AgentMethod`` names them.
  public static let methods: Set<String> = Set(AgentMethod.allCases.map(\.rawValue))

  public static let ruleViolation = "io.licenseagent.Agent.RuleViolation"
  public static let permissionDenied = "io.licenseagent.Agent.PermissionDenied"
  public static let storageFailure = "io.licenseagent.Agent.StorageFailure"
  public static let activationFailed = "io.licenseagent.Agent.ActivationFailed"
  public static let subscriberDropped = "io.licenseagent.Agent.SubscriberDropped"

  /// The version of the `GetStatus` reply and of `agentctl status --json`.
  public static let statusSchemaVersion = 1

  /// The reply of AddKey, CheckKey and Activate (one shape, written once).
  static let addedKeyFields = """
      slot: (server, workstation, processors, cores),
      role: (active, reserve),
      key: Key,
      unchanged: bool,
      replacedSerial: ?string,
      droppedReserveSerial: ?string,
      removedSerials: []string,
      message: string,
      # reserve_units_short (rule U3): the reserve licenses fewer units than the slot uses
      warnings: ?[]Warning
    )
    """

  /// The fields of GetStatus's reply, and of the Status type Monitor's replies carry.
  static let statusFields = """
      schemaVersion: int,
      version: string,
      startedAt: string,
      now: string,
      product: string,
      slots: []SlotStatus,
      warnings: []Warning,
      alerts: []string,
      nextAction: ?NextAction,
      # agentctl status's exit status: 0 every slot in use has a valid key and no alert is
      # pending, 1 a key expires within the first warning threshold with nothing to take
      # over, 2 a slot has lapsed or an alert is pending
      health: int
    )
    """

  public static let description = """
    # license-agent: the licence keys of this SVM, and what the agent will do next.
    interface io.licenseagent.Agent

    # A licence key held in a slot. Times are RFC 3339 UTC.
    type Key (
      serial: string,
      issuer: string,
      kid: string,
      slot: (server, workstation, processors, cores),
      # vm-count, processors or cores
      scheme: string,
      osType: ?(server, workstation),
      edition: (standard, enterprise),
      licenseType: (commercial, trial, subscription),
      units: int,
      notBefore: string,
      expiresAt: string,
      # How the key arrived: "key" (added as a key file) or "activation-code"
      source: string,
      # The last 5 characters of the activation code the key keeps (never the code)
      codeHint: ?string,
      addedAt: ?string,
      promotedAt: ?string
    )

    # A key's block (rules B1, B2): the key keeps working until graceEndsAt, when it counts
    # as expired; lapsedAt: the grace ended and what takes over is not valid yet (the slot
    # is expired until then).
    type Blocked (
      since: string,
      reason: string,
      learnedAt: string,
      graceEndsAt: string,
      lapsedAt: ?string
    )

    # The renewal of an expired key with its activation code.
    type Renewal (
      # retrying, or stopped after a permanent failure
      state: (retrying, stopped),
      attempts: int,
      nextAttemptAt: ?string,
      lastError: ?string,
      # MANUAL_ACTIVATION_REQUIRED was raised and is pending
      alert: bool,
      codeHint: string
    )

    # The renewal ahead of the active key's expiry with its activation code (rule C6).
    type RenewalAhead (
      # waiting: the first request is not due yet; requesting: an attempt is under way;
      # retrying: attempts failed and the next one is due before the expiry; stopped: no
      # attempt is left before the expiry (the key is renewed at expiry instead)
      state: (waiting, requesting, retrying, stopped),
      # The window of the first request, and the instant drawn in it
      windowStart: string,
      windowEnd: string,
      firstAttemptAt: string,
      nextAttemptAt: ?string,
      attempts: int,
      lastError: ?string,
      # MANUAL_ACTIVATION_REQUIRED was raised (a permanent refusal) and is pending
      alert: bool,
      codeHint: string
    )

    # The key a slot last had, when it expired with nothing to take over.
    type ExpiredKey (
      serial: string,
      expiresAt: string
    )

    # The last usage report of a slot (rule U1): absent while nobody reported (unknown,
    # never zero).
    type Usage (
      units: int,
      reportedAt: string,
      ageSeconds: int,
      # older than the configured stale-after
      stale: bool,
      # against the active key's units (rule U2); null without an active key
      percent: ?float,
      band: ?(normal, high, exceeded, critical)
    )

    # A consumer of the licence and the active key of a slot (rule N2). state: confirmed
    # (it enforces the active key), waiting (an expected consumer, within confirm-within of
    # the takeover), late (CONSUMER_NOT_UPDATED was logged), unconfirmed (not expected)
    type Consumer (
      consumer: string,
      expected: bool,
      state: (confirmed, waiting, late, unconfirmed),
      confirmedSerial: ?string,
      confirmedAt: ?string,
      dueAt: ?string
    )

    # One slot in use.
    type SlotStatus (
      slot: (server, workstation, processors, cores),
      # active: an active key is valid; expired: the licence of this slot has lapsed;
      # renewing: expired, and being renewed with the activation code
      status: (active, expired, renewing),
      active: ?Key,
      reserve: ?Key,
      # The key renewed ahead with the activation code, taking over at the active key's
      # expiry (addedAt: when it was obtained)
      pending: ?Key,
      expired: ?ExpiredKey,
      # What takes over when the active key expires: reserve, pending-renewal,
      # activation-code or none
      takeover: string,
      secondsLeft: ?int,
      renewal: ?Renewal,
      renewalAhead: ?RenewalAhead,
      # When the licence of this slot ends with nothing to take over, as far as the agent
      # knows now (an expired slot's: when it ended); null when an activation code renews it
      lapsesAt: ?string,
      # This slot's part of the health (see GetStatus)
      health: int,
      usage: ?Usage,
      # What each consumer confirmed of the active key (rule N2): the ones [consumers] expect,
      # and any other that confirmed
      consumers: ?[]Consumer,
      # The active key's issuer blocked it (rule B1): since when, why, and when this agent
      # learned of it
      activeBlocked: ?Blocked
    )

    # The next instant the agent will act.
    type NextAction (
      at: string,
      # promotion, expiry, warning, renewal, renewal-ahead, alert or confirmation
      action: string,
      slot: (server, workstation, processors, cores),
      serial: string,
      description: string
    )

    # A warning about the configuration of keys, for a person.
    type Warning (
      slot: ?(server, workstation, processors, cores),
      # no_reserve, reserve_missing_for_os_type, expiring_without_takeover, slot_expired,
      # renewing, renewal_stopped, renewal_ahead_failing, usage_high, limit_exceeded,
      # usage_stale, reserve_units_short, consumer_not_updated, key_blocked
      code: string,
      message: string
    )

    # What GetStatus answers, as Monitor's replies carry it.
    type Status (
    \(statusFields)

    # Everything the agent holds and plans.
    method GetStatus() -> (
    \(statusFields)

    # Follows the agent's changes (rule N1); call it with "more". The first reply is the
    # status as it is now (sequence 0, no event): after a reconnection it is the truth. Then
    # one reply per durable change, in order, sent once the change is on disk: the event as
    # the journal has it (MESSAGE, MESSAGE_ID, PRIORITY and the LICENSE_* fields, with
    # LICENSE_TRANSITION) and the status after it. sequence counts the replies of this
    # call; none is skipped. A subscriber that leaves too much unread is sent
    # SubscriberDropped and disconnected. A consumer names itself (consumer) and calls
    # Confirm once it enforces the active key of a slot (rule N2).
    method Monitor(consumer: ?string) -> (
      sequence: int,
      event: ?[string]string,
      status: Status
    )

    # The consumer enforces key serial for the slot (rule N2): root and the admin group.
    # A consumer the configuration expects ([consumers] expect) must confirm each new active
    # key within confirm-within, else CONSUMER_NOT_UPDATED is logged.
    method Confirm(consumer: string, slot: (server, workstation, processors, cores), serial: string) -> (
      consumer: string,
      slot: (server, workstation, processors, cores),
      serial: string,
      # The slot's active key: current is true when serial is it
      activeSerial: ?string,
      current: bool,
      expected: bool,
      message: string
    )

    # The activation task: adds a key as the slot's active key or as its reserve.
    method AddKey(key: string, role: (active, reserve), replaceScheme: ?bool) -> (
    \(addedKeyFields)

    # The checks of AddKey, changing nothing.
    method CheckKey(key: string, role: (active, reserve), replaceScheme: ?bool) -> (
    \(addedKeyFields)

    # Manual activation: obtains the key for an activation code from the activation server
    # and adds it (rules A or R); the key keeps the code and renews itself at expiry.
    method Activate(code: string, role: (active, reserve)) -> (
    \(addedKeyFields)

    # Removes the reserve key of a slot.
    method RemoveReserve(slot: (server, workstation, processors, cores)) -> (removed: Key)

    # The consumer's usage of a slot (rule U1): VMs protected (by OS type), processors or
    # cores. Replaces the slot's previous report; graded against its active key (rule U2).
    method ReportUsage(slot: (server, workstation, processors, cores), units: int) -> (
      slot: (server, workstation, processors, cores),
      units: int,
      percent: ?float,
      band: ?(normal, high, exceeded, critical),
      message: string
    )

    # A key of this SVM that a blocklist blocks (rule B1). role reserve with pending: the key
    # renewed ahead with the activation code. dropped: a reserve or pending key, removed at
    # once (rule B3); an active key stays
    type BlockedKey (
      slot: (server, workstation, processors, cores),
      role: (active, reserve),
      pending: bool,
      serial: string,
      since: string,
      reason: string,
      dropped: bool,
      # an active key's grace end (rule B2)
      graceEndsAt: ?string
    )

    # A blocklist of a trusted issuer (rule B1), as license-keytool blocklist makes it: kept
    # when newer than the issuer's list the agent has (else RuleViolation B1
    # blocklist_rollback); root and the admin group. blocks: the keys of this SVM it blocks.
    method AddBlocklist(blocklist: string) -> (
      issuer: string,
      sequence: int,
      entries: int,
      unchanged: bool,
      blocks: []BlockedKey,
      message: string
    )

    # A Monitor subscriber left more than the agent keeps unread (backlog, in bytes): its
    # stream ends here and the connection is closed. Reconnect and call Monitor again (its
    # first reply is the status), and read replies as they come.
    error SubscriberDropped (message: string, backlog: int)

    # A licensing rule refused the request; nothing was changed.
    error RuleViolation (rule: string, code: string, message: string, reason: ?string, serial: ?string)

    # The method changes state and the caller is neither root nor in the admin group.
    error PermissionDenied (message: string)

    # The state could not be written; nothing was changed.
    error StorageFailure (message: string)

    # The activation server did not give a key for the code; nothing was changed.
    # transient: a network or server problem (try again later); otherwise the code itself.
    error ActivationFailed (error: string, message: string, transient: bool)

    """
}

/// The methods of `io.licenseagent.Agent`, by their wire names.
public enum AgentMethod: String, CaseIterable, Sendable {
  case getStatus = "GetStatus"
  case addKey = "AddKey"
  case checkKey = "CheckKey"
  case removeReserve = "RemoveReserve"
  case activate = "Activate"
  case reportUsage = "ReportUsage"
  case monitor = "Monitor"
  case confirm = "Confirm"
  case addBlocklist = "AddBlocklist"

  /// `io.licenseagent.Agent.<name>`.
  public var qualifiedName: String { "\(AgentInterface.name).\(rawValue)" }

  /// Whether the method changes the state (root and the admin group only, contract §5).
  public var changesState: Bool {
    switch self {
    case .getStatus, .checkKey, .monitor: return false
    case .addKey, .removeReserve, .activate, .reportUsage, .confirm, .addBlocklist: return true
    }
  }
}

/// A request's parameters, decoded by name and type (``AgentRequest/decode(_:)``).
public protocol AgentRequest: Codable, Sendable {
  /// Every parameter the method takes: any other is an invalid parameter.
  static var parameterNames: Set<String> { get }
}

/// A parameter the caller got wrong (unknown, missing, or of the wrong type), by name.
public struct InvalidParameter: Error, Equatable, Sendable {
  public var name: String
  public init(_ name: String) { self.name = name }
}

extension AgentRequest {
  /// Decodes the parameters of a call: the first unknown parameter, else the first missing
  /// or mistyped one in the method's order, is the error.
  public static func decode(_ parameters: [String: JSONValue]) -> Result<Self, InvalidParameter> {
    if let unknown = parameters.keys.sorted().first(where: { !parameterNames.contains($0) }) {
      return .failure(InvalidParameter(unknown))
    }
    do {
      return .success(try decodeParameters(Self.self, from: parameters))
    } catch let DecodingError.keyNotFound(key, context) {
      return .failure(InvalidParameter((context.codingPath.first ?? key).stringValue))
    } catch let DecodingError.typeMismatch(_, context), let DecodingError.valueNotFound(_, context),
      let DecodingError.dataCorrupted(context)
    {
      return .failure(InvalidParameter(context.codingPath.first?.stringValue ?? "parameters"))
    } catch {
      return .failure(InvalidParameter("parameters"))
    }
  }

  /// The call's parameters.
  public var parameters: [String: JSONValue] { varlinkParameters(self) }
}

/// `GetStatus()`.
public struct GetStatusRequest: AgentRequest, Equatable {
  public static let parameterNames: Set<String> = []
  public init() {}
}

/// `AddKey(key, role, replaceScheme?)` and `CheckKey(...)`.
public struct KeyRequest: AgentRequest, Equatable {
  public static let parameterNames: Set<String> = ["key", "role", "replaceScheme"]
  public var key: String
  public var role: Role
  public var replaceScheme: Bool?

  public init(key: String, role: Role, replaceScheme: Bool? = nil) {
    self.key = key
    self.role = role
    self.replaceScheme = replaceScheme
  }
}

/// `RemoveReserve(slot)`.
public struct RemoveReserveRequest: AgentRequest, Equatable {
  public static let parameterNames: Set<String> = ["slot"]
  public var slot: Slot
  public init(slot: Slot) { self.slot = slot }
}

/// `ReportUsage(slot, units)`.
public struct ReportUsageRequest: AgentRequest, Equatable {
  public static let parameterNames: Set<String> = ["slot", "units"]
  public var slot: Slot
  public var units: Int
  public init(slot: Slot, units: Int) {
    self.slot = slot
    self.units = units
  }
}

/// `AddBlocklist`'s parameters.
public struct AddBlocklistRequest: AgentRequest, Equatable {
  public static let parameterNames: Set<String> = ["blocklist"]
  public var blocklist: String
  public init(blocklist: String) { self.blocklist = blocklist }
}

/// A blocked key on the wire (B1, B3).
public struct BlockedKeyInfo: Codable, Sendable, Equatable {
  public var slot: Slot
  public var role: Role
  public var pending: Bool
  public var serial: String
  public var since: String
  public var reason: String
  public var dropped: Bool
  public var graceEndsAt: String?

  public init(_ key: BlockedKey) {
    slot = key.slot
    role = key.role
    pending = key.pending
    serial = key.serial
    since = key.since.rfc3339
    reason = key.reason
    dropped = key.dropped
    graceEndsAt = key.graceEndsAt?.rfc3339
  }
}

/// The `AddBlocklist` reply.
public struct AddBlocklistReply: Codable, Sendable, Equatable {
  public var issuer: String
  public var sequence: Int
  public var entries: Int
  public var unchanged: Bool
  public var blocks: [BlockedKeyInfo]
  public var message: String

  public init(_ added: BlocklistAdded) {
    issuer = added.issuer
    sequence = added.sequence
    entries = added.entries
    unchanged = added.unchanged
    blocks = added.blocks.map(BlockedKeyInfo.init)
    var lines = [
      added.unchanged
        ? "Blocklist \(added.sequence) of \(added.issuer) is already the one kept; nothing changed."
        : "Blocklist \(added.sequence) of \(added.issuer) kept (\(added.entries) blocked key\(added.entries == 1 ? "" : "s"))."
    ]
    if added.blocks.isEmpty { lines.append("It blocks no key of this SVM.") }
    for key in added.blocks {
      let what = key.role == .active ? "active key" : key.pending ? "key renewed ahead" : "reserve key"
      let why = key.reason.isEmpty ? "" : " (\(key.reason))"
      lines.append(
        key.dropped
          ? "It blocks the \(key.slot.rawValue) \(what) \(key.serial) (since \(key.since.rfc3339)\(why)): removed."
          : "It blocks the \(key.slot.rawValue) \(what) \(key.serial) (since \(key.since.rfc3339)\(why)): it keeps working until the end of its grace, \(key.graceEndsAt?.rfc3339 ?? "its expiry"), when what takes over does (agentctl status says what); if nothing does, add a key that is not blocked before then."
      )
    }
    message = lines.joined(separator: "\n")
  }
}

/// `Monitor`'s parameters.
public struct MonitorRequest: AgentRequest, Equatable {
  public static let parameterNames: Set<String> = ["consumer"]
  public var consumer: String?
  public init(consumer: String? = nil) { self.consumer = consumer }
}

/// One `Monitor` reply: the status, with the change it follows (none in the first).
public struct MonitorReply: Codable, Sendable, Equatable {
  public var sequence: Int
  public var event: [String: String]?
  public var status: StatusReply

  public init(sequence: Int, event: [String: String]?, status: StatusReply) {
    self.sequence = sequence
    self.event = event
    self.status = status
  }
}

/// `Confirm`'s parameters.
public struct ConfirmRequest: AgentRequest, Equatable {
  public static let parameterNames: Set<String> = ["consumer", "slot", "serial"]
  public var consumer: String
  public var slot: Slot
  public var serial: String
  public init(consumer: String, slot: Slot, serial: String) {
    self.consumer = consumer
    self.slot = slot
    self.serial = serial
  }
}

/// The `Confirm` reply.
public struct ConfirmReply: Codable, Sendable, Equatable {
  public var consumer: String
  public var slot: Slot
  public var serial: String
  public var activeSerial: String?
  public var current: Bool
  public var expected: Bool
  public var message: String

  public init(_ confirmed: ConsumerConfirmed) {
    consumer = confirmed.consumer.rawValue
    slot = confirmed.slot
    serial = confirmed.serial
    activeSerial = confirmed.activeSerial
    current = confirmed.current
    expected = confirmed.expected
    let name = "\(confirmed.consumer) (\(confirmed.slot.rawValue))"
    if confirmed.current {
      message = "Confirmed: \(name) enforces the active key \(confirmed.serial)."
    } else if let active = confirmed.activeSerial {
      message =
        "Recorded: \(name) enforces \(confirmed.serial), which is not the active key \(active); enforce \(active) and confirm it."
    } else {
      message = "Recorded: \(name) enforces \(confirmed.serial); the slot has no active key (it has lapsed)."
    }
  }
}

/// A key's block on the wire (B1).
public struct BlockedInfo: Codable, Sendable, Equatable {
  public var since: String
  public var reason: String
  public var learnedAt: String
  public var graceEndsAt: String
  public var lapsedAt: String?

  public init(_ held: HeldSlot, _ block: ActiveBlock) {
    since = block.since.rfc3339
    reason = block.reason
    learnedAt = block.learnedAt.rfc3339
    graceEndsAt = held.endsAt.rfc3339
    lapsedAt = block.lapsedAt?.rfc3339
  }
}

/// A consumer of a slot's active key on the wire (N2).
public struct ConsumerInfo: Codable, Sendable, Equatable {
  public var consumer: String
  public var expected: Bool
  public var state: ConsumerStanding
  public var confirmedSerial: String?
  public var confirmedAt: String?
  /// When an expected consumer that has not confirmed must have (waiting), or had to (late).
  public var dueAt: String?

  public init(
    consumer: String, expected: Bool, state: ConsumerStanding, confirmedSerial: String?, confirmedAt: String?,
    dueAt: String?
  ) {
    self.consumer = consumer
    self.expected = expected
    self.state = state
    self.confirmedSerial = confirmedSerial
    self.confirmedAt = confirmedAt
    self.dueAt = dueAt
  }
}

/// The `ReportUsage` reply.
public struct ReportUsageReply: Codable, Sendable, Equatable {
  public var slot: Slot
  public var units: Int
  public var percent: Double?
  public var band: UsageBand?
  public var message: String

  public init(_ recorded: UsageRecorded, licensed: Int?) {
    slot = recorded.slot
    units = recorded.units
    band = recorded.band
    percent = licensed.map { UsageBand.percent(used: recorded.units, licensed: $0) }
    var text = "Usage of the \(recorded.slot.rawValue) slot recorded: \(recorded.units) units"
    if let licensed, let band = recorded.band {
      text += " of the active key's \(licensed) (\(UsageBand.percentText(percent ?? 0)) %, \(band.rawValue))."
    } else {
      text += "; the slot has no active key to grade them against."
    }
    message = text
  }
}

/// A slot's usage on the wire (U1, U2).
public struct UsageInfo: Codable, Sendable, Equatable {
  public var units: Int
  public var reportedAt: String
  public var ageSeconds: Int
  public var stale: Bool
  public var percent: Double?
  public var band: UsageBand?

  public init(_ report: UsageReport, active: InstalledKey?, engine: LicenseEngine, now: Timestamp) {
    units = report.units
    reportedAt = report.reportedAt.rfc3339
    ageSeconds = Int(max(now.microseconds(since: report.reportedAt), 0) / 1_000_000)
    stale = engine.isStale(report, now: now)
    percent = active.map { UsageBand.percent(used: report.units, licensed: $0.claims.units) }
    band = active.map { UsageBand.of(used: report.units, licensed: $0.claims.units) }
  }

}

/// `Activate(code, role)`: the code as typed (checked by the agent: rule C5).
public struct ActivateRequest: AgentRequest, Equatable {
  public static let parameterNames: Set<String> = ["code", "role"]
  public var code: String
  public var role: Role
  public init(code: String, role: Role) {
    self.code = code
    self.role = role
  }
}

/// A key on the wire.
public struct KeyInfo: Codable, Sendable, Equatable {
  public var serial: String
  public var issuer: String
  public var kid: String
  public var slot: Slot
  public var scheme: Scheme
  public var osType: OSType?
  public var edition: Edition
  public var licenseType: LicenseType
  public var units: Int
  public var notBefore: String
  public var expiresAt: String
  public var source: KeyOrigin
  public var codeHint: String?
  public var addedAt: String?
  public var promotedAt: String?

  public init(
    _ key: LicenseKey, source: KeyOrigin = .key, codeHint: String? = nil, addedAt: Timestamp? = nil,
    promotedAt: Timestamp? = nil
  ) {
    let c = key.claims
    serial = c.serial
    issuer = c.issuer
    kid = key.kid
    slot = c.slot
    scheme = c.scheme
    osType = c.osType
    edition = c.edition
    licenseType = c.licenseType
    units = c.units
    notBefore = c.notBefore.rfc3339
    expiresAt = c.expiresAt.rfc3339
    self.source = source
    self.codeHint = codeHint
    self.addedAt = addedAt?.rfc3339
    self.promotedAt = promotedAt?.rfc3339
  }

  public init(_ installed: InstalledKey) {
    self.init(
      installed.key, source: installed.origin, codeHint: installed.activationCode?.hint,
      addedAt: installed.addedAt, promotedAt: installed.promotedAt)
  }

  /// `vm-count/server`, `cores`.
  public var typeDescription: String { osType.map { "\(scheme.rawValue)/\($0.rawValue)" } ?? scheme.rawValue }
}

public struct ExpiredKeyInfo: Codable, Sendable, Equatable {
  public var serial: String
  public var expiresAt: String
}

public struct SlotStatus: Codable, Sendable, Equatable {
  /// `status`: active, or lapsed (expired, or being renewed with the activation code).
  public enum Status: String, Codable, Sendable, Equatable {
    case active, expired, renewing
  }
  public var slot: Slot
  public var status: Status
  public var active: KeyInfo?
  public var reserve: KeyInfo?
  public var pending: KeyInfo?
  public var expired: ExpiredKeyInfo?
  public var takeover: Takeover
  public var secondsLeft: Int?
  public var renewal: RenewalInfo?
  public var renewalAhead: RenewalAheadInfo?
  public var lapsesAt: String?
  public var health: Health
  public var usage: UsageInfo?
  public var consumers: [ConsumerInfo]?
  /// The active key's block (B1), when its issuer blocked it.
  public var activeBlocked: BlockedInfo?

  public init(
    slot: Slot, status: Status, active: KeyInfo? = nil, reserve: KeyInfo? = nil, pending: KeyInfo? = nil,
    expired: ExpiredKeyInfo? = nil, takeover: Takeover, secondsLeft: Int? = nil, renewal: RenewalInfo? = nil,
    renewalAhead: RenewalAheadInfo? = nil, lapsesAt: String? = nil, health: Health, usage: UsageInfo? = nil,
    consumers: [ConsumerInfo]? = nil, activeBlocked: BlockedInfo? = nil
  ) {
    self.slot = slot
    self.status = status
    self.active = active
    self.reserve = reserve
    self.pending = pending
    self.expired = expired
    self.takeover = takeover
    self.secondsLeft = secondsLeft
    self.renewal = renewal
    self.renewalAhead = renewalAhead
    self.lapsesAt = lapsesAt
    self.health = health
    self.usage = usage
    self.consumers = consumers
    self.activeBlocked = activeBlocked
  }
}

/// The renewal ahead of expiry of a slot on the wire (C6; never the code: its hint).
public struct RenewalAheadInfo: Codable, Sendable, Equatable {
  public enum State: String, Codable, Sendable, Equatable {
    case waiting, requesting, retrying, stopped
  }
  public var state: State
  public var windowStart: String
  public var windowEnd: String
  public var firstAttemptAt: String
  public var nextAttemptAt: String?
  public var attempts: Int
  public var lastError: String?
  public var alert: Bool
  public var codeHint: String

  public init(_ ahead: AheadRenewal, held: HeldSlot, engine: LicenseEngine) {
    let active = held.active
    switch ahead.attempts.schedule {
    case .stopped: state = .stopped
    case .underWay: state = .requesting
    case .atDraw, .due: state = ahead.attempts.failures == 0 ? .waiting : .retrying
    }
    let window = engine.aheadWindow(expiresAt: active.expiresAt, since: ahead.since)
    windowStart = window.from.rfc3339
    windowEnd = window.to.rfc3339
    firstAttemptAt = engine.firstAheadAttempt(ahead, expiresAt: active.expiresAt).rfc3339
    nextAttemptAt = engine.aheadAttemptDue(held)?.rfc3339
    attempts = ahead.attempts.failures
    lastError = ahead.attempts.lastError
    alert = ahead.attempts.alertRaised
    codeHint = active.activationCode?.hint ?? ""
  }
}

/// The renewal state of a slot on the wire (never the code: its hint).
public struct RenewalInfo: Codable, Sendable, Equatable {
  public enum State: String, Codable, Sendable, Equatable {
    case retrying, stopped
  }
  public var state: State
  public var attempts: Int
  public var nextAttemptAt: String?
  public var lastError: String?
  public var alert: Bool
  public var codeHint: String

  public init(_ renewal: Renewal) {
    state = renewal.attempts.isStopped ? .stopped : .retrying
    attempts = renewal.attempts.failures
    nextAttemptAt = renewal.attempts.dueAt?.rfc3339
    lastError = renewal.attempts.lastError
    alert = renewal.attempts.alertRaised
    codeHint = renewal.code.hint
  }
}

public struct NextAction: Codable, Sendable, Equatable {
  /// What the agent does then (also the metrics' `action` label).
  public enum Action: String, Codable, Sendable, Equatable {
    case promotion, expiry, warning, renewal
    case renewalAhead = "renewal-ahead"
    case alert
    /// An expected consumer's confirmation is due (N2).
    case confirmation
  }
  public var at: String
  public var action: Action
  public var slot: Slot
  public var serial: String
  public var description: String
}

public struct StatusWarning: Codable, Sendable, Equatable {
  public enum Code: String, Codable, Sendable, Equatable {
    case noReserve = "no_reserve"
    case reserveMissingForOSType = "reserve_missing_for_os_type"
    case expiringWithoutTakeover = "expiring_without_takeover"
    case slotExpired = "slot_expired"
    case renewing
    case renewalStopped = "renewal_stopped"
    case renewalAheadFailing = "renewal_ahead_failing"
    case usageHigh = "usage_high"
    case limitExceeded = "limit_exceeded"
    case usageStale = "usage_stale"
    case reserveUnitsShort = "reserve_units_short"
    case consumerNotUpdated = "consumer_not_updated"
    case keyBlocked = "key_blocked"
  }
  public var slot: Slot?
  public var code: Code
  public var message: String

  public init(slot: Slot?, code: Code, message: String) {
    self.slot = slot
    self.code = code
    self.message = message
  }
}

/// The `GetStatus` reply, and `agentctl status --json` (which adds `agentReachable`).
public struct StatusReply: Codable, Sendable, Equatable {
  public var schemaVersion: Int
  public var version: String
  public var startedAt: String
  public var now: String
  public var product: String
  public var slots: [SlotStatus]
  public var warnings: [StatusWarning]
  public var alerts: [String]
  public var nextAction: NextAction?
  public var health: Health
}

/// The `AddKey` and `CheckKey` reply.
public struct AddKeyReply: Codable, Sendable, Equatable {
  public var slot: Slot
  public var role: Role
  public var key: KeyInfo
  public var unchanged: Bool
  public var replacedSerial: String?
  public var droppedReserveSerial: String?
  public var removedSerials: [String]
  public var message: String
  /// U3's `reserve_units_short`; nil from agents before 0.3.0.
  public var warnings: [StatusWarning]?

  public init(_ added: AddedKey, checkOnly: Bool) {
    slot = added.slot
    role = added.role
    key = KeyInfo(added.key)
    unchanged = added.unchanged
    replacedSerial = added.replacedSerial
    droppedReserveSerial = added.droppedReserveSerial
    removedSerials = added.removedSerials
    let verb = checkOnly ? "would become" : "is now"
    var text =
      added.unchanged
      ? "Key \(added.key.serial) already is the \(added.role.rawValue) key of the \(added.slot.rawValue) slot; nothing changed."
      : "Key \(added.key.serial) \(verb) the \(added.role.rawValue) key of the \(added.slot.rawValue) slot."
    if let replaced = added.replacedSerial {
      text += " It \(checkOnly ? "would replace" : "replaced") \(replaced)."
    }
    if let dropped = added.droppedReserveSerial {
      text +=
        " The reserve \(dropped) \(checkOnly ? "would be" : "was") removed: it cannot follow the new active key."
    }
    if !added.removedSerials.isEmpty {
      text +=
        " Keys of the former scheme \(checkOnly ? "would be" : "were") removed: \(added.removedSerials.joined(separator: ", "))."
    }
    var warnings: [StatusWarning] = []
    if let short = added.unitsShort {
      let sentence = short.sentence(serial: added.key.serial)
      text += " " + sentence
      warnings.append(StatusWarning(slot: added.slot, code: .reserveUnitsShort, message: sentence))
    }
    message = text
    self.warnings = warnings
  }
}

public struct RemoveReserveReply: Codable, Sendable, Equatable {
  public var removed: KeyInfo
  public init(removed: KeyInfo) { self.removed = removed }
}

// MARK: - Wire conversions

/// Encodes a Codable value as Varlink parameters.
public func varlinkParameters<T: Encodable>(_ value: T) -> [String: JSONValue] {
  let encoder = JSONEncoder()
  encoder.outputFormatting = .sortedKeys
  guard let data = try? encoder.encode(value), let object = JSONValue.parse(data)?.objectValue else {
    return [:]
  }
  return object
}

/// Decodes Varlink parameters into a Codable value.
public func decodeParameters<T: Decodable>(_ type: T.Type, from parameters: [String: JSONValue]) throws -> T {
  try JSONDecoder().decode(T.self, from: Data(JSONValue.object(parameters).serialized.utf8))
}
