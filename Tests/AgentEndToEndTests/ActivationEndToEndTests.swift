import Foundation
import Glibc
import LicenseCore
import LicenseTestSupport
import Testing

/// Activation-code mode end to end: the built daemon, the shipped HTTPS client program, the
/// reference activation server (or an exec plugin script), and the real journal.
@Suite(.serialized) struct ActivationEndToEndTests {
  static let code = "ABCDE-12345-FGHIJ-67890"
  /// Short delays so that the tests run in seconds; renewal at expiry (C2–C4): the tests of
  /// renewal ahead (C6) set their own window.
  static let fast = """
    renew-before = "0s"
    attempt-timeout = "2s"
    retry-initial = "300ms"
    retry-max = "1s"
    alert-after = "3s"
    """

  init() throws {
    try #require(AgentHarness.journalIsRunning, "no journal socket: start systemd-journald (.ci/run does)")
  }

  /// An agent configured for `lab`, with the code activated (its key valid `validity`).
  func activated(lab: ActivationLab, agent: AgentHarness) throws -> String {
    try "[activation]\nurl = \"\(lab.url)\"\n\(Self.fast)\n".writeAsConfiguration(of: agent)
    #expect(try agent.start())
    let codeFile = agent.root + "/code"
    try Self.code.write(toFile: codeFile, atomically: true, encoding: .utf8)
    chmod(codeFile, 0o600)
    let result = try agent.agentctl(["activate", "--code-file", codeFile])
    #expect(result.status == 0, "\(result.stderr)")
    let status = try statusJSON(agent)
    let slot = try #require((status["slots"] as? [[String: Any]])?.first)
    let active = try #require(slot["active"] as? [String: Any])
    #expect(active["source"] as? String == "activation-code")
    #expect(active["codeHint"] as? String == "67890")
    return try #require(active["serial"] as? String)
  }

  func statusJSON(_ agent: AgentHarness) throws -> [String: Any] {
    let result = try agent.agentctl(["status", "--json"])
    return try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
  }

  func events(_ agent: AgentHarness, _ kind: EventKind, count: Int = 1, seconds: Double = 15) throws
    -> [[String: String]]
  {
    try agent.waitForJournal(
      ["MESSAGE_ID=\(kind.messageID)", "_PID=\(agent.pid!)"], count: count, seconds: seconds)
  }

