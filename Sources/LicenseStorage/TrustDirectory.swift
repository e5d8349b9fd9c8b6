import FoundationEssentials
import LicenseCore

/// Reads the trusted issuers: one public JWK per `*.jwk` file in the trust directory
/// (`trusted-issuers/` in the configuration directory).
public enum TrustDirectory {
  /// A file that was not used, and why; the daemon logs these loudly.
  public struct Problem: Sendable, Equatable, CustomStringConvertible {
    public var file: String
    public var problem: String
    public var description: String { "\(file): \(problem)" }
  }

  /// Loads every `*.jwk` file of `directory`, in name order. Files that are not valid
  /// public Ed25519 JWKs, that hold a private key, or whose `kid` an earlier file already
  /// used are skipped and reported. A missing directory is an empty trust store.
  public static func load(_ directory: String) -> (trust: TrustStore, problems: [Problem]) {
    guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else {
      return (TrustStore(), [])
    }
    var keys: [JWK] = []
    var problems: [Problem] = []
    for name in names.sorted() where name.hasSuffix(".jwk") {
      let path = directory + "/" + name
      guard let data = FileManager.default.contents(atPath: path) else {
        problems.append(Problem(file: path, problem: "cannot be read"))
        continue
      }
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
}
