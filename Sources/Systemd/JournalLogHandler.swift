import FoundationEssentials
import Glibc
import LicenseCore
import Logging

/// A swift-log handler that writes each log line natively to the journal: PRIORITY from the
/// level, MESSAGE, SYSLOG_IDENTIFIER, CODE_FILE/CODE_LINE/CODE_FUNC, and each metadata item
/// as an upper-case field (invalid names are made valid or dropped, never sent to be
/// silently discarded). Falls back to standard error when there is no journal socket.
///
/// A value type, as swift-log's guide asks; logging never crashes or throws.
public struct JournalLogHandler: LogHandler {
  public var metadata: Logger.Metadata = [:]
  public var logLevel: Logger.Level = .info
  private let label: String
  private let useJournal: Bool

  /// `useJournal: nil` decides by whether the journal socket exists.
  public init(label: String, useJournal: Bool? = nil) {
    self.label = label
    self.useJournal = useJournal ?? Journal.isAvailable
  }

  public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
    get { metadata[key] }
    set { metadata[key] = newValue }
  }

  /// The syslog priority of a swift-log level.
  public static func priority(_ level: Logger.Level) -> Int {
    switch level {
    case .trace, .debug: return 7
    case .info: return 6
    case .notice: return 5
    case .warning: return 4
    case .error: return 3
    case .critical: return 2
    }
  }

  /// A valid journal field name for a metadata key (`peer.uid` -> `PEER_UID`), or nil.
  public static func fieldName(_ key: String) -> String? {
    var name = String(key.uppercased().map { ($0.isASCII && ($0.isLetter || $0.isNumber)) ? $0 : "_" })
    while name.hasPrefix("_") { name.removeFirst() }
    if let first = name.first, first.isNumber { name = "F_" + name }
    return JournalEvent.isValidFieldName(name) ? name : nil
  }

  public func log(event: LogEvent) {
    let (level, message, file, function, line) = (
      event.level, event.message, event.file, event.function, event.line
    )
    var merged = event.metadata.map { metadata.merging($0, uniquingKeysWith: { _, new in new }) } ?? metadata
    if let error = event.error { merged["error"] = "\(error)" }
    if useJournal {
      var fields: [(name: String, value: String)] = [
        ("MESSAGE", message.description), ("PRIORITY", String(Self.priority(level))),
        ("SYSLOG_IDENTIFIER", "license-agent"), ("CODE_FILE", file), ("CODE_LINE", String(line)),
        ("CODE_FUNC", function), ("LOGGER", label),
      ]
      for (key, value) in merged.sorted(by: { $0.key < $1.key }) {
        if let name = Self.fieldName(key), !fields.contains(where: { $0.name == name }) {
          fields.append((name, "\(value)"))
        }
      }
      if Journal.send(fields) >= 0 { return }
    }
    let details =
      merged.isEmpty
      ? ""
      : " [" + merged.sorted(by: { $0.key < $1.key }).map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        + "]"
    let text = "<\(Self.priority(level))>\(message)\(details)\n"
    _ = text.utf8CString.withUnsafeBufferPointer { write(2, $0.baseAddress, $0.count - 1) }
  }
}
