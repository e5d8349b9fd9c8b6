#if canImport(Glibc)
  import Glibc
#endif

/// The few helpers the packaged programs need that Foundation has only in its full module
/// (`FileHandle`, `CharacterSet`, `trimmingCharacters`). The programs import
/// `FoundationEssentials` alone: linked statically, the full Foundation brings ICU's data
/// and makes each binary about 60 MB instead of about 14 (packaging/README.md).
public enum StandardStream {
  /// Every byte of a file descriptor up to end of file (standard input by default);
  /// interrupted reads are retried, an error ends the read.
  public static func readAll(_ descriptor: Int32 = 0) -> [UInt8] {
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65_536)
    while true {
      let count = chunk.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
      if count > 0 {
        bytes += chunk[0..<count]
      } else if count < 0 && errno == EINTR {
        continue
      } else {
        return bytes
      }
    }
  }

  /// Writes all of `bytes` (partial and interrupted writes are continued); false on error.
  @discardableResult
  public static func write(_ bytes: some Collection<UInt8>, to descriptor: Int32) -> Bool {
    let buffer = Array(bytes)
    var offset = 0
    while offset < buffer.count {
      let count = buffer.withUnsafeBytes {
        Glibc.write(descriptor, $0.baseAddress! + offset, $0.count - offset)
      }
      if count < 0 {
        if errno == EINTR { continue }
        return false
      }
      offset += count
    }
    return true
  }

  /// Writes text to standard error.
  public static func error(_ text: String) { write(Array(text.utf8), to: 2) }

  /// Writes text to standard output.
  public static func output(_ text: String) { write(Array(text.utf8), to: 1) }
}

extension StringProtocol {
  /// Without leading and trailing white space and newlines.
  public func trimmingWhitespace() -> String { trimming { $0.isWhitespace || $0.isNewline } }

  /// Without leading and trailing characters of `set`.
  public func trimming(_ set: Set<Character>) -> String { trimming { set.contains($0) } }

  /// Without leading and trailing characters for which `drop` holds.
  public func trimming(where drop: (Character) -> Bool) -> String {
    guard let first = firstIndex(where: { !drop($0) }), let last = lastIndex(where: { !drop($0) }) else {
      return ""
    }
    return String(self[first...last])
  }
}