  @Test func C2_renewsAtExpiryThrough503And429WithRetryAfter() throws {
    let agent = try AgentHarness()
    let lab = try ActivationLab(issuer: agent.issuer, root: agent.root, codes: [Self.code: ("valid", "3s")])
    let first = try activated(lab: lab, agent: agent)
    try lab.faults(#"{"failNext": 1, "status": 503, "retryAfter": 2}"#)
    let failed503 = try #require(try events(agent, .activationAttemptFailed).first)
    #expect(failed503["LICENSE_ERROR"]?.hasPrefix("http_503") == true)
    #expect(failed503["LICENSE_ATTEMPT"] == "1")
    #expect(failed503["LICENSE_CODE_HINT"] == "67890")
    try lab.faults(#"{"failNext": 1, "status": 429, "retryAfter": 1}"#)
    let failures = try events(agent, .activationAttemptFailed, count: 2)
    let failed429 = try #require(failures.last)
    #expect(failed429["LICENSE_ERROR"]?.hasPrefix("http_429") == true)
    // Retry-After honoured: the next attempt is at least 1 s after the failure.
    let loggedAt = try #require(failed429["__REALTIME_TIMESTAMP"].flatMap(Int64.init))
    let next = try #require(failed429["LICENSE_NEXT_ATTEMPT_AT"].flatMap(Timestamp.init(rfc3339:)))
    #expect(next.microseconds - loggedAt >= 900_000)
    let renewed = try #require(try events(agent, .activationRenewed).first)
    #expect(renewed["PRIORITY"] == "5")
    #expect(renewed["LICENSE_ATTEMPT"] == "3")
    #expect(renewed["LICENSE_PREVIOUS_SERIAL"] == first)
    #expect(renewed["LICENSE_CODE_HINT"] == "67890")
    // The renewal requests name the key they continue, and came at or after its expiry.
    let requests = try lab.requests()
    #expect(requests.count == 4)
    #expect(requests.dropFirst().allSatisfy { $0["currentSerial"] == first })
    #expect(try StatusExit.of(agent) == 0)
  }

  @Test func C4_aServerThatStaysDownAlertsAfterTheDelayAndRenewsWhenItReturns() throws {
    let agent = try AgentHarness()
    var lab = try ActivationLab(issuer: agent.issuer, root: agent.root, codes: [Self.code: ("valid", "2s")])
    _ = try activated(lab: lab, agent: agent)
    lab.stop()  // connection refused from now on
    let alert = try #require(try events(agent, .manualActivationRequired).first)
    #expect(alert["PRIORITY"] == "1")
    #expect(alert["LICENSE_CODE_HINT"] == "67890")
    #expect(alert["LICENSE_ERROR"]?.contains("network") == true)
    let failedSoFar = try agent.journal([
      "MESSAGE_ID=\(EventKind.activationAttemptFailed.messageID)", "_PID=\(agent.pid!)",
    ])
    #expect(failedSoFar.count >= 2)
    let down = try agent.agentctl(["status"])
    #expect(down.status == 2)
    #expect(down.stdout.contains("MANUAL ACTIVATION REQUIRED"))
    // The server returns (on another port: the configuration is reloaded).
    lab = try ActivationLab(issuer: agent.issuer, root: agent.root, codes: [Self.code: ("valid", "1d")])
    try "[activation]\nurl = \"\(lab.url)\"\n\(Self.fast)\n".writeAsConfiguration(of: agent)
    kill(agent.pid!, SIGHUP)
    let renewed = try #require(try events(agent, .activationRenewed).first)
    #expect(renewed["MESSAGE"]?.contains("alert is cleared") == true)
    #expect(try events(agent, .manualActivationRequired).count == 1, "alerted once")
    #expect(try StatusExit.of(agent) == 0)
    // The metrics say the same: renewed, the alert cleared, the failures counted.
    #expect(try MonitoringTests.agreement(agent) == [])
    let metrics = MonitoringTests.samples(try String(contentsOfFile: agent.metricsFile, encoding: .utf8))
    #expect(metrics["license_agent_alert{slot=\"server\",alert=\"manual_activation_required\"}"] == "0")
    #expect(metrics["license_agent_activation_attempts_total{slot=\"server\",result=\"renewed\"}"] == "1")
    #expect(
      Int(metrics["license_agent_activation_attempts_total{slot=\"server\",result=\"transient\"}"] ?? "") ?? 0
        >= 2)
  }

  @Test func C3_aDroppedConnectionOrAMalformedReplyIsHandledAndRenewalFollows() throws {
    let agent = try AgentHarness()
    let lab = try ActivationLab(issuer: agent.issuer, root: agent.root, codes: [Self.code: ("valid", "2s")])
    _ = try activated(lab: lab, agent: agent)
    try lab.faults(#"{"drop": true}"#)
    let dropped = try #require(try events(agent, .activationAttemptFailed).first)
    #expect(dropped["LICENSE_ERROR"]?.hasPrefix("network") == true, "\(dropped["LICENSE_ERROR"] ?? "")")
    try lab.faults(#"{"reset": true}"#)
    #expect(try events(agent, .activationRenewed).count == 1)
    #expect(try StatusExit.of(agent) == 0)
  }

  @Test func C3_aPermanentFailureAlertsAtOnceAndIsNotRetried() throws {
    let agent = try AgentHarness()
    let lab = try ActivationLab(issuer: agent.issuer, root: agent.root, codes: [Self.code: ("valid", "2s")])
    _ = try activated(lab: lab, agent: agent)
    try lab.faults(#"{"failNext": 100, "status": 403, "error": "code_blocked"}"#)
    let alert = try #require(try events(agent, .manualActivationRequired).first)
    #expect(alert["LICENSE_ERROR"]?.hasPrefix("code_blocked") == true)
    #expect(alert["LICENSE_ATTEMPT"] == "1")
    let requestsAtAlert = try lab.requests().count
    // No retry on its way: the agent plans no renewal attempt, and made no request since.
    let next = try agent.settle()
    #expect(next?.action != "renewal", "next: \(String(describing: next))")
    #expect(try lab.requests().count == requestsAtAlert, "no retry after a permanent failure")
    let status = try statusJSON(agent)
    let renewal = (status["slots"] as? [[String: Any]])?.first?["renewal"] as? [String: Any]
    #expect(renewal?["state"] as? String == "stopped")
    #expect(renewal?["alert"] as? Bool == true)
    // The heading says what the slot is: expired, waiting for a human (not "renewing").
    let text = try agent.agentctl(["status"]).stdout
    #expect(text.contains(": EXPIRED, waiting for manual activation (the code …"), "\(text)")
    #expect(!text.contains("RENEWING"), "\(text)")
    #expect(try MonitoringTests.agreement(agent) == [])
    let metrics = MonitoringTests.samples(try String(contentsOfFile: agent.metricsFile, encoding: .utf8))
    #expect(metrics["license_agent_alert{slot=\"server\",alert=\"manual_activation_required\"}"] == "1")
    #expect(metrics["license_agent_slot_expired{slot=\"server\"}"] == "1")
    #expect(metrics["license_agent_activation_attempts_total{slot=\"server\",result=\"permanent\"}"] == "1")
  }

  @Test func C3_aKeyFromTheServerThatFailsTheChecksIsPermanent() throws {
    let agent = try AgentHarness()
    let lab = try ActivationLab(issuer: agent.issuer, root: agent.root, codes: [Self.code: ("valid", "2s")])
    _ = try activated(lab: lab, agent: agent)
    try lab.faults(#"{"badSignature": true}"#)
    let alert = try #require(try events(agent, .manualActivationRequired).first)
    #expect(alert["LICENSE_ERROR"]?.contains("bad_key_from_server") == true)
    #expect(
      alert["LICENSE_ERROR"]?.contains("bad_signature") == true
        || alert["LICENSE_ERROR"]?.contains("invalid_key") == true)
  }

  @Test func aRestartInTheMiddleOfRetriesContinuesTheSchedule() throws {
    let agent = try AgentHarness()
    let lab = try ActivationLab(issuer: agent.issuer, root: agent.root, codes: [Self.code: ("valid", "2s")])
    _ = try activated(lab: lab, agent: agent)
    try lab.faults(#"{"failNext": 100, "status": 503, "retryAfter": 1}"#)
    _ = try events(agent, .activationAttemptFailed, count: 2)
    #expect(agent.stop() == 0)
    let saved = try statusJSON(agent)  // from the state file: the agent is down
    let renewal = try #require((saved["slots"] as? [[String: Any]])?.first?["renewal"] as? [String: Any])
    let attempts = try #require(renewal["attempts"] as? Int)
    #expect(attempts >= 2)
    #expect(renewal["nextAttemptAt"] as? String != nil)
    #expect(try agent.start())
    let next = try #require(try events(agent, .activationAttemptFailed).first)
    #expect(next["LICENSE_ATTEMPT"] == String(attempts + 1), "the count continues")
  }

  @Test func C5_aMalformedCodeIsRefusedWithoutAnyRequest() throws {
    let agent = try AgentHarness()
    let lab = try ActivationLab(issuer: agent.issuer, root: agent.root, codes: [Self.code: ("valid", "1d")])
    try "[activation]\nurl = \"\(lab.url)\"\n".writeAsConfiguration(of: agent)
    #expect(try agent.start())
    let result = try agent.agentctl(["activate", "--code-stdin"], input: "ABCDE-12345-FGHIJ\n")
    #expect(result.status == 1)
    #expect(result.stderr.contains("invalid_code_format"))
    let direct = try VarlinkCallHelper.call(
      agent.socketPath, "io.licenseagent.Agent.Activate", ["code": "not-a-code", "role": "active"])
    #expect(direct.contains("invalid_code_format"))
    #expect(try lab.requests().isEmpty)
  }

  /// An agent whose exec plugin (Fixtures/exec_plugin.sh) answers from `pluginDir`, first
  /// with a key that expires 2 s from `now`.
  func execPluginAgent() throws -> (AgentHarness, pluginDir: String, plugin: String, now: Timestamp) {
    let agent = try AgentHarness()
    let plugin = URL(fileURLWithPath: #filePath).deletingLastPathComponent().path + "/Fixtures/exec_plugin.sh"
    let pluginDir = agent.root + "/plugin"
    try FileManager.default.createDirectory(atPath: pluginDir, withIntermediateDirectories: true)
    agent.environment["PLUGIN_DIR"] = pluginDir
    let now = AgentHarness.now()
    try agent.key("EXEC-1", nbf: now - .days(1), exp: now + .seconds(2)).write(
      toFile: pluginDir + "/key", atomically: true, encoding: .utf8)
    return (agent, pluginDir, plugin, now)
  }

  /// An agent whose key EXEC-1 (2 s) came from the exec plugin with the code, the plugin's
  /// next key EXEC-2 (a day) in place: the renewal at EXEC-1's expiry is the test's.
  func activatedThroughExecPlugin() throws -> (AgentHarness, pluginDir: String) {
    let (agent, pluginDir, plugin, now) = try execPluginAgent()
    try """
    [activation]
    client = "exec"
    command = ["\(plugin)"]
    url = "https://activation.example.net"
    \(Self.fast)
    """.writeAsConfiguration(of: agent)
    #expect(try agent.start())
    try Self.code.write(toFile: agent.root + "/code", atomically: true, encoding: .utf8)
    #expect(try agent.agentctl(["activate", "--code-file", agent.root + "/code"]).status == 0)
    try agent.key("EXEC-2", nbf: now - .days(1), exp: now + .days(1)).write(
      toFile: pluginDir + "/key", atomically: true, encoding: .utf8)
    return (agent, pluginDir)
  }

  @Test func anExecPluginRenewsThroughTransientFailuresAndTimeouts() throws {
    let (agent, pluginDir) = try activatedThroughExecPlugin()
    // The renewal: one timeout, then two exit-75 answers with retryAfter, then the key.
    try "sleep".write(toFile: pluginDir + "/mode", atomically: true, encoding: .utf8)
    let timedOut = try #require(try events(agent, .activationAttemptFailed).first)
    #expect(timedOut["LICENSE_ERROR"]?.contains("timeout") == true)
    try "fail 2".write(toFile: pluginDir + "/mode", atomically: true, encoding: .utf8)
    let renewed = try #require(try events(agent, .activationRenewed).first)
    #expect(renewed["LICENSE_SERIAL"] == agent.serial("EXEC-2"))
    // One or more timeouts (attempts made while the plugin slept), then exactly two busy
    // answers, then the key: the renewal's attempt number counts them all.
    let failures = try agent.journal([
      "MESSAGE_ID=\(EventKind.activationAttemptFailed.messageID)", "_PID=\(agent.pid!)",
    ])
    let timeouts = failures.filter { $0["LICENSE_ERROR"]?.contains("timeout") == true }.count
    let busy = failures.filter { $0["LICENSE_ERROR"]?.hasPrefix("upstream_busy") == true }.count
    #expect(timeouts >= 1 && busy == 2 && timeouts + busy == failures.count)
    #expect(renewed["LICENSE_ATTEMPT"] == String(failures.count + 1))
    // The plugin received the contract's request and environment.
    let requests = try String(contentsOfFile: pluginDir + "/requests", encoding: .utf8)
    #expect(requests.contains("\"currentSerial\":\"\(agent.serial("EXEC-1"))\""))
    #expect(requests.contains("\"product\":\"svm-protection\""))
    #expect(requests.contains("url=https://activation.example.net timeout=2"))
    // Its standard error went to the journal.
    let stderrLogged = try agent.waitForJournal(["_PID=\(agent.pid!)", "PRIORITY=4"])
    #expect(stderrLogged.contains { $0["MESSAGE"]?.contains("upstream busy") == true })
  }

  /// Activation clients that misbehave (issue: hostile and careless client programs): one
  /// that closes its output and hangs, one whose background child keeps its pipes, one that
  /// exits leaving a child behind. Each attempt ends at its deadline at the latest, the
  /// whole process group is killed and reaped (no process left, not even a zombie), and
  /// the next activation works.
  @Test func misbehavingClientProgramsEndAtTheDeadlineAndLeaveNoProcessBehind() throws {
    let (agent, pluginDir, plugin, now) = try execPluginAgent()
    try "[activation]\nclient = \"exec\"\ncommand = [\"\(plugin)\"]\n\(Self.fast)\n".writeAsConfiguration(
      of: agent)
    try agent.key("EXEC-9", nbf: now - .days(1), exp: now + .days(1)).write(
      toFile: pluginDir + "/key", atomically: true, encoding: .utf8)
    #expect(try agent.start())
    let cases: [(mode: String, error: String)] = [
      ("closed-hang", "closed its output but had not exited after 2s"),
      ("background", "exited, but a process it started kept its output open after 2s"),
    ]
    for (mode, error) in cases {
      try mode.write(toFile: pluginDir + "/mode", atomically: true, encoding: .utf8)
      let result = try agent.agentctl(["activate", "--code-stdin"], input: Self.code)
      #expect(result.status == 75, "\(mode): \(result.stderr)")
      #expect(result.stderr.contains("timeout: the activation client \(error)"), "\(mode): \(result.stderr)")
      #expect(result.stderr.contains("killed with its whole process group"), "\(mode)")
      try expectGone(pluginDir, mode)
    }
    // A child left behind that holds nothing: the answer counts, the child is killed.
    try "orphan".write(toFile: pluginDir + "/mode", atomically: true, encoding: .utf8)
    let orphan = try agent.agentctl(["activate", "--code-stdin"], input: Self.code)
    #expect(orphan.status == 0, "\(orphan.stderr)")
    try expectGone(pluginDir, "orphan")
    let warned = try agent.waitForJournal(["_PID=\(agent.pid!)", "PRIORITY=4"])
    #expect(warned.contains { $0["MESSAGE"]?.contains("leaving processes behind") == true })
    #expect(try StatusExit.of(agent) == 0)
  }

  /// The processes an exec plugin mode recorded in `pids` no longer exist (no /proc entry:
  /// killed and reaped, not even a zombie).
  func expectGone(_ pluginDir: String, _ mode: String) throws {
    let pids = try String(contentsOfFile: pluginDir + "/pids", encoding: .utf8).split(separator: " ")
      .map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
    #expect(!pids.isEmpty)
    // The agent replies once the attempt is over: by then the group is killed and reaped.
    for pid in pids {
      #expect(
        !FileManager.default.fileExists(atPath: "/proc/\(pid)"), "\(mode): process \(pid) is still there")
    }
    try FileManager.default.removeItem(atPath: pluginDir + "/pids")
  }

  @Test func anExecPluginsPermanentRefusalAlertsAtOnce() throws {
    let (agent, pluginDir, plugin, now) = try execPluginAgent()
    try "[activation]\nclient = \"exec\"\ncommand = [\"\(plugin)\"]\n\(Self.fast)\n".writeAsConfiguration(
      of: agent)
    #expect(try agent.start())
    #expect(try agent.agentctl(["activate", "--code-stdin"], input: Self.code).status == 0)
    try "permanent".write(toFile: pluginDir + "/mode", atomically: true, encoding: .utf8)
    let alert = try #require(try events(agent, .manualActivationRequired).first)
    #expect(alert["LICENSE_ERROR"] == "code_blocked: blocked by the vendor")
    // Manual activation clears it (C5).
    try "ok".write(toFile: pluginDir + "/mode", atomically: true, encoding: .utf8)
    try agent.key("EXEC-3", nbf: now - .days(1), exp: now + .days(1)).write(
      toFile: pluginDir + "/key", atomically: true, encoding: .utf8)
    #expect(try agent.agentctl(["activate", "--code-stdin"], input: "ZZZZZ-11111-YYYYY-22222").status == 0)
    #expect(try StatusExit.of(agent) == 0)
  }

  @Test func C1_noActivationCodeAppearsInTheJournalStatusOrReadableFiles() throws {
    let agent = try AgentHarness()
    let lab = try ActivationLab(issuer: agent.issuer, root: agent.root, codes: [Self.code: ("valid", "2s")])
    _ = try activated(lab: lab, agent: agent)
    try lab.faults(#"{"failNext": 1, "status": 503}"#)
    _ = try events(agent, .activationRenewed)
    let journal = try runProcess("/bin/journalctl", ["-o", "json", "--no-pager", "_PID=\(agent.pid!)"])
    #expect(!journal.stdout.isEmpty)
    #expect(!journal.stdout.contains(Self.code))
    #expect(journal.stdout.contains("67890"))
    for arguments in [["status"], ["status", "--json"]] {
      let output = try agent.agentctl(arguments)
      #expect(!output.stdout.contains(Self.code) && !output.stderr.contains(Self.code))
    }
    let direct = try VarlinkCallHelper.call(agent.socketPath, "io.licenseagent.Agent.GetStatus", [:])
    #expect(!direct.contains(Self.code))
    #expect(
      try String(contentsOfFile: "/proc/\(agent.pid!)/cmdline", encoding: .utf8).contains(Self.code) == false)
    // The state file holds it (to renew), readable by its owner only; no file readable by
    // others holds it.
    var info = stat()
    #expect(stat(agent.stateFile, &info) == 0 && info.st_mode & 0o077 == 0)
    #expect(stat(agent.stateDirectory, &info) == 0 && info.st_mode & 0o777 == 0o700)
    let files = FileManager.default.enumerator(atPath: agent.root)?.allObjects as? [String] ?? []
    for file in files {
      let path = agent.root + "/" + file
      guard stat(path, &info) == 0, info.st_mode & S_IFMT == S_IFREG, info.st_mode & 0o004 != 0 else {
        continue
      }
      let text = String(decoding: FileManager.default.contents(atPath: path) ?? Data(), as: UTF8.self)
      #expect(!text.contains(Self.code), "\(file) is readable by others and holds the code")
    }
  }
}

/// agentctl status's exit code.
enum StatusExit {
  static func of(_ agent: AgentHarness) throws -> Int32 { try agent.agentctl(["status"]).status }
}

/// A raw Varlink call through the python-free path: the built agentctl is not needed.
enum VarlinkCallHelper {
  static func call(_ socket: String, _ method: String, _ parameters: [String: String]) throws -> String {
    let body = try JSONSerialization.data(withJSONObject: ["method": method, "parameters": parameters])
    let script =
      "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(sys.stdin.buffer.read()+b'\\0'); print(s.recv(65536).rstrip(b'\\0').decode())"
    return try runProcess(python3(), ["-c", script, socket], input: String(decoding: body, as: UTF8.self))
      .stdout
  }
}

extension ActivationEndToEndTests {
  /// The code reaches the client program on its standard input only: never in its
  /// arguments or environment, which other users can read in /proc and ps.
  @Test func C1_theCodeReachesTheClientProgramOnStandardInputOnly() throws {
    let (agent, pluginDir, plugin, _) = try execPluginAgent()
    try """
    [activation]
    client = "exec"
    command = ["\(plugin)", "--profile", "svm"]
    url = "https://activation.example.net"
    \(Self.fast)
    """.writeAsConfiguration(of: agent)
    #expect(try agent.start())
    try Self.code.write(toFile: agent.root + "/code", atomically: true, encoding: .utf8)
    #expect(try agent.agentctl(["activate", "--code-file", agent.root + "/code"]).status == 0)
    let request = try String(contentsOfFile: pluginDir + "/requests", encoding: .utf8)
    #expect(request.contains(Self.code), "the request on standard input carries the code")
    let argv = try String(contentsOfFile: pluginDir + "/argv", encoding: .utf8)
    #expect(argv.contains("--profile") && !argv.contains(Self.code), "\(argv)")
    let env = try String(contentsOfFile: pluginDir + "/env", encoding: .utf8)
    #expect(env.contains("LICENSE_AGENT_URL=") && !env.contains(Self.code))
    #expect(!env.contains("67890"), "not even the hint")
  }
}

extension ActivationEndToEndTests {
  /// A client or server that repeats the code it was sent (in its message, its error code,
  /// its diagnostics; in another case, without dashes) never makes the code show: the
  /// journal, the status every user may read, and the state keep the hint (C1).
  @Test func C1_aClientThatRepeatsTheCodeNeverMakesItShow() throws {
    let (agent, pluginDir) = try activatedThroughExecPlugin()
    try "echo".write(toFile: pluginDir + "/mode", atomically: true, encoding: .utf8)
    let failed = try #require(try events(agent, .activationAttemptFailed).first)
    #expect(failed["LICENSE_ERROR"]?.contains("…67890") == true, "\(failed)")
    let request = try String(contentsOfFile: pluginDir + "/requests", encoding: .utf8)
    #expect(request.contains(Self.code), "the client was sent the code, and repeated it")
    let status = try agent.agentctl(["status", "--json"]).stdout + (try agent.agentctl(["status"]).stdout)
    let journal = try agent.journal(["_PID=\(agent.pid!)"]).map { $0.description }.joined(separator: "\n")
    let state = try String(contentsOfFile: agent.stateFile, encoding: .utf8)
      .replacingOccurrences(of: "\"\(Self.code)\"", with: "the code's own field")
    for (place, text) in [("status", status), ("journal", journal), ("state", state)] {
      for form in [Self.code, Self.code.lowercased(), Self.code.replacingOccurrences(of: "-", with: "")] {
        #expect(!text.localizedCaseInsensitiveContains(form), "\(place) shows the code")
      }
    }
    #expect(status.contains("…67890"), "\(status)")
  }

  /// A code on the command line is accepted with a warning (ps and shell history see it).
  @Test func C1_aCodeOnTheCommandLineIsAcceptedWithAWarning() throws {
    let agent = try AgentHarness()
    let lab = try ActivationLab(issuer: agent.issuer, root: agent.root, codes: [Self.code: ("valid", "90d")])
    try "[activation]\nurl = \"\(lab.url)\"\n".writeAsConfiguration(of: agent)
    #expect(try agent.start())
    let result = try agent.agentctl(["activate", "--code", Self.code])
    #expect(result.status == 0, "\(result.stderr)")
    #expect(result.stderr.contains("warning: a code on the command line is visible in ps and shell history"))
    #expect(!result.stdout.contains(Self.code) && result.stderr.components(separatedBy: Self.code).count == 1)
  }
}

/// Rule C6 end to end: the built daemon, the shipped HTTPS client program and the reference
/// activation server, with windows of seconds.
extension ActivationEndToEndTests {
  /// Fast retries and a renewal-ahead window `before` ahead of each key's expiry.
  static func ahead(before: String, spread: String) -> String {
    """
    renew-before = "\(before)"
    renew-spread = "\(spread)"
    attempt-timeout = "2s"
    retry-initial = "300ms"
    retry-max = "1s"
    alert-after = "3s"
    """
  }

  @Test func C6_aKeyObtainedAheadIsShownPendingAndPromotedAtExpWhileTheServerIsDown() throws {
    let agent = try AgentHarness()
    let lab = try ActivationLab(issuer: agent.issuer, root: agent.root, codes: [Self.code: ("valid", "8s")])
    try "[activation]\nurl = \"\(lab.url)\"\n\(Self.ahead(before: "6s", spread: "1s"))\n"
      .writeAsConfiguration(
        of: agent)
    #expect(try agent.start())
    try Self.code.write(toFile: agent.root + "/code", atomically: true, encoding: .utf8)
    #expect(try agent.agentctl(["activate", "--code-file", agent.root + "/code"]).status == 0)
    let first = try #require(
      (try statusJSON(agent)["slots"] as? [[String: Any]])?.first?["active"] as? [String: Any])
    let firstSerial = try #require(first["serial"] as? String)
    let firstExpiry = try #require(first["expiresAt"] as? String)

    // Ahead of the expiry: the request carries ahead and currentExpiresAt, the key comes back
    // as the pending renewal, announced with ACTIVATION_RENEWED.
    let renewed = try #require(try events(agent, .activationRenewed).first)
    #expect(renewed["LICENSE_AHEAD"] == "1")
    #expect(renewed["LICENSE_PREVIOUS_SERIAL"] == firstSerial)
    let pendingSerial = try #require(renewed["LICENSE_SERIAL"])
    let renewedAt = try #require(renewed["__REALTIME_TIMESTAMP"].flatMap(Int64.init))
    #expect(renewedAt < Timestamp(rfc3339: firstExpiry)!.microseconds, "obtained before the expiry")
    let ahead = try #require(try lab.requests().last)
    #expect(ahead["ahead"] == "true")
    #expect(ahead["currentSerial"] == firstSerial)
    #expect(ahead["currentExpiresAt"] == firstExpiry)
    #expect(try lab.requests().first?["ahead"] == "false", "the manual activation is not a request ahead")

    let status = try statusJSON(agent)
    let slot = try #require((status["slots"] as? [[String: Any]])?.first)
    #expect(slot["takeover"] as? String == "pending-renewal")
    #expect((slot["active"] as? [String: Any])?["serial"] as? String == firstSerial)
    let pending = try #require(slot["pending"] as? [String: Any])
    #expect(pending["serial"] as? String == pendingSerial)
    #expect(pending["notBefore"] as? String == firstExpiry, "the next period starts at the expiry")
    #expect(pending["addedAt"] != nil && pending["codeHint"] as? String == "67890")
    #expect((status["nextAction"] as? [String: Any])?["action"] as? String == "promotion")
    let text = try agent.agentctl(["status"])
    #expect(text.status == 0, "\(text.stdout)")
    #expect(text.stdout.contains("pending  \(pendingSerial)"), "\(text.stdout)")
    #expect(text.stdout.contains("at expiry: the renewed key \(pendingSerial) becomes active"))
    let metrics = try String(contentsOfFile: agent.metricsFile, encoding: .utf8)
    #expect(metrics.contains("role=\"pending\",serial=\"\(pendingSerial)\""), "\(metrics)")
    #expect(metrics.contains("license_agent_slot_takeover{slot=\"server\",takeover=\"pending-renewal\"} 1"))

    // The server goes down before the expiry: the promotion does not need it.
    lab.stop()
    let promoted = try #require(try events(agent, .keyPromoted).first)
    #expect(promoted["LICENSE_SERIAL"] == pendingSerial)
    #expect(promoted["LICENSE_PREVIOUS_SERIAL"] == firstSerial)
    #expect((Int64(promoted["LICENSE_DELAY_USEC"] ?? "") ?? -1) >= 0)
    let after = try statusJSON(agent)
    let active = try #require((after["slots"] as? [[String: Any]])?.first?["active"] as? [String: Any])
    #expect(active["serial"] as? String == pendingSerial)
    #expect(active["source"] as? String == "activation-code" && active["codeHint"] as? String == "67890")
    // Nothing about the expired key needed a person: no alert, no failed attempt for it.
    let alerts = try agent.journal([
      "MESSAGE_ID=\(EventKind.manualActivationRequired.messageID)", "_PID=\(agent.pid!)",
    ])
    #expect(alerts.isEmpty)
    let failures = try agent.journal([
      "MESSAGE_ID=\(EventKind.activationAttemptFailed.messageID)", "_PID=\(agent.pid!)",
      "LICENSE_SERIAL=\(firstSerial)",
    ])
    #expect(failures.isEmpty)
    #expect(
      try agent.journal(["MESSAGE_ID=\(EventKind.keyPromoted.messageID)", "_PID=\(agent.pid!)"]).count == 1)
  }

  @Test func C6_notYetAvailableTwiceThenTheKey() throws {
    let agent = try AgentHarness()
    let lab = try ActivationLab(issuer: agent.issuer, root: agent.root, codes: [Self.code: ("valid", "12s")])
    try "[activation]\nurl = \"\(lab.url)\"\n\(Self.ahead(before: "10s", spread: "500ms"))\n"
      .writeAsConfiguration(of: agent)
    #expect(try agent.start())
    try Self.code.write(toFile: agent.root + "/code", atomically: true, encoding: .utf8)
    #expect(try agent.agentctl(["activate", "--code-file", agent.root + "/code"]).status == 0)
    try lab.faults(#"{"failNext": 2, "status": 409, "error": "not_yet_available", "retryAfter": 1}"#)
    let renewed = try #require(try events(agent, .activationRenewed).first)
    #expect(renewed["LICENSE_AHEAD"] == "1")
    #expect(renewed["LICENSE_ATTEMPT"] == "3")
    let requests = try lab.requests().filter { $0["ahead"] == "true" }
    #expect(requests.count == 3)
    // Retry-After honoured: each retry came at least a second after the answer before it.
    let instants = requests.compactMap { $0["at"].flatMap(Timestamp.init(rfc3339:)) }
    for (before, after) in zip(instants, instants.dropFirst()) {
      #expect(after.microseconds(since: before) >= 900_000)
    }
    // The vendor's calendar is not a failure: nothing logged as one, no alert.
    #expect(
      try agent.journal(["MESSAGE_ID=\(EventKind.activationAttemptFailed.messageID)", "_PID=\(agent.pid!)"])
        .isEmpty)
    let status = try statusJSON(agent)
    let slot = try #require((status["slots"] as? [[String: Any]])?.first)
    #expect((slot["pending"] as? [String: Any])?["serial"] as? String == renewed["LICENSE_SERIAL"])
    #expect(try StatusExit.of(agent) == 0)
  }

  @Test func C6_theServersCalendarOpensTheNextPeriod() throws {
    // The reference server opens the next period 4 s before the expiry; the agent asks from
    // 9 s before it: not_yet_available with Retry-After, then the key once it is open.
    let agent = try AgentHarness()
    let lab = try ActivationLab(
      issuer: agent.issuer, root: agent.root, codes: [Self.code: ("valid", "11s")], renewableBefore: "4s")
    try "[activation]\nurl = \"\(lab.url)\"\n\(Self.ahead(before: "9s", spread: "200ms"))\n"
      .writeAsConfiguration(of: agent)
    #expect(try agent.start())
    try Self.code.write(toFile: agent.root + "/code", atomically: true, encoding: .utf8)
    #expect(try agent.agentctl(["activate", "--code-file", agent.root + "/code"]).status == 0)
    let expiry = try #require(
      ((try statusJSON(agent)["slots"] as? [[String: Any]])?.first?["active"] as? [String: Any])?["expiresAt"]
        as? String)
    let renewed = try #require(try events(agent, .activationRenewed).first)
    #expect(renewed["LICENSE_AHEAD"] == "1")
    let requests = try lab.requests().filter { $0["ahead"] == "true" }
    #expect(requests.count >= 2, "\(requests)")
    let opens = Timestamp(rfc3339: expiry)! - .seconds(4)
    let last = try #require(requests.last?["at"].flatMap(Timestamp.init(rfc3339:)))
    #expect(last >= opens, "the key was given once the period was open")
    #expect(requests.dropLast().allSatisfy { ($0["at"].flatMap(Timestamp.init(rfc3339:)) ?? opens) < opens })
  }
}
