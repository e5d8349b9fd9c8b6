import Glibc

/// The metrics text file (contract §8): replaced atomically, a temporary file in the same
/// directory renamed over it, mode 0644 whatever the umask, so that node_exporter never
/// reads half a file.
public enum MetricsFile {
  public struct WriteError: Error, Sendable, Equatable, CustomStringConvertible {
    public var description: String
  }

  public static func directory(of path: String) -> String {
    guard let slash = path.lastIndex(of: "/") else { return "." }
    return slash == path.startIndex ? "/" : String(path[..<slash])
  }

  /// The temporary file: in the same directory, and not `*.prom`, which node_exporter would read.
  public static func temporaryPath(of path: String) -> String { path + ".tmp" }

  public static func write(_ text: String, to path: String) -> Result<Void, WriteError> {
    let temporary = temporaryPath(of: path)
    let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o644)
    guard fd >= 0 else {
      return .failure(WriteError(description: "cannot create \(temporary): \(errnoText())"))
    }
    _ = fchmod(fd, 0o644)
    let bytes = Array(text.utf8)
    var offset = 0
    while offset < bytes.count {
      let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + offset, bytes.count - offset) }
      if written < 0 {
        if errno == EINTR { continue }
        let text = errnoText()
        close(fd)
        unlink(temporary)
        return .failure(WriteError(description: "cannot write \(temporary): \(text)"))
      }
      offset += written
    }
    guard close(fd) == 0 else {
      let text = errnoText()
      unlink(temporary)
      return .failure(WriteError(description: "cannot write \(temporary): \(text)"))
    }
    guard rename(temporary, path) == 0 else {
      let text = errnoText()
      unlink(temporary)
      return .failure(WriteError(description: "cannot rename \(temporary) to \(path): \(text)"))
    }
    return .success(())
  }

  /// Removes the file (and a temporary one a crash left); a file that is not there is fine.
  public static func remove(_ path: String) {
    unlink(path)
    unlink(temporaryPath(of: path))
  }

  static func errnoText() -> String { String(cString: strerror(errno)) }
}
