import Foundation
import Glibc
import LicenseTestSupport
import Testing

/// `license-agent-activate-https`, the shipped client program, run as the agent runs it
/// (contract §3) against a local HTTP(S) server.
@Suite(.serialized) struct HTTPSClientTests {
  final class Fixture: @unchecked Sendable {
    let dir = makeTemporaryDirectory("https-client")
    let process = Process()
    var port = ""
    var log: String { (try? String(contentsOfFile: dir + "/port.log", encoding: .utf8)) ?? "" }

    init(tls: Bool = false) throws {
      let script =
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().path + "/Fixtures/http_fixture.py"
      var arguments = [script, dir + "/port"]
      if tls {
        let made = try runProcess(
          "/usr/bin/openssl",
          [
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
            dir + "/key.pem", "-out", dir + "/cert.pem", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext",
            "subjectAltName=IP:127.0.0.1",
          ])
        #expect(made.status == 0, "\(made.stderr)")
        arguments += [dir + "/cert.pem", dir + "/key.pem"]
      }
      process.executableURL = URL(fileURLWithPath: python3())
      process.arguments = arguments
      process.standardError = FileHandle.nullDevice
      process.standardOutput = FileHandle.nullDevice
      try process.run()
      for _ in 0..<200 {
        if let text = try? String(contentsOfFile: dir + "/port", encoding: .utf8), !text.isEmpty {
          port = text
          return
        }
        usleep(25_000)
      }
      throw ProcessError(description: "the fixture server did not start")
    }

    deinit {
      // SIGKILL: children of the test runner inherit its blocked signals, SIGTERM included.
      kill(process.processIdentifier, SIGKILL)
      process.waitUntilExit()
      removeTemporaryDirectory(dir)
    }
  }

  let request =
    #"{"activationCode":"ABCDE-12345-FGHIJ-67890","product":"svm-protection","machineId":"m","currentSerial":null}"#

