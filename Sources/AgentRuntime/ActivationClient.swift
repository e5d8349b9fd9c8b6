import FoundationEssentials
import LicenseCore
import SimpleJSON
import StandardIO

/// Asks the activation server for a key. Blocking: called from the agent's activation queue.
public protocol ActivationClient: Sendable {
  /// `kind` says whether the request is made ahead of expiry (C6, contract §2: the body
  /// then carries `"ahead": true` and `currentExpiresAt`); `currentSerial` is nil for a
  /// manual activation.
  func activate(code: ActivationCode, currentSerial: String?, kind: RenewalKind) -> ActivationOutcome
}

/// The exec activation client of contract §3: runs a program (no shell) per attempt, writes
/// the request JSON of §2 on its standard input, passes the server's URL, proxy, CA file and
/// attempt timeout in the environment, and reads its standard output: exit 0 and
/// `{"key": ...}` is success; exit 75 is transient (with an optional `{"retryAfter": s}`);
/// any other exit is permanent (`{"error", "message"}` read if present); a program running
/// past the attempt timeout is killed with its whole process group and counts as transient
/// (also when it closed its output but hangs, or exited while a child holds its pipes). Its standard error goes to
/// the journal through `logStderr`.
///
/// `client = "https"` runs the shipped `license-agent-activate-https` this way, so the daemon
/// itself never links an HTTP or TLS stack; `client = "exec"` runs the site's command.
public struct ExecActivationClient: ActivationClient {
  public var command: [String]
  public var url: String?
  public var proxy: String?
  public var caFile: String?
  public var timeout: TimeSpan
  public var product: String
  public var machineID: String
  public var logStderr: @Sendable (String) -> Void
  /// Where each attempt gets a cgroup of its own (under systemd), or nil.
  public var cgroups: AttemptCgroups?

  public init(
    command: [String], url: String?, proxy: String?, caFile: String?, timeout: TimeSpan, product: String,
    machineID: String, cgroups: AttemptCgroups? = nil, logStderr: @escaping @Sendable (String) -> Void
  ) {
    self.cgroups = cgroups
    self.command = command
    self.url = url
    self.proxy = proxy
    self.caFile = caFile
    self.timeout = timeout
    self.product = product
    self.machineID = machineID
    self.logStderr = logStderr
  }

  /// The request body of contract §2: `"ahead"` always, `currentExpiresAt` for a request
  /// ahead of expiry (C6).
  public func requestBody(code: ActivationCode, currentSerial: String?, kind: RenewalKind = .atExpiry)
    -> String
  {
    var body: [String: JSONValue] = [
      "activationCode": .string(code.value), "product": .string(product), "machineId": .string(machineID),
      "currentSerial": currentSerial.map(JSONValue.string) ?? .null, "ahead": .bool(kind.isAhead),
    ]
    if case .ahead(let currentExpiresAt) = kind {
      body["currentExpiresAt"] = .string(currentExpiresAt.rfc3339)
    }
    return JSONValue.object(body).serialized
  }

