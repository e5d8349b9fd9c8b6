import Foundation
import LicenseCore

/// An issuer for tests: signs keys with chosen claims, or arbitrary JSON for defective ones.
public struct TestIssuer: Sendable {
  public let jwk: JWK
  public var trust: TrustStore { TrustStore([jwk]) }

  public init(kid: String = "test-issuer") { jwk = JWK.generate(kid: kid) }

  /// A fixed reference instant (2027-01-01T00:00:00Z) so that tests read as dates.
  public static let t0 = Timestamp(seconds: 1_798_761_600)

  /// Claims of a valid commercial enterprise server key from `nbf` to `exp`.
  public static func claims(
    serial: String, slot: Slot = .server, edition: Edition = .enterprise, type: LicenseType = .commercial,
    units: Int = 10, nbf: Timestamp, exp: Timestamp, product: String = EngineConfiguration.defaultProduct
  ) -> LicenseClaims {
    LicenseClaims(
      issuer: "test-issuer", serial: serial, issuedAt: nbf, notBefore: nbf, expiresAt: exp, product: product,
      edition: edition, scheme: slot.scheme,
      osType: slot.scheme == .vmCount ? OSType(rawValue: slot.rawValue) : nil,
      licenseType: type, units: units)
  }

  /// A signed key with the given claims.
  public func key(_ claims: LicenseClaims, alg: String = "EdDSA") -> String {
    try! KeyParser.sign(claims, with: jwk, alg: alg)
  }

  /// A signed key for `slot` valid from `nbf` to `exp`.
  public func key(
    _ serial: String, slot: Slot = .server, edition: Edition = .enterprise, type: LicenseType = .commercial,
    nbf: Timestamp = TestIssuer.t0 - .days(365), exp: Timestamp,
    product: String = EngineConfiguration.defaultProduct
  ) -> String {
    key(
      Self.claims(
        serial: serial, slot: slot, edition: edition, type: type, nbf: nbf, exp: exp, product: product))
  }

  /// Signs arbitrary header and payload JSON text, for keys the parser must refuse.
  public func raw(header: String, payload: String) -> String {
    let input = Base64URL.encode(header.utf8) + "." + Base64URL.encode(payload.utf8)
    return input + "." + Base64URL.encode(Ed25519.sign(message: Array(input.utf8), seed: jwk.seed!)!)
  }

  /// The standard header for this issuer with `alg`.
  public func header(alg: String = "EdDSA") -> String {
    "{\"alg\":\"\(alg)\",\"typ\":\"JWT\",\"kid\":\"\(jwk.kid)\"}"
  }
}

/// A fresh temporary directory, removed by the caller with `removeTemporaryDirectory`.
public func makeTemporaryDirectory(_ prefix: String = "license-agent-test") -> String {
  let template = FileManager.default.temporaryDirectory.path + "/\(prefix).XXXXXX"
  var bytes = Array(template.utf8CString)
  guard let result = mkdtemp(&bytes) else { fatalError("mkdtemp failed") }
  return String(cString: result)
}

/// Removes a temporary directory, unless something is mounted under it (then nothing is
/// removed, which would otherwise delete what the mount shows, and the mounts are named on
/// standard error).
public func removeTemporaryDirectory(_ path: String) {
  let mounted = mountPoints(under: path)
  guard mounted.isEmpty else {
    FileHandle.standardError.write(Data("not removed: \(path): mounted under it: \(mounted)\n".utf8))
    return
  }
  try? FileManager.default.removeItem(atPath: path)
}

/// The mount points at or under `path` in this process's mount namespace
/// (`/proc/self/mountinfo`, whose paths escape space, tab, newline and backslash in octal).
public func mountPoints(under path: String) -> [String] {
  let root = URL(fileURLWithPath: path).resolvingSymlinksInPath().path
  guard let text = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return [] }
  return text.split(separator: "\n").compactMap { line -> String? in
    let fields = line.split(separator: " ")
    guard fields.count > 4 else { return nil }
    var point = String(fields[4])
    for (escaped, character) in [("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")] {
      point = point.replacingOccurrences(of: escaped, with: character)
    }
    return point == root || point.hasPrefix(root + "/") ? point : nil
  }
}

/// Unmounts `path`, checked: nil when it is no longer mounted, else what `umount` said.
public func unmount(_ path: String) -> String? {
  let result = try? runProcess("/bin/umount", [path])
  if mountPoints(under: path).contains(URL(fileURLWithPath: path).resolvingSymlinksInPath().path) {
    return "umount \(path) failed: \(result?.stderr ?? "could not run umount")"
  }
  return nil
}
