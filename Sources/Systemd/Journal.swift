import CSystemd
import Glibc
import LicenseCore

/// The systemd journal's native protocol: the one place where entries are written and read.
public enum Journal {
  /// The socket journald listens on for native entries.
  public static let socketPath = "/run/systemd/journal/socket"

  /// True when a journal accepts entries on this machine.
  public static var isAvailable: Bool { access(socketPath, W_OK) == 0 }

  /// Sends one entry with `sd_journal_sendv`. Field names must be valid
  /// (``JournalEvent/isValidFieldName(_:)``): journald drops others silently, so invalid
  /// names are refused here. Values may hold any bytes, newlines included.
  /// Returns 0, or a negative errno (`-ENOENT` when there is no journal). libsystemd itself
  /// reports success when the socket does not exist ("fail silently"), which would lose
  /// every event of an agent told to use the journal where none runs: the socket is
  /// checked first, so that callers fall back to standard error.
  @discardableResult
  public static func send(_ fields: [(name: String, value: String)]) -> Int32 {
    precondition(fields.allSatisfy { JournalEvent.isValidFieldName($0.name) }, "invalid journal field name")
    guard isAvailable else { return -ENOENT }
    let buffers = fields.map { field -> UnsafeMutableRawBufferPointer in
      let bytes = Array("\(field.name)=\(field.value)".utf8)
      let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(bytes.count, 1), alignment: 1)
      buffer.copyBytes(from: bytes)
      return UnsafeMutableRawBufferPointer(rebasing: buffer[0..<bytes.count])
    }
    defer { for buffer in buffers { buffer.deallocate() } }
    var vectors = buffers.map { iovec(iov_base: $0.baseAddress, iov_len: $0.count) }
    return sd_journal_sendv(&vectors, Int32(vectors.count))
  }

  /// Whether the local journal holds an entry with every field `name=value` of `fields`;
  /// nil when the journal cannot be read (no permission, no journal).
  public static func contains(_ fields: [(name: String, value: String)]) -> Bool? {
    var journal: OpaquePointer?
    guard sd_journal_open(&journal, Int32(SD_JOURNAL_LOCAL_ONLY)) >= 0, let journal else { return nil }
    defer { sd_journal_close(journal) }
    for (name, value) in fields {
      // Matches on different fields are ANDed.
      let match = Array("\(name)=\(value)".utf8)
      guard match.withUnsafeBytes({ sd_journal_add_match(journal, $0.baseAddress, match.count) }) >= 0 else {
        return nil
      }
    }
    let next = sd_journal_next(journal)
    return next < 0 ? nil : next > 0
  }
}
