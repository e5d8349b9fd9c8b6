import Foundation

#if canImport(FoundationNetworking)
  import FoundationNetworking
#endif

/// `license-agent-activate-https`: the activation client program for `client = "https"`
/// (contract §2 and §3). The agent runs it once per attempt: the request JSON on standard
/// input; the server's base URL, proxy, CA file and attempt timeout in LICENSE_AGENT_URL,
/// LICENSE_AGENT_PROXY, LICENSE_AGENT_CA_FILE and LICENSE_AGENT_TIMEOUT_SEC. It prints one JSON
/// object and exits 0 with `{"key"}`, 75 on a transient failure (`{"error","message",
/// "retryAfter"?}`), 1 on a permanent one (`{"error","message"}`).
///
/// HTTP through Foundation's URLSession, i.e. Debian's libcurl and OpenSSL: TLS is verified
/// against the system CA store (or the CA file), `https_proxy`/`no_proxy` are honoured, and
/// the code that parses what the network sends lives in this short-lived process.
@main
struct ActivateHTTPS {
  static let permanentStatuses: Set<Int> = [400, 403, 404, 409, 410, 422]
  static let transientStatuses: Set<Int> = [408, 429, 500, 502, 503, 504]
  static let maximumBody = 1 << 20

  static func main() {
    if CommandLine.arguments.dropFirst().first == "--help" {
      print(
        "license-agent-activate-https: the HTTPS activation client of license-agent; run by the agent (see license-agent(8))."
      )
      return
    }
    let env = ProcessInfo.processInfo.environment
    let timeout = Double(env["LICENSE_AGENT_TIMEOUT_SEC"] ?? "") ?? 30
    guard let base = env["LICENSE_AGENT_URL"], !base.isEmpty,
      let url = URL(string: base.hasSuffix("/") ? base + "v1/activations" : base + "/v1/activations"),
      let scheme = url.scheme, let host = url.host
    else {
      finish(
        1,
        [
          "error": "bad_configuration",
          "message": "no activation server: set url in [activation] of agent.toml",
        ])
    }
    guard scheme == "https" || (scheme == "http" && isLoopback(host)) else {
      finish(
        1,
        [
          "error": "bad_configuration",
          "message": "\(base) is not https://; plain http is allowed only to a loopback address",
        ])
    }
    if let proxy = env["LICENSE_AGENT_PROXY"], !proxy.isEmpty {
      for name in ["https_proxy", "HTTPS_PROXY", "http_proxy"] { setenv(name, proxy, 1) }
    }
    if let caFile = env["LICENSE_AGENT_CA_FILE"], !caFile.isEmpty {
      // swift-corelibs-foundation passes this to libcurl as CURLOPT_CAINFO.
      setenv("URLSessionCertificateAuthorityInfoFile", caFile, 1)
    }
    let body = FileHandle.standardInput.readDataToEndOfFile()

    var request = URLRequest(url: url, cachePolicy: .reloadIgnoringLocalCacheData, timeoutInterval: timeout)
    request.httpMethod = "POST"
    request.setValue("application/json", forHTTPHeaderField: "Content-Type")
    request.setValue("application/json", forHTTPHeaderField: "Accept")
    request.setValue("license-agent-activate-https/0.1", forHTTPHeaderField: "User-Agent")
    request.httpBody = body
    let configuration = URLSessionConfiguration.ephemeral
    configuration.timeoutIntervalForRequest = timeout
    configuration.timeoutIntervalForResource = timeout
    configuration.urlCache = nil
    let session = URLSession(configuration: configuration, delegate: NoRedirects(), delegateQueue: nil)
    let done = DispatchSemaphore(value: 0)
    nonisolated(unsafe) var reply: (Data?, URLResponse?, Error?) = (nil, nil, nil)
    session.dataTask(with: request) { data, response, error in
      reply = (data, response, error)
      done.signal()
    }.resume()
    if done.wait(timeout: .now() + timeout + 2) == .timedOut {
      finish(75, ["error": "timeout", "message": "no reply from \(base) within \(Int(timeout)) s"])
    }
    let (data, response, error) = reply
    if let error {
      finish(75, ["error": "network", "message": "\(base): \(error.localizedDescription)"])
    }
    guard let http = response as? HTTPURLResponse else {
      finish(75, ["error": "network", "message": "\(base): no HTTP reply"])
    }
    let payload = data ?? Data()
    let status = http.statusCode
    let json =
      payload.count <= maximumBody
      ? (try? JSONSerialization.jsonObject(with: payload)) as? [String: Any] : nil
    if status == 200 {
      guard payload.count <= maximumBody else {
        finish(
          1, ["error": "bad_key_from_server", "message": "the reply is larger than \(maximumBody) bytes"])
      }
      let contentType = http.value(forHTTPHeaderField: "Content-Type") ?? ""
      guard contentType.lowercased().contains("json") else {
        finish(
          1,
          [
            "error": "bad_key_from_server",
            "message": "the reply is \(contentType.isEmpty ? "untyped" : contentType), not JSON",
          ])
      }
      guard let key = json?["key"] as? String, !key.isEmpty else {
        finish(1, ["error": "bad_key_from_server", "message": "the reply holds no \"key\""])
      }
      finish(0, ["key": key])
    }
    let serverError = json?["error"] as? String
    let serverMessage = json?["message"] as? String
    if permanentStatuses.contains(status) {
      finish(
        1,
        ["error": serverError ?? "http_\(status)", "message": serverMessage ?? "HTTP \(status) from \(base)"])
    }
    if transientStatuses.contains(status) {
      var object: [String: Any] = [
        "error": "http_\(status)", "message": serverMessage ?? "HTTP \(status) from \(base)",
      ]
      if let retryAfter = http.value(forHTTPHeaderField: "Retry-After").flatMap(parseRetryAfter) {
        object["retryAfter"] = retryAfter
      }
      finish(75, object)
    }
    finish(
      1, ["error": "http_\(status)", "message": serverMessage ?? "unexpected HTTP \(status) from \(base)"])
  }

  /// `Retry-After` as seconds: a number of seconds, or an HTTP date.
  static func parseRetryAfter(_ value: String) -> Int? {
    let trimmed = value.trimmingCharacters(in: .whitespaces)
    if let seconds = Int(trimmed), seconds >= 0 { return seconds }
    let formatter = DateFormatter()
    formatter.locale = Locale(identifier: "en_US_POSIX")
    formatter.timeZone = TimeZone(identifier: "GMT")
    formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss zzz"
    guard let date = formatter.date(from: trimmed) else { return nil }
    return max(0, Int(date.timeIntervalSinceNow.rounded(.up)))
  }

  static func isLoopback(_ host: String) -> Bool {
    let bare = host.trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
    return bare == "localhost" || bare == "::1" || bare.hasPrefix("127.")
  }

  static func finish(_ status: Int32, _ object: [String: Any]) -> Never {
    if let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) {
      FileHandle.standardOutput.write(data + Data("\n".utf8))
    }
    exit(status)
  }
}

/// Redirects are not followed: an activation server answers itself, and a redirect could
/// lead to plain http or another host.
final class NoRedirects: NSObject, URLSessionTaskDelegate, @unchecked Sendable {
  func urlSession(
    _ session: URLSession, task: URLSessionTask, willPerformHTTPRedirection response: HTTPURLResponse,
    newRequest request: URLRequest, completionHandler: @escaping (URLRequest?) -> Void
  ) {
    completionHandler(nil)
  }
}
