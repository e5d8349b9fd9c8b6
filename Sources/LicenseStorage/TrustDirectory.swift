import FoundationEssentials
import Glibc
import LicenseCore

/// Reads the trusted issuers: one public JWK per `*.jwk` file in the trust directory
/// (`trusted-issuers/` in the configuration directory).
public enum TrustDirectory {
  /// A file that was not used, and why; the daemon logs these loudly.
  public struct Problem: Error, Sendable, Equatable, CustomStringConvertible {
    public var file: String
    public var problem: String
    public var description: String { "\(file): \(problem)" }
  }

  /// The most files read (a real directory holds a few issuers), and the largest file (a
  /// JWK is about 150 bytes): the directory is read at every reload, on the agent's queue.
  public static let maximumFiles = 256
  public static let maximumFileSize = 64 << 10

  /// Loads every `*.jwk` file of `directory`, in name order. Files that are not valid
  /// public Ed25519 JWKs, that hold a private key, or whose `kid` an earlier file already
  /// used are skipped and reported; so are files that are not regular files (a FIFO would
  /// block the read forever) or are larger than ``maximumFileSize``, and files past the
  /// first ``maximumFiles``. A missing directory is an empty trust store.
  public static func load(_ directory: String) -> (trust: TrustStore, problems: [Problem]) {
    var keys: [JWK] = []
    var (files, problems) = readFiles(
      directory, suffix: ".jwk", maximumFiles: maximumFiles, maximumSize: maximumFileSize)
    for (path, data) in files {
      do {
        let jwk = try JWK(json: data)
        if jwk.seed != nil {
          problems.append(
            Problem(
              file: path,
              problem:
                "holds a private key (\"d\"); only public issuer keys belong in the trust directory: replace it with the public JWK and keep the private one elsewhere"
            ))
        } else if keys.contains(where: { $0.kid == jwk.kid }) {
          problems.append(Problem(file: path, problem: "repeats the kid \"\(jwk.kid)\" of an earlier file"))
        } else {
          keys.append(jwk)
        }
      } catch {
        problems.append(Problem(file: path, problem: "is not a valid Ed25519 public JWK: \(error)"))
      }
    }
    return (TrustStore(keys), problems)
  }

  /// The `*suffix` files of `directory`, in name order, read whole: the first
  /// `maximumFiles`, regular files of at most `maximumSize` bytes; the others reported. A
  /// missing directory has none.
  static func readFiles(_ directory: String, suffix: String, maximumFiles: Int, maximumSize: Int) -> (
    files: [(path: String, data: Data)], problems: [Problem]
  ) {
    guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return ([], []) }
    var files: [(path: String, data: Data)] = []
    var problems: [Problem] = []
    let matching = names.sorted().filter { $0.hasSuffix(suffix) }
    for name in matching.dropFirst(maximumFiles) {
      problems.append(
        Problem(file: directory + "/" + name, problem: "is past the first \(maximumFiles) files: not read"))
    }
    for name in matching.prefix(maximumFiles) {
      let path = directory + "/" + name
      switch readRegularFile(path, limit: maximumSize) {
      case .success(let data): files.append((path, data))
      case .failure(let problem): problems.append(problem)
      }
    }
    return (files, problems)
  }

  /// A regular file's bytes, opened without blocking (O_NONBLOCK: a FIFO is refused, not
  /// waited on) and read to at most `limit` bytes.
  static func readRegularFile(_ path: String, limit: Int) -> Result<Data, Problem> {
    let fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY)
    guard fd >= 0 else { return .failure(Problem(file: path, problem: "cannot be read")) }
    defer { close(fd) }
    var info = stat()
    guard fstat(fd, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else {
      return .failure(Problem(file: path, problem: "is not a regular file: not read"))
    }
    guard info.st_size <= limit else {
      return .failure(
        Problem(file: path, problem: "is larger than \(limit) bytes: not read (a JWK is a few hundred)"))
    }
    var bytes = [UInt8](repeating: 0, count: limit + 1)
    var total = 0
    while total <= limit {
      let count = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress! + total, $0.count - total) }
      if count > 0 {
        total += count
      } else if count < 0 && errno == EINTR {
        continue
      } else {
        break
      }
    }
    guard total <= limit else {
      return .failure(
        Problem(file: path, problem: "is larger than \(limit) bytes: not read (a JWK is a few hundred)"))
    }
    return .success(Data(bytes.prefix(total)))
  }
}

/// The blocklist directory (rule B1): `*.jws` files beside the trust directory, read at
/// start and on reload, bounded like the trust directory's files.
public enum BlocklistDirectory {
  public static let maximumFiles = 64

  /// The lists' texts, in name order, with the files that could not be read.
  public static func load(_ directory: String) -> (
    lists: [(file: String, text: String)], problems: [TrustDirectory.Problem]
  ) {
    let (files, problems) = TrustDirectory.readFiles(
      directory, suffix: ".jws", maximumFiles: maximumFiles, maximumSize: BlocklistParser.maximumLength + 4096
    )
    return (files.map { ($0.path, String(decoding: $0.data, as: UTF8.self)) }, problems)
  }
}
