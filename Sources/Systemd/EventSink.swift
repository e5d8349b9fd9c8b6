import FoundationEssentials
import Glibc
import LicenseCore

/// What became of an event that was sent.
public enum EventDelivery: Sendable, Equatable {
  /// The journal (or standard error, for the console sink) took it.
  case delivered
  /// The journal refused it for now (journald busy or restarting: `errno`); worth retrying.
  case refused(errno: Int32)
  /// There is no journal at all here: retrying is pointless.
  case unavailable
}

/// Where the agent's journal events go. `JournalEventSink` writes them to the journal;
/// `ConsoleEventSink` to standard error, when there is no journal (and for the demo).
public protocol EventSink: Sendable {
  /// Sends one event as it is, every field unchanged; `transition` (`<state id>:<transition
  /// id>`) marks the events of a state change.
  @discardableResult func send(_ event: JournalEvent, transition: String?) -> EventDelivery
  /// Whether `event` of `transition` (``JournalEventSink/transitionField``) was already
  /// delivered, for exactly-once replay after a crash; nil when it cannot tell. One
  /// transition can hold several events of one kind (two slots promoted by one decision),
  /// so the event is recognised by all its fields, not by its kind.
  func wasDelivered(_ event: JournalEvent, transition: String) -> Bool?
}

/// The journal fields of an event: the contract's, plus the transition for deduplication.
public func journalFields(of event: JournalEvent, transition: String?) -> [(name: String, value: String)] {
  var fields: [(name: String, value: String)] = [
    ("MESSAGE", event.message), ("MESSAGE_ID", event.kind.messageID), ("PRIORITY", String(event.priority)),
    ("SYSLOG_IDENTIFIER", "license-agent"), ("LICENSE_EVENT", event.kind.rawValue),
  ]
  fields += event.fields.map { ($0.name.rawValue, $0.value) }
  if let transition { fields.append((JournalField.transition.rawValue, transition)) }
  return fields
}

/// Sends events to the journal with their MESSAGE_ID, PRIORITY and `LICENSE_*` fields. It
/// never falls back by itself: the agent retries a refused event (bounded) before it writes
/// it to standard error, so that an event is acknowledged only once the journal took it.
public struct JournalEventSink: EventSink {
  /// `<state id>:<transition id>`: identifies the transition an event belongs to across
  /// restarts, so that an event replayed from the outbox is not logged twice.
  public static let transitionField = JournalField.transition.rawValue

  /// The fields journald itself adds, which no client can forge, that an entry must carry to
  /// count as this agent's: its user (`_UID`) and, under systemd, its unit
  /// (`_SYSTEMD_UNIT`). Any local user can write an entry with an event's fields to the
  /// journal socket (issue 20: one made the agent skip an event it never sent); not with
  /// these.
  public let trustedFields: [(name: String, value: String)]

  public init(trustedFields: [(name: String, value: String)] = JournalEventSink.ownTrustedFields()) {
    self.trustedFields = trustedFields
  }

  /// `_UID` of this process, and `_SYSTEMD_UNIT` when it runs in a systemd unit
  /// (`INVOCATION_ID` set, and its cgroup a `.service`'s).
  public static func ownTrustedFields() -> [(name: String, value: String)] {
    var fields = [(name: "_UID", value: String(getuid()))]
    if getenv("INVOCATION_ID") != nil, let unit = ownUnit() {
      fields.append((name: "_SYSTEMD_UNIT", value: unit))
    }
    return fields
  }

  /// The unit whose cgroup this process is in (`license-agent.service`), from
  /// /proc/self/cgroup.
  static func ownUnit() -> String? {
    let fd = open("/proc/self/cgroup", O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var buffer = [UInt8](repeating: 0, count: 4096)
    let count = read(fd, &buffer, buffer.count)
    guard count > 0 else { return nil }
    let text = String(decoding: buffer[0..<count], as: UTF8.self)
    guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("0::/") }) else { return nil }
    return line.split(separator: "/").last { $0.hasSuffix(".service") }.map(String.init)
  }

  @discardableResult
  public func send(_ event: JournalEvent, transition: String?) -> EventDelivery {
    let result = Journal.send(journalFields(of: event, transition: transition))
    if result >= 0 { return .delivered }
    return result == -ENOENT ? .unavailable : .refused(errno: -result)
  }

  public func wasDelivered(_ event: JournalEvent, transition: String) -> Bool? {
    Journal.contains(
      trustedFields + [(Self.transitionField, transition), ("MESSAGE_ID", event.kind.messageID)]
        + event.fields.map { ($0.name.rawValue, $0.value) })
  }
}

/// Writes events as readable lines on standard error: `<5>KEY_PROMOTED: message [fields]`.
/// The `<N>` prefix is the priority, understood by systemd when stderr is a journal stream.
public struct ConsoleEventSink: EventSink {
  public init() {}

  @discardableResult
  public func send(_ event: JournalEvent, transition: String?) -> EventDelivery {
    let fields = event.fields.map { "\($0.name.rawValue)=\($0.value)" }.joined(separator: " ")
    let line = "<\(event.priority)>\(event.kind.rawValue): \(event.message) [\(fields)]\n"
    let written = line.utf8CString.withUnsafeBufferPointer { write(2, $0.baseAddress, $0.count - 1) }
    return written >= 0 ? .delivered : .unavailable
  }

  public func wasDelivered(_ event: JournalEvent, transition: String) -> Bool? { nil }
}
