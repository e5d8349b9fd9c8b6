import Dispatch
import Foundation
import Glibc
import LicenseCore
import LicenseStorage
import SimpleJSON
import Varlink

/// The renewal story of the crash harness (``Crash``): a key obtained with an activation
/// code from the reference activation-server on loopback, valid 1.5 s, renewed by the
/// agent at its expiry; the agent is SIGKILLed at a random instant from start-up to after
/// the renewal. Checks: the code's key is never lost, the renewal happens exactly once and
/// not before the expiry, and every transition is announced exactly once.
///
/// With `ahead`, the same story with renewal ahead of expiry (C6, keys of 3 s, `renew-before` 1 s): the
/// next key is obtained before the expiry as the slot's pending renewal and promoted at it.
/// Checks besides: a pending key announced is never lost (the chain of renewals has no
/// fork, which a second renewal of the same key would make) and is promoted exactly once,
/// not before the expiry.
struct RenewalTrial {
  let index: Int
  let seed: UInt64
  let executable: String
  var ahead = false

  func run() -> TrialResult {
    let kind = ahead ? "renewal ahead, SIGKILL at a random instant" : "renewal, SIGKILL at a random instant"
    var random = SplitMix64(seed: seed)
    var violations: [(String, String)] = []
    func violation(_ invariant: String, _ detail: String) { violations.append((invariant, detail)) }
    func setup(_ problem: String) -> TrialResult {
      TrialResult(kind: kind, restarts: 0, violations: [("setup", problem)])
    }
    guard let folder = try? BenchFolder("crash-renewal-\(index)") else {
      return setup("cannot make the folder")
    }
    let prefix = "RN\(seed % 1_000_000_007)-\(index)"
    let code = "CRASH-" + String(format: "%05d", index % 100_000) + "-RENEW-00000"

    // The reference server, signing with the folder's issuer.
    let root = folder.root
    guard
      (try? folder.issuer.privateJSON.write(
        toFile: root + "/issuer.private.jwk", atomically: true, encoding: .utf8)) != nil,
      (try? """
      {"codes": {"\(code)": {"state": "valid", "serial": "\(prefix)", "edition": "standard", "scheme": "cores",
        "licenseType": "subscription", "units": 4, "validity": "\(ahead ? "3s" : "1500ms")"}}}
      """.write(toFile: root + "/codes.json", atomically: true, encoding: .utf8)) != nil
    else { return setup("cannot write the server's files") }
    let server = Process()
    server.executableURL = URL(fileURLWithPath: benchDirectory() + "/activation-server")
    server.arguments = ["--signer", root + "/issuer.private.jwk", "--catalog", root + "/codes.json"]
    let out = Pipe()
    server.standardOutput = out
    server.standardError = FileHandle.nullDevice
    guard (try? server.run()) != nil else { return setup("cannot start activation-server") }
    defer {
      kill(server.processIdentifier, SIGKILL)
      server.waitUntilExit()
    }
    let line = String(decoding: out.fileHandleForReading.availableData, as: UTF8.self)
    guard let range = line.range(of: "http://") else { return setup("activation-server said: \(line)") }
    let url = String(line[range.lowerBound...].prefix { !$0.isWhitespace })
    guard
      (try? folder.writeConfiguration(
        """
        [activation]
        url = "\(url)"
        retry-initial = "250ms"
        retry-max = "1s"
        attempt-timeout = "5s"
        renew-before = "\(ahead ? "1s" : "0s")"
        renew-spread = "\(ahead ? "300ms" : "0s")"
        """)) != nil
    else { return setup("cannot write agent.toml") }

    var environment = agentEnvironment(folder)
    environment["LICENSE_AGENT_LOG"] = "journal"
    guard var pid = try? spawn(executable, [], environment: environment) else {
      return setup("cannot start the agent")
    }
    let start = now()
    // Ahead: keys of 3 s, asked for 1 s before their expiry, so that the kill falls before,
    // during or after the request ahead, and the restart comes before the pending key ends.
    let delay = Double(random.next() % (ahead ? 3_500_000 : 2_200_000)) / 1_000_000
    let killer = DispatchWorkItem { [pid] in kill(pid, SIGKILL) }
    DispatchQueue.global().asyncAfter(deadline: .now() + delay, execute: killer)
    var restarts = 0

    func ensureRunning() -> Bool {
      ensureAgentRunning(
        pid: &pid, restarts: &restarts, executable: executable, environment: environment,
        socket: folder.socket)
    }
    /// The active key's serial and expiry, as the agent reports them.
    func active() -> (serial: String, expires: Timestamp)? {
      guard let client = try? VarlinkClient(path: folder.socket, timeoutSeconds: 5),
        case .success(let status)? = try? client.call("io.licenseagent.Agent.GetStatus"),
        case .array(let slots)? = status["slots"], let key = slots.first?.objectValue?["active"]?.objectValue,
        let serial = key["serial"]?.stringValue,
        let expires = key["expiresAt"]?.stringValue.flatMap(Timestamp.init(rfc3339:))
      else { return nil }
      return (serial, expires)
    }

    // Activate until the state holds the code's key (a kill may cut the first try).
    var acknowledged: String?
    var lastError = ""
    for _ in 0..<10 where acknowledged == nil && active() == nil {
      guard ensureRunning() else { break }
      if active() != nil { break }
      do {
        let reply = try VarlinkClient(path: folder.socket, timeoutSeconds: 10).call(
          "io.licenseagent.Agent.Activate", ["code": .string(code), "role": .string("active")])
        switch reply {
        case .success(let parameters): acknowledged = parameters["key"]?.objectValue?["serial"]?.stringValue
        case .failure(let error): lastError = "\(error)"
        }
      } catch {
        lastError = "\(error)"
      }
    }
    // The kill may land between two calls of this harness: ask again after a restart.
    var found: (serial: String, expires: Timestamp)?
    for _ in 0..<5 where found == nil {
      guard ensureRunning() else { break }
      found = active()
    }
    guard let first = found else {
      killer.cancel()
      kill(pid, SIGKILL)
      waitForExit(pid)
      return TrialResult(
        kind: kind, restarts: restarts,
        violations: [
          ("loads", "no active key after activation (\(acknowledged ?? "not acknowledged"); \(lastError))")
        ])
    }
    if let acknowledged, acknowledged != first.serial, !first.serial.hasPrefix(prefix) {
      violation("lost", "activation acknowledged \(acknowledged) but the active key is \(first.serial)")
    }
    // The renewal at the first key's expiry (and the kill, if it has not come yet).
    sleepUntil(max(first.expires, start + .seconds(2)) + .milliseconds(1500))
    killer.cancel()
    guard ensureRunning() else {
      kill(pid, SIGKILL)
      waitForExit(pid)
      return TrialResult(kind: kind, restarts: restarts, violations: [("loads", "the agent did not answer")])
    }
    // A restarted agent renews at once what expired while it was down.
    var renewed = active()
    for _ in 0..<50 where renewed == nil || renewed?.serial == first.serial {
      usleep(100_000)
      renewed = active()
    }
    kill(pid, SIGTERM)
    waitForExit(pid)

    let state = try? FileStateStore(directory: root + "/state").load().state
    if state == nil { violation("loads", "state.json does not load") }
    if let state, !state.outbox.isEmpty {
      violation("unannounced", "\(state.outbox.count) events left in the outbox")
    }
    guard let renewed, renewed.serial != first.serial, renewed.expires > first.expires else {
      violation("missing", "\(first.serial) was not renewed (active: \(renewed?.serial ?? "none"))")
      return TrialResult(kind: kind, restarts: restarts, violations: violations)
    }

    _ = try? runCommand("/bin/journalctl", ["--sync"])
    let entries = CrashTrial.journalEntries(serials: (1...6).map { "\(prefix)-\($0)" })
    // The renewals form one chain from the code's first key: each continues the key the
    // previous one installed, none twice, the first not before that key's expiry (keys
    // last 1.5 s, so a second renewal may come while the trial checks).
    let renewals = entries.filter { $0["MESSAGE_ID"] == EventKind.activationRenewed.messageID }
      .sorted {
        (Int64($0["__REALTIME_TIMESTAMP"] ?? "") ?? 0) < (Int64($1["__REALTIME_TIMESTAMP"] ?? "") ?? 0)
      }
    if renewals.isEmpty { violation("missing", "no ACTIVATION_RENEWED for \(first.serial)") }
    var previous = first.serial
    var chain: [String] = [first.serial]
    for renewal in renewals {
      guard renewal["LICENSE_PREVIOUS_SERIAL"] == previous, let next = renewal["LICENSE_SERIAL"] else {
        violation(
          "twice",
          "ACTIVATION_RENEWED \(renewal["LICENSE_PREVIOUS_SERIAL"] ?? "?") -> \(renewal["LICENSE_SERIAL"] ?? "?") after \(previous)"
        )
        break
      }
      previous = next
      chain.append(next)
    }
    let promotions = entries.filter { $0["MESSAGE_ID"] == EventKind.keyPromoted.messageID }
    if ahead {
      // The key obtained ahead takes over at the expiry, once; promotions follow the chain.
      var promotedSerials: [String: Int] = [:]
      for promotion in promotions {
        let serial = promotion["LICENSE_SERIAL"] ?? "?"
        promotedSerials[serial, default: 0] += 1
        guard let index = chain.firstIndex(of: serial), index > 0,
          promotion["LICENSE_PREVIOUS_SERIAL"] == chain[index - 1]
        else {
          violation("lost", "KEY_PROMOTED \(serial) is not the renewal of its previous key (chain \(chain))")
          continue
        }
      }
      for (serial, count) in promotedSerials where count > 1 {
        violation("twice", "\(serial) promoted \(count) times")
      }
      if let promotion = promotions.first(where: { $0["LICENSE_PREVIOUS_SERIAL"] == first.serial }) {
        let at = Int64(promotion["LICENSE_DELAY_USEC"] ?? "") ?? -1
        if at < 0 { violation("early", "\(promotion["LICENSE_SERIAL"] ?? "?") promoted before its time") }
      }
    } else if let firstRenewal = renewals.first {
      let at = firstRenewal["__REALTIME_TIMESTAMP"].flatMap { Int64($0) } ?? 0
      if at < first.expires.microseconds {
        violation("early", "renewed at \(at), before \(first.expires.microseconds)")
      }
    }
    if !chain.contains(renewed.serial) {
      violation("lost", "the active key \(renewed.serial) is not in the renewal chain \(chain)")
    }
    for twice in announcedTwice(entries) { violation("twice", twice) }
    return TrialResult(kind: kind, restarts: restarts, violations: violations)
  }
}
