import Foundation
import Glibc
import LicenseCore

#if canImport(FoundationNetworking)
  import FoundationNetworking
#endif

/// The reference `activation-server` on a free loopback port, signing with the harness's
/// issuer, with helpers to inject faults and to read the requests it received.
public final class ActivationLab: @unchecked Sendable {
  public let url: String
  private let process: Process
  private let root: String

  /// `codes`: code -> (state, key validity). Keys are vm-count server, enterprise, subscription.
  /// The server's files live in a folder of their own (not the agent's).
  /// `renewableBefore`: from when before the current key's expiry each code's next period
  /// is open to a request ahead (C6); nil: at once.
  public init(
    issuer: TestIssuer, root _: String, codes: [String: (state: String, validity: String)],
    renewableBefore: String? = nil
  ) throws {
    let root = makeTemporaryDirectory("activation-lab")
    self.root = root
    try issuer.jwk.privateJSON.write(
      toFile: root + "/lab-issuer.private.jwk", atomically: true, encoding: .utf8)
    var entries: [String: Any] = [:]
    for (code, entry) in codes {
      var item: [String: Any] = [
        "state": entry.state, "serial": "LAB-" + String(code.suffix(5)), "edition": "enterprise",
        "scheme": "vm-count",
        "osType": "server", "licenseType": "subscription", "units": 5, "validity": entry.validity,
      ]
      if let renewableBefore { item["renewableBefore"] = renewableBefore }
      entries[code] = item
    }
    try JSONSerialization.data(withJSONObject: ["codes": entries]).write(
      to: URL(fileURLWithPath: root + "/codes.json"))
    process = Process()
    process.executableURL = URL(fileURLWithPath: productsDirectory() + "/activation-server")
    process.arguments = ["--signer", root + "/lab-issuer.private.jwk", "--catalog", root + "/codes.json"]
    let out = Pipe()
    process.standardOutput = out
    process.standardError = FileHandle.nullDevice
    try process.run()
    var line = Data()
    while !line.contains(10) {
      let chunk = out.fileHandleForReading.availableData
      if chunk.isEmpty { break }
      line += chunk
    }
    let text = String(decoding: line, as: UTF8.self)
    guard let range = text.range(of: "http://") else {
      throw ProcessError(description: "activation-server said: \(text)")
    }
    url = String(text[range.lowerBound...].prefix { !$0.isWhitespace })
  }

  deinit {
    stop()
    removeTemporaryDirectory(root)
  }

  /// Stops the server (then connections are refused).
  public func stop() {
    if process.isRunning {
      // SIGKILL: children of the test runner inherit its blocked signals, SIGTERM included.
      kill(process.processIdentifier, SIGKILL)
      process.waitUntilExit()
    }
  }

  /// POSTs fault settings to /admin/faults (see `activation-server --help`).
  public func faults(_ json: String) throws {
    _ = try http("POST", "/admin/faults", body: json)
  }

  /// The requests received so far.
  public func requests() throws -> [[String: String]] {
    let data = try http("GET", "/admin/requests", body: nil)
    let object = try JSONSerialization.jsonObject(with: data) as? [String: Any]
    return (object?["requests"] as? [[String: String]]) ?? []
  }

  private func http(_ method: String, _ path: String, body: String?) throws -> Data {
    var request = URLRequest(url: URL(string: url + path)!)
    request.httpMethod = method
    request.httpBody = body.map { Data($0.utf8) }
    let done = DispatchSemaphore(value: 0)
    nonisolated(unsafe) var result: Data?
    URLSession.shared.dataTask(with: request) { data, _, _ in
      result = data
      done.signal()
    }.resume()
    _ = done.wait(timeout: .now() + 10)
    guard let result else { throw ProcessError(description: "\(method) \(path) failed") }
    return result
  }
}

public struct ProcessError: Error, CustomStringConvertible {
  public var description: String
  public init(description: String) { self.description = description }
}
