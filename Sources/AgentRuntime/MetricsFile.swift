import Glibc
import StandardIO

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

  /// The prefix of temporary files: in the same directory, and not `*.prom`, which
  /// node_exporter would read.
  public static func temporaryPrefix(of path: String) -> String { path + ".tmp." }

  /// A new temporary file's name: unpredictable, and created with `O_EXCL`, so that nothing
  /// put there beforehand (a FIFO would block the open, a symlink redirect the write) is
  /// ever opened.
  static func temporaryPath(of path: String) -> String {
    let letters = Array("abcdefghijklmnopqrstuvwxyz0123456789")
    return temporaryPrefix(of: path) + String((0..<12).map { _ in letters.randomElement()! })
  }

  public static func write(_ text: String, to path: String) -> Result<Void, WriteError> {
    var temporary = temporaryPath(of: path)
    var fd = StandardStream.createExclusive(temporary, mode: 0o644)
    for _ in 0..<3 where fd < 0 && errno == EEXIST {
      temporary = temporaryPath(of: path)
      fd = StandardStream.createExclusive(temporary, mode: 0o644)
    }
    guard fd >= 0 else {
      return .failure(WriteError(description: "cannot create \(temporary): \(errnoText())"))
    }
    guard StandardStream.write(Array(text.utf8), to: fd) else {
      let text = errnoText()
      close(fd)
      unlink(temporary)
      return .failure(WriteError(description: "cannot write \(temporary): \(text)"))
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

  /// Removes the file, and the temporary ones a crash left (regular files only); a file
  /// that is not there is fine. Never blocks: unlink does not open anything.
  public static func remove(_ path: String) {
    unlink(path)
    let directory = directory(of: path)
    let prefix = String(temporaryPrefix(of: path).dropFirst(directory == "/" ? 1 : directory.count + 1))
    guard let folder = opendir(directory) else { return }
    defer { closedir(folder) }
    var leftovers: [String] = []
    while let entry = readdir(folder) {
      let name = withUnsafeBytes(of: entry.pointee.d_name) {
        String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self)
      }
      if name.hasPrefix(prefix) { leftovers.append(directory + "/" + name) }
    }
    for leftover in leftovers {
      var info = stat()
      if lstat(leftover, &info) == 0 && (info.st_mode & S_IFMT) == S_IFREG { unlink(leftover) }
    }
  }

}