  /// Runs the client with the contract's environment (no proxy variables of the caller).
  func client(
    url: String, proxy: String = "", caFile: String = "", timeout: String = "5", prefix: [String] = [],
    input: String? = nil
  )
    throws -> (status: Int32, reply: [String: Any])
  {
    var env = ProcessInfo.processInfo.environment
    for name in [
      "http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "no_proxy", "NO_PROXY", "all_proxy",
      "ALL_PROXY",
    ] {
      env.removeValue(forKey: name)
    }
    env["LICENSE_AGENT_URL"] = url
    env["LICENSE_AGENT_PROXY"] = proxy
    env["LICENSE_AGENT_CA_FILE"] = caFile
    env["LICENSE_AGENT_TIMEOUT_SEC"] = timeout
    let program = productsDirectory() + "/license-agent-activate-https"
    let result = try runProcess(
      prefix.isEmpty ? program : prefix[0], Array(prefix.dropFirst()) + (prefix.isEmpty ? [] : [program]),
      input: input ?? request, environment: env)
    let reply = (try? JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any]) ?? [:]
    return (result.status, reply)
  }

  @Test func C6_theRequestAheadIsPassedOnAsTheAgentWroteIt() throws {
    let f = try Fixture()
    let ahead =
      #"{"activationCode":"ABCDE-12345-FGHIJ-67890","ahead":true,"currentExpiresAt":"2027-01-01T00:00:00Z","currentSerial":"KS-1","machineId":"m","product":"svm-protection"}"#
    let (status, _) = try client(url: "http://127.0.0.1:\(f.port)/ok", input: ahead)
    #expect(status == 0)
    #expect(f.log.contains(#""ahead":true"#) && f.log.contains(#""currentExpiresAt":"2027-01-01T00:00:00Z""#))
  }

  @Test func aKeyIsPrintedAndTheRequestIsTheContracts() throws {
    let f = try Fixture()
    let (status, reply) = try client(url: "http://127.0.0.1:\(f.port)/ok")
    #expect(status == 0)
    #expect(reply["key"] as? String == "FIXTURE-KEY")
    #expect(f.log.contains("POST /ok/v1/activations"))
    #expect(f.log.contains(#""activationCode":"ABCDE-12345-FGHIJ-67890""#))
  }

  @Test(arguments: [
    ("blocked", Int32(1), "code_blocked"), ("busy", Int32(75), "http_503"),
    ("busydate", Int32(75), "http_429"), ("notyet", Int32(75), "not_yet_available"),
    ("exhausted", Int32(1), "code_exhausted"),
    ("html", Int32(1), "bad_key_from_server"), ("huge", Int32(1), "bad_key_from_server"),
    ("redirect", Int32(1), "http_302"),
    ("unknown", Int32(1), "invalid_code"),
  ])
  func serverAnswersAreClassifiedAsTheContractSays(mode: String, exit: Int32, error: String) throws {
    let f = try Fixture()
    let (status, reply) = try client(url: "http://127.0.0.1:\(f.port)/\(mode)")
    #expect(status == exit, "\(mode): \(reply)")
    #expect(reply["error"] as? String == error)
    if mode == "busy" { #expect(reply["retryAfter"] as? Int == 7) }
    // C6: a 409 that says not_yet_available is the server's calendar, not a refusal.
    if mode == "notyet" { #expect(reply["retryAfter"] as? Int == 3600) }
    if mode == "busydate" { #expect((reply["retryAfter"] as? Int).map { (25...31).contains($0) } == true) }
  }

  @Test func connectionRefusedIsTransient() throws {
    let f = try Fixture()
    let port = f.port
    kill(f.process.processIdentifier, SIGKILL)
    f.process.waitUntilExit()
    let (status, reply) = try client(url: "http://127.0.0.1:\(port)/ok")
    #expect(status == 75)
    #expect(reply["error"] as? String == "network")
  }

  @Test func tlsIsVerifiedAgainstTheCAFile() throws {
    let f = try Fixture(tls: true)
    let untrusted = try client(url: "https://127.0.0.1:\(f.port)/ok")
    #expect(untrusted.status == 75, "a certificate the system does not trust fails: \(untrusted.reply)")
    #expect(untrusted.reply["key"] == nil)
    let trusted = try client(url: "https://127.0.0.1:\(f.port)/ok", caFile: f.dir + "/cert.pem")
    #expect(trusted.status == 0, "\(trusted.reply)")
    #expect(trusted.reply["key"] as? String == "FIXTURE-KEY")
  }

  @Test func theProxySettingIsHonoured() throws {
    let proxy = try Fixture()
    // Nothing listens on port 9 of loopback: only the proxy can answer.
    let (status, reply) = try client(url: "http://127.0.0.1:9/ok", proxy: "http://127.0.0.1:\(proxy.port)")
    #expect(status == 0, "\(reply)")
    #expect(reply["key"] as? String == "VIA-PROXY")
    #expect(proxy.log.contains("POST http://127.0.0.1:9/ok/v1/activations"))
  }

  /// Run in a network namespace of its own (no route anywhere), so that even a bug here
  /// could not send traffic off the machine.
  @Test func plainHTTPToAnAddressThatIsNotLoopbackIsRefusedWithoutARequest() throws {
    let (status, reply) = try client(url: "http://192.0.2.10/ok", prefix: ["/usr/bin/unshare", "--net"])
    #expect(status == 1)
    #expect(reply["error"] as? String == "bad_configuration")
    let none = try client(url: "")
    #expect(none.status == 1 && none.reply["error"] as? String == "bad_configuration")
  }
}

extension HTTPSClientTests {
  /// A server slower than the attempt's deadline: the attempt ends at the deadline, as a
  /// transient failure to retry.
  @Test func aSlowServerIsCutOffAtTheDeadlineAsTransient() throws {
    let f = try Fixture()
    // The server would answer 200 after 4 s: a timeout error (not its key) shows the attempt
    // ended at its 1 s deadline.
    let (status, reply) = try client(url: "http://127.0.0.1:\(f.port)/slow", timeout: "1")
    #expect(status == 75, "\(reply)")
    #expect(reply["key"] == nil)
    #expect(reply["error"] as? String == "network")
    #expect((reply["message"] as? String)?.lowercased().contains("timeout") == true, "\(reply)")
  }

  /// A reply cut short (fewer bytes than Content-Length announced) is never taken for a
  /// key: a transient network failure.
  @Test func aTruncatedReplyIsTransientAndNeverAKey() throws {
    let f = try Fixture()
    let (status, reply) = try client(url: "http://127.0.0.1:\(f.port)/truncated")
    #expect(status == 75, "\(reply)")
    #expect(reply["key"] == nil)
    #expect(reply["error"] as? String == "network", "\(reply)")
  }
}
