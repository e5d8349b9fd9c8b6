import FoundationEssentials
import Glibc
import LicenseCore

/// Where the agent's journal events go. `JournalEventSink` writes them to the journal;
/// `ConsoleEventSink` to standard error, when there is no journal (and for the demo).
public protocol EventSink: Sendable {
  /// Sends one event; `transition` (`<state id>:<transition id>`) marks the events of a
  /// state change. False when it could not be delivered.
  @discardableResult func send(_ event: JournalEvent, transition: String?) -> Bool
  /// Whether an event carrying `transition` (``JournalEventSink/transitionField``) was
  /// already delivered, for exactly-once replay after a crash; nil when it cannot tell.
  func wasDelivered(transition: String) -> Bool?
}

/// The journal fields of an event: the contract's, plus the transition for deduplication.
public func journalFields(of event: JournalEvent, transition: String?) -> [(name: String, value: String)] {
  var fields: [(name: String, value: String)] = [
    ("MESSAGE", event.message), ("MESSAGE_ID", event.kind.messageID), ("PRIORITY", String(event.priority)),
    ("SYSLOG_IDENTIFIER", "license-agent"), ("LICENSE_EVENT", event.kind.rawValue),
  ]
  fields += event.fields.map { ($0.name, $0.value) }
  if let transition { fields.append((JournalEventSink.transitionField, transition)) }
  return fields
}

/// Sends events to the journal with their MESSAGE_ID, PRIORITY and `LICENSE_*` fields; falls
/// back to standard error for an event the journal refuses (journald stopped, no socket).
public struct JournalEventSink: EventSink {
  /// `<state id>:<transition id>`: identifies the transition an event belongs to across
  /// restarts, so that an event replayed from the outbox is not logged twice.
  public static let transitionField = "LICENSE_TRANSITION"
  private let fallback = ConsoleEventSink()

  public init() {}

  public func send(_ event: JournalEvent, transition: String?) -> Bool {
    if Journal.send(journalFields(of: event, transition: transition)) >= 0 { return true }
    return fallback.send(event, transition: transition)
  }

  public func wasDelivered(transition: String) -> Bool? {
    Journal.contains(field: Self.transitionField, value: transition)
  }
}

/// Writes events as readable lines on standard error: `<5>KEY_PROMOTED: message [fields]`.
/// The `<N>` prefix is the priority, understood by systemd when stderr is a journal stream.
public struct ConsoleEventSink: EventSink {
  public init() {}

  public func send(_ event: JournalEvent, transition: String?) -> Bool {
    let fields = event.fields.map { "\($0.name)=\($0.value)" }.joined(separator: " ")
    let line = "<\(event.priority)>\(event.kind.rawValue): \(event.message) [\(fields)]\n"
    return line.utf8CString.withUnsafeBufferPointer { write(2, $0.baseAddress, $0.count - 1) } >= 0
  }

  public func wasDelivered(transition: String) -> Bool? { nil }
}
