/// The journal events of contract §4. The MESSAGE_IDs are public interface: operators
/// filter on them and `license-agent.catalog` explains each one.
public enum EventKind: String, Sendable, Codable, CaseIterable {
  case keyPromoted = "KEY_PROMOTED"
  case reserveAdded = "RESERVE_ADDED"
  case reserveRejected = "RESERVE_REJECTED"
  case reserveDropped = "RESERVE_DROPPED"
  case activeAdded = "ACTIVE_ADDED"
  case expiringSoon = "EXPIRING_SOON"
  case licenseExpired = "LICENSE_EXPIRED"
  case activationAttemptFailed = "ACTIVATION_ATTEMPT_FAILED"
  case activationRenewed = "ACTIVATION_RENEWED"
  case manualActivationRequired = "MANUAL_ACTIVATION_REQUIRED"
  case clockChanged = "CLOCK_CHANGED"
  case stateRecovered = "STATE_RECOVERED"
  case licenseUsageHigh = "LICENSE_USAGE_HIGH"
  case licenseLimitExceeded = "LICENSE_LIMIT_EXCEEDED"
  case keyBlocked = "KEY_BLOCKED"
  case consumerNotUpdated = "CONSUMER_NOT_UPDATED"

  public var messageID: String {
    switch self {
    case .keyPromoted: return "dd8dbaf0eb17480089e04f5c8d85f861"
    case .reserveAdded: return "e6e38cd9ee7d4e98ae1db5bde258920f"
    case .reserveRejected: return "13a9558c214c43cc829f75e2e8da0fea"
    case .reserveDropped: return "78a2df19d7664e5795c37138587e93a9"
    case .activeAdded: return "f2531d0f45ff4d869bcf3c5986767623"
    case .expiringSoon: return "0dccfcb260474b2ebfa64ff4e1071802"
    case .licenseExpired: return "31051348bd3a4e6eb3bd5f3df5f85db2"
    case .activationAttemptFailed: return "06967a7f4f1d4ea9b61e78494a44c609"
    case .activationRenewed: return "883efd4f38fd4f73b2b16fd50427571b"
    case .manualActivationRequired: return "5212055b8cd24be3b0b4e8a503265e3a"
    case .clockChanged: return "c8625e2018144e8aae8222734ffea5c1"
    case .stateRecovered: return "e3fb7954deee4da0a7c9be130eaa43af"
    case .licenseUsageHigh: return "0a44b86061a24352a043da9fa8cb70eb"
    case .licenseLimitExceeded: return "b0277bd9986a497791128aa1b40d4414"
    case .keyBlocked: return "e55a64d5379b41d8ba3a6e6c859241a8"
    case .consumerNotUpdated: return "fc31db115a6d4ae09692763a54c6d5a6"
    }
  }

  /// The syslog priority of contract §4 (EXPIRING_SOON is 5 instead when something takes
  /// over; LICENSE_LIMIT_EXCEEDED 2 over 110 %).
  public var priority: Int {
    switch self {
    case .keyPromoted, .activationRenewed, .licenseUsageHigh: return 5
    case .licenseLimitExceeded: return 4
    case .expiringSoon: return 4
    case .reserveAdded, .activeAdded: return 6
    case .reserveRejected, .consumerNotUpdated: return 3
    case .reserveDropped, .activationAttemptFailed, .clockChanged, .stateRecovered: return 4
    case .licenseExpired, .keyBlocked: return 2
    case .manualActivationRequired: return 1
    }
  }
}

/// One journal entry, rendered from a ``LicenseEvent``: kind (and so MESSAGE_ID), priority,
/// the sentence for a person, and the `LICENSE_*` fields in a fixed order. This is what the
/// outbox keeps, so that an event replayed after a crash is sent byte for byte as decided.
///
/// Events of a state change carry the id of their transition and wait in the state's outbox
/// until delivered, so that a crash between "durable" and "announced" is replayed once.
public struct JournalEvent: Sendable, Equatable, Codable {
  public struct Field: Sendable, Equatable, Codable {
    public var name: JournalField
    public var value: String
    public init(_ name: JournalField, _ value: String) {
      self.name = name
      self.value = value
    }
  }

  public var kind: EventKind
  public var priority: Int
  public var message: String
  public var fields: [Field]
  /// The transition that produced the event; nil for events that change no state
  /// (a rejection, a clock change).
  public var transitionID: UInt64?

  public init(
    _ kind: EventKind, priority: Int? = nil, message: String, fields: [Field], transitionID: UInt64? = nil
  ) {
    self.kind = kind
    self.priority = priority ?? kind.priority
    self.message = message
    self.fields = fields
    self.transitionID = transitionID
  }

  /// The value of a field, if present.
  public subscript(field name: JournalField) -> String? {
    fields.first(where: { $0.name == name })?.value
  }

  /// The copy sent again because the journal lost it: `LICENSE_REPLAYED=1`, the same
  /// transition (contract §4).
  public var replayed: JournalEvent {
    var copy = self
    copy.fields.removeAll { $0.name == .replayed }
    copy.fields.append(Field(.replayed, "1"))
    return copy
  }

  /// A journal field name is upper-case letters, digits and `_`, not starting with `_` or
  /// a digit, at most 64 characters; journald silently drops others.
  public static func isValidFieldName(_ name: String) -> Bool {
    guard let first = name.utf8.first, name.utf8.count <= 64, first != UInt8(ascii: "_"),
      !(first >= 48 && first <= 57)
    else { return false }
    return name.utf8.allSatisfy { ($0 >= 65 && $0 <= 90) || ($0 >= 48 && $0 <= 57) || $0 == 95 }
  }
}