  /// The environment of the program: the agent's own (PATH, locale, proxies) plus the
  /// contract's variables.
  public func environment() -> [String: String] {
    var env = ProcessInfo.processInfo.environment
    for name in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID"] {
      env.removeValue(forKey: name)
    }
    env["LICENSE_AGENT_URL"] = url ?? ""
    env["LICENSE_AGENT_PROXY"] = proxy ?? ""
    env["LICENSE_AGENT_CA_FILE"] = caFile ?? ""
    env["LICENSE_AGENT_TIMEOUT_SEC"] = String(max(timeout.microseconds / 1_000_000, 1))
    return env
  }

  public func activate(code: ActivationCode, currentSerial: String?, kind: RenewalKind) -> ActivationOutcome {
    let body = requestBody(code: code, currentSerial: currentSerial, kind: kind)
    let result = runChild(
      command, environment: environment(),
      input: Array(body.utf8),
      timeout: timeout, maximumOutput: Self.maximumOutput, cgroups: cgroups)
    // The program may repeat the code it was sent (its diagnostics, the server's message):
    // redacted before anything is bounded, kept or logged (C1).
    let stderr = code.redacting(String(decoding: result.stderr, as: UTF8.self)).trimmingWhitespace()
    if !stderr.isEmpty { logStderr(ExternalText.bounded(stderr, limit: ExternalText.diagnosticsLimit)) }
    if result.leftoverProcesses && !result.timedOut {
      logStderr("the program exited leaving processes behind in its group; they were killed")
    }
    return Self.outcome(of: result, timeout: timeout, code: code)
  }

  /// What is read of the program's standard output and of its standard error, each: a
  /// reply is one small JSON object (a key is about a kilobyte).
  public static let maximumOutput = 64 << 10

  /// Classifies a finished attempt (contract §3). The reply's `error` and `message` come
  /// from outside (the site's program, or the server through the shipped client): bounded
  /// here, where they enter, so that what the state keeps and every status shows is small.
  /// A reply that repeats `code` has it replaced by the code's hint first (C1).
  public static func outcome(of result: ChildResult, timeout: TimeSpan, code: ActivationCode? = nil)
    -> ActivationOutcome
  {
    if let spawnError = result.spawnError {
      return .failure(.transient(error: spawnError, retryAfter: nil))
    }
    if result.timedOut {
      let what =
        result.outputClosedButRunning
        ? "the activation client closed its output but had not exited"
        : result.leftoverProcesses
          ? "the activation client exited, but a process it started kept its output open"
          : "the activation client had not answered"
      return .failure(
        .transient(
          error: "timeout: \(what) after \(timeout); it was killed with its whole process group",
          retryAfter: nil))
    }
    let reply = JSONValue.parse(result.stdout)?.objectValue ?? [:]
    let redact: (String) -> String = { code?.redacting($0) ?? $0 }
    let error = reply["error"]?.stringValue.map { ExternalText.code(redact($0)) }
    let message = reply["message"]?.stringValue.map {
      ExternalText.bounded(redact($0), limit: ExternalText.messageLimit)
    }
    let described = [error, message].compactMap { $0 }.joined(separator: ": ")
    switch result.exitStatus {
    case 0?:
      guard let key = reply["key"]?.stringValue, !key.isEmpty else {
        return .failure(.permanent(error: "bad_key_from_server (the client's reply holds no key)"))
      }
      return .key(key)
    case 75?:
      var retryAfter: TimeSpan?
      if case .number(let seconds)? = reply["retryAfter"], seconds.isFinite, seconds >= 0, seconds < 1e7 {
        retryAfter = TimeSpan(microseconds: Int64(seconds * 1_000_000))
      }
      if error == "not_yet_available" { return .failure(.notYetAvailable(retryAfter: retryAfter)) }
      return .failure(
        .transient(
          error: described.isEmpty ? "temporary failure (exit 75)" : described, retryAfter: retryAfter))
    case let status?:
      return .failure(
        .permanent(error: described.isEmpty ? "the activation client failed (exit \(status))" : described))
    case nil:
      return .failure(.transient(error: "the activation client was killed by a signal", retryAfter: nil))
    }
  }

  /// The shipped HTTPS client program: next to the daemon's own executable, else in
  /// /usr/libexec/license-agent/.
  public static func shippedHTTPSClient() -> String {
    let name = "license-agent-activate-https"
    if let executable = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
      let sibling =
        executable.split(separator: "/", omittingEmptySubsequences: false).dropLast()
        .joined(separator: "/") + "/" + name
      if FileManager.default.isExecutableFile(atPath: sibling) { return sibling }
    }
    return "/usr/libexec/license-agent/" + name
  }

  /// This machine's id (`/etc/machine-id`), or empty.
  public static func machineID() -> String {
    (try? String(contentsOfFile: "/etc/machine-id", encoding: .utf8))?.trimmingWhitespace() ?? ""
  }
}
