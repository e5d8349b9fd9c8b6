import CCurl
import FoundationEssentials
import Glibc
import SimpleJSON
import StandardIO

/// `license-agent-activate-https`: the activation client program for `client = "https"`
/// (contract §2 and §3). The agent runs it once per attempt: the request JSON on standard
/// input; the server's base URL, proxy, CA file and attempt timeout in LICENSE_AGENT_URL,
/// LICENSE_AGENT_PROXY, LICENSE_AGENT_CA_FILE and LICENSE_AGENT_TIMEOUT_SEC. It prints one JSON
/// object and exits 0 with `{"key"}`, 75 on a transient failure (`{"error","message",
/// "retryAfter"?}`; `{"error": "not_yet_available"}` when the server answers 409 with that
/// code to a request ahead of expiry, rule C6), 1 on a permanent one (`{"error","message"}`).
///
/// HTTP through Debian's libcurl and OpenSSL, called directly: TLS is verified against the
/// system CA store or the CA file (CURLOPT_CAINFO, which Foundation's URLSession on Linux
/// cannot set), `https_proxy`/`no_proxy` are honoured by libcurl, the `proxy` setting
/// overrides them, redirects are not followed, and the code that parses what the network
/// sends lives in this short-lived process.
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
    let body = Data(StandardStream.readAll())
    let reply = post(
      url.absoluteString, body: body, timeout: timeout, proxy: env["LICENSE_AGENT_PROXY"] ?? "",
      caFile: env["LICENSE_AGENT_CA_FILE"] ?? "")
    if let error = reply.error {
      if reply.tooLarge {
        finish(
          1, ["error": "bad_key_from_server", "message": "the reply is larger than \(maximumBody) bytes"])
      }
      finish(75, ["error": "network", "message": "\(base): \(error)"])
    }
    let payload = reply.body
    let status = reply.status
    let json = JSONValue.parse(payload)?.objectValue
    if status == 200 {
      let contentType = reply.headers["content-type"] ?? ""
      guard contentType.lowercased().contains("json") else {
        finish(
          1,
          [
            "error": "bad_key_from_server",
            "message": "the reply is \(contentType.isEmpty ? "untyped" : contentType), not JSON",
          ])
      }
      guard let key = json?["key"]?.stringValue, !key.isEmpty else {
        finish(1, ["error": "bad_key_from_server", "message": "the reply holds no \"key\""])
      }
      finish(0, ["key": key])
    }
    // What the server says is bounded here, where it enters (the agent bounds it again).
    let serverError = json?["error"]?.stringValue.map(ExternalText.code)
    let serverMessage = json?["message"]?.stringValue.map {
      ExternalText.bounded($0, limit: ExternalText.messageLimit)
    }
    if status == 409 && serverError == "not_yet_available" {
      // C6: the next period is not open yet; the agent retries inside its window.
      finish(
        75,
        [
          "error": "not_yet_available",
          "message": serverMessage ?? "the activation server has not opened the next period yet",
        ], retryAfter: reply.headers["retry-after"].flatMap(parseRetryAfter))
    }
    if permanentStatuses.contains(status) {
      finish(
        1,
        ["error": serverError ?? "http_\(status)", "message": serverMessage ?? "HTTP \(status) from \(base)"])
    }
    if transientStatuses.contains(status) {
      finish(
        75, ["error": "http_\(status)", "message": serverMessage ?? "HTTP \(status) from \(base)"],
        retryAfter: reply.headers["retry-after"].flatMap(parseRetryAfter))
    }
    finish(
      1, ["error": "http_\(status)", "message": serverMessage ?? "unexpected HTTP \(status) from \(base)"])
  }

  /// What libcurl received.
  final class Reply {
    var status = 0
    var body = Data()
    var headers: [String: String] = [:]
    var error: String?
    var tooLarge = false
  }

  /// One POST with libcurl; blocking, bounded by `timeout`.
  static func post(_ url: String, body: Data, timeout: Double, proxy: String, caFile: String) -> Reply {
    let reply = Reply()
    guard curl_global_init(Int(CURL_GLOBAL_DEFAULT)) == CURLE_OK, let curl = curl_easy_init() else {
      reply.error = "cannot initialise libcurl"
      return reply
    }
    defer { curl_easy_cleanup(curl) }
    let context = Unmanaged.passUnretained(reply).toOpaque()
    var headers: UnsafeMutablePointer<curl_slist>?
    for header in ["Content-Type: application/json", "Accept: application/json", "Expect:"] {
      headers = curl_slist_append(headers, header)
    }
    defer { curl_slist_free_all(headers) }
    let bytes = [UInt8](body)
    lac_setopt_string(curl, CURLOPT_URL, url)
    lac_setopt_string(curl, CURLOPT_PROTOCOLS_STR, "http,https")
    lac_setopt_long(curl, CURLOPT_POST, 1)
    lac_setopt_long(curl, CURLOPT_POSTFIELDSIZE, bytes.count)
    lac_setopt_long(curl, CURLOPT_FOLLOWLOCATION, 0)
    lac_setopt_long(curl, CURLOPT_NOSIGNAL, 1)
    lac_setopt_long(curl, CURLOPT_TIMEOUT_MS, Int(timeout * 1000))
    lac_setopt_string(curl, CURLOPT_USERAGENT, "license-agent-activate-https/0.1")
    lac_setopt_pointer(curl, CURLOPT_HTTPHEADER, headers)
    if !proxy.isEmpty { lac_setopt_string(curl, CURLOPT_PROXY, proxy) }
    if !caFile.isEmpty { lac_setopt_string(curl, CURLOPT_CAINFO, caFile) }
    lac_setopt_pointer(curl, CURLOPT_WRITEDATA, context)
    lac_setopt_callback(curl, CURLOPT_WRITEFUNCTION) { data, size, count, context in
      let reply = Unmanaged<Reply>.fromOpaque(context!).takeUnretainedValue()
      let length = size * count
      guard reply.body.count + length <= ActivateHTTPS.maximumBody else {
        reply.tooLarge = true
        return 0  // aborts the transfer
      }
      if let data {
        reply.body.append(UnsafeRawPointer(data).assumingMemoryBound(to: UInt8.self), count: length)
      }
      return length
    }
    lac_setopt_pointer(curl, CURLOPT_HEADERDATA, context)
    lac_setopt_callback(curl, CURLOPT_HEADERFUNCTION) { data, size, count, context in
      let reply = Unmanaged<Reply>.fromOpaque(context!).takeUnretainedValue()
      let length = size * count
      if let data {
        let line = String(decoding: UnsafeRawBufferPointer(start: data, count: length), as: UTF8.self)
        if line.hasPrefix("HTTP/") { reply.headers = [:] }  // a new response (e.g. after 100 Continue)
        if let colon = line.firstIndex(of: ":") {
          reply.headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingWhitespace()
        }
      }
      return length
    }
    let code = bytes.withUnsafeBufferPointer { buffer -> CURLcode in
      lac_setopt_pointer(curl, CURLOPT_POSTFIELDS, UnsafeMutableRawPointer(mutating: buffer.baseAddress))
      return curl_easy_perform(curl)
    }
    if code != CURLE_OK {
      reply.error = String(cString: curl_easy_strerror(code))
      return reply
    }
    var status = 0
    lac_getinfo_long(curl, CURLINFO_RESPONSE_CODE, &status)
    reply.status = status
    return reply
  }
  /// `Retry-After` as seconds: a number of seconds, or an HTTP date in the IMF-fixdate form
  /// every server sends (`Sun, 06 Nov 1994 08:49:37 GMT`, RFC 9110 §5.6.7).
  static func parseRetryAfter(_ value: String) -> Int? {
    parseRetryAfter(value, now: Date().timeIntervalSince1970)
  }

  static func parseRetryAfter(_ value: String, now: Double) -> Int? {
    let trimmed = value.trimmingWhitespace()
    if let seconds = Int(trimmed), seconds >= 0 { return seconds }
    let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    let parts = trimmed.split(separator: " ")
    guard parts.count == 6, parts[0].count == 4, parts[0].hasSuffix(","), parts[5] == "GMT",
      let day = Int(parts[1]), let month = months.firstIndex(of: String(parts[2])), let year = Int(parts[3])
    else { return nil }
    let clock = parts[4].split(separator: ":").compactMap { Int($0) }
    guard clock.count == 3, (1...31).contains(day), (0...23).contains(clock[0]), (0...59).contains(clock[1]),
      (0...60).contains(clock[2])
    else { return nil }
    var fields = tm()
    fields.tm_year = Int32(year - 1900)
    fields.tm_mon = Int32(month)
    fields.tm_mday = Int32(day)
    fields.tm_hour = Int32(clock[0])
    fields.tm_min = Int32(clock[1])
    fields.tm_sec = Int32(clock[2])
    let instant = timegm(&fields)
    guard instant != -1 else { return nil }
    return max(0, Int((Double(instant) - now).rounded(.up)))
  }

  static func isLoopback(_ host: String) -> Bool {
    let bare = host.trimming(["[", "]"])
    return bare == "localhost" || bare == "::1" || bare.hasPrefix("127.")
  }

  /// Prints the reply object (contract §3) and exits with `status`.
  static func finish(_ status: Int32, _ fields: [String: String], retryAfter: Int? = nil) -> Never {
    var object = fields.mapValues { JSONValue.string($0) }
    if let retryAfter { object["retryAfter"] = .number(Double(retryAfter)) }
    StandardStream.output(JSONValue.object(object).serialized + "\n")
    exit(status)
  }
}
