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

  public static let methods: Set<String> = ["GetStatus", "AddKey", "CheckKey", "RemoveReserve", "Activate"]

  public static let ruleViolation = "io.licenseagent.Agent.RuleViolation"
  public static let permissionDenied = "io.licenseagent.Agent.PermissionDenied"
  public static let storageFailure = "io.licenseagent.Agent.StorageFailure"
  public static let activationFailed = "io.licenseagent.Agent.ActivationFailed"

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
      message: string
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
      renewalAhead: ?RenewalAhead
    )

    # The next instant the agent will act.
    type NextAction (
      at: string,
      # promotion, expiry, warning, renewal, renewal-ahead or alert
      action: string,
      slot: (server, workstation, processors, cores),
      serial: string,
      description: string
    )

    # A warning about the configuration of keys, for a person.
    type Warning (
      slot: ?(server, workstation, processors, cores),
      # no_reserve, reserve_missing_for_os_type, expiring_without_takeover, slot_expired,
      # renewing, renewal_stopped, renewal_ahead_failing
      code: string,
      message: string
    )

    # Everything the agent holds and plans.
    method GetStatus() -> (
      schemaVersion: int,
      version: string,
      startedAt: string,
      now: string,
      product: string,
      slots: []SlotStatus,
      warnings: []Warning,
      alerts: []string,
      nextAction: ?NextAction
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

/// A key on the wire.
public struct KeyInfo: Codable, Sendable, Equatable {
  public var serial: String
  public var issuer: String
  public var kid: String
  public var slot: String
  public var scheme: String
  public var osType: String?
  public var edition: String
  public var licenseType: String
  public var units: Int
  public var notBefore: String
  public var expiresAt: String
  public var source: String
  public var codeHint: String?
  public var addedAt: String?
  public var promotedAt: String?

  public init(
    _ key: LicenseKey, source: String = "key", codeHint: String? = nil, addedAt: Timestamp? = nil,
    promotedAt: Timestamp? = nil
  ) {
    let c = key.claims
    serial = c.serial
    issuer = c.issuer
    kid = key.kid
    slot = c.slot.rawValue
    scheme = c.scheme.rawValue
    osType = c.osType?.rawValue
    edition = c.edition.rawValue
    licenseType = c.licenseType.rawValue
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
      installed.key, source: installed.origin.rawValue, codeHint: installed.activationCode?.hint,
      addedAt: installed.addedAt, promotedAt: installed.promotedAt)
  }

  /// `vm-count/server`, `cores`.
  public var typeDescription: String { osType.map { "\(scheme)/\($0)" } ?? scheme }
}

public struct ExpiredKeyInfo: Codable, Sendable, Equatable {
  public var serial: String
  public var expiresAt: String
}

public struct SlotStatus: Codable, Sendable, Equatable {
  public var slot: String
  public var status: String
  public var active: KeyInfo?
  public var reserve: KeyInfo?
  public var pending: KeyInfo?
  public var expired: ExpiredKeyInfo?
  public var takeover: String
  public var secondsLeft: Int?
  public var renewal: RenewalInfo?
  public var renewalAhead: RenewalAheadInfo?

  public init(
    slot: String, status: String, active: KeyInfo? = nil, reserve: KeyInfo? = nil, pending: KeyInfo? = nil,
    expired: ExpiredKeyInfo? = nil, takeover: String, secondsLeft: Int? = nil, renewal: RenewalInfo? = nil,
    renewalAhead: RenewalAheadInfo? = nil
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
  }
}

/// The renewal ahead of expiry of a slot on the wire (C6; never the code: its hint).
public struct RenewalAheadInfo: Codable, Sendable, Equatable {
  public var state: String
  public var windowStart: String
  public var windowEnd: String
  public var firstAttemptAt: String
  public var nextAttemptAt: String?
  public var attempts: Int
  public var lastError: String?
  public var alert: Bool
  public var codeHint: String

  public init(_ ahead: AheadRenewal, active: InstalledKey, engine: LicenseEngine) {
    if ahead.stopped {
      state = "stopped"
    } else if ahead.attemptStartedAt != nil {
      state = "requesting"
    } else {
      state = ahead.attempts == 0 ? "waiting" : "retrying"
    }
    let window = engine.aheadWindow(expiresAt: active.expiresAt, since: ahead.since)
    windowStart = window.from.rfc3339
    windowEnd = window.to.rfc3339
    firstAttemptAt = engine.firstAheadAttempt(ahead, expiresAt: active.expiresAt).rfc3339
    nextAttemptAt = engine.aheadAttemptDue(ahead, active: active)?.rfc3339
    attempts = ahead.attempts
    lastError = ahead.lastError
    alert = ahead.alertRaised
    codeHint = active.activationCode?.hint ?? ""
  }
}

/// The renewal state of a slot on the wire (never the code: its hint).
public struct RenewalInfo: Codable, Sendable, Equatable {
  public var state: String
  public var attempts: Int
  public var nextAttemptAt: String?
  public var lastError: String?
  public var alert: Bool
  public var codeHint: String

  public init(_ renewal: RenewalState) {
    state = renewal.nextAttemptAt != nil || renewal.attemptStartedAt != nil ? "retrying" : "stopped"
    attempts = renewal.attempts
    nextAttemptAt = renewal.nextAttemptAt?.rfc3339
    lastError = renewal.lastError
    alert = renewal.alertRaised
    codeHint = renewal.code.hint
  }
}

public struct NextAction: Codable, Sendable, Equatable {
  public var at: String
  public var action: String
  public var slot: String
  public var serial: String
  public var description: String
}

public struct StatusWarning: Codable, Sendable, Equatable {
  public var slot: String?
  public var code: String
  public var message: String
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
}

/// The `AddKey` and `CheckKey` reply.
public struct AddKeyReply: Codable, Sendable, Equatable {
  public var slot: String
  public var role: String
  public var key: KeyInfo
  public var unchanged: Bool
  public var replacedSerial: String?
  public var droppedReserveSerial: String?
  public var removedSerials: [String]
  public var message: String

  public init(_ added: AddedKey, checkOnly: Bool) {
    slot = added.slot.rawValue
    role = added.role.rawValue
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
    message = text
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
