import Dispatch
import Foundation
import Glibc
import LicenseCore
import LicenseStorage
import SimpleJSON
import Varlink

/// The blocked-key story of the crash harness (``Crash``, rule B2): an active key A valid for
/// 30 days and a reserve R are added, then a blocklist blocking A, with `[blocking] grace`
/// of 1.5 s: R takes over at the end of A's grace, an instant the agent fixed when it
/// learned of the block. The agent is SIGKILLed once: at a random instant from start-up to
/// just after the grace's end, or by itself at a named step of the N-th state write. After a
/// kill the harness redoes what the state does not show (a list given again is the same
/// list: the reply gives the grace's end the agent kept). Checks: the grace's end never
/// moves; R is promoted exactly once and never before that end (journal time and
/// LICENSE_DELAY_USEC); nothing acknowledged is lost; every transition is announced once.
struct GraceTrial {
  let index: Int
  let seed: UInt64
  let executable: String
  /// The step and write the agent kills itself at; nil: a random instant.
  let crash: (step: WriteStep, write: Int)?

  func run() -> TrialResult {
    var random = SplitMix64(seed: seed)
    let kind =
      crash.map { "grace end, step \($0.step.rawValue) of write \($0.write)" }
      ?? "grace end, SIGKILL at a random instant"
    var violations: [(String, String)] = []
    func violation(_ invariant: String, _ detail: String) { violations.append((invariant, detail)) }
    guard let folder = try? BenchFolder("crash-grace-\(index)"),
      (try? folder.writeConfiguration("[blocking]\ngrace = \"1500ms\"\n")) != nil
    else { return TrialResult(kind: kind, restarts: 0, violations: [("setup", "cannot make the folder")]) }
    let prefix = "GR\(seed % 1_000_000_007)-\(index)"
    let serials = (a: prefix + "-A", r: prefix + "-R")
    let start = now()
    func key(_ serial: String, _ exp: Timestamp) -> String {
      (try? KeyParser.sign(
        LicenseClaims(
          issuer: "bench", serial: serial, issuedAt: start, notBefore: start - .days(1), expiresAt: exp,
          product: EngineConfiguration.defaultProduct, edition: .standard, scheme: .vmCount, osType: .server,
          licenseType: .commercial, units: 4), with: folder.issuer)) ?? ""
    }
    let keys = (a: key(serials.a, start + .days(30)), r: key(serials.r, start + .days(90)))
    let list =
      (try? BlocklistParser.sign(
        Blocklist(
          compact: "", kid: folder.issuer.kid, issuer: "bench", sequence: 1, issuedAt: start,
          product: EngineConfiguration.defaultProduct,
          entries: [BlockedEntry(serial: serials.a, since: start, reason: "crash harness")]),
        with: folder.issuer)) ?? ""

    // The random kill: from the start to just after the grace's end (about 1.5 s after the
    // list, itself some 100 ms after the start).
    let agent: TrialAgent
    do {
      agent = try TrialAgent(
        executable, folder: folder, crash: crash,
        killAfter: crash == nil ? Double(random.next() % 1_900_000) / 1_000_000 : nil)
    } catch {
      return TrialResult(kind: kind, restarts: 0, violations: [("setup", "\(error)")])
    }
    var acknowledged: Set<String> = []
    var graceEnds: [Timestamp] = []
    func ensureRunning() -> Bool { agent.ensureRunning() }
    func call(_ method: String, _ parameters: [String: JSONValue]) -> [String: JSONValue]? {
      guard let client = try? VarlinkClient(path: folder.socket, timeoutSeconds: 5),
        case .success(let reply)? = try? client.call("io.licenseagent.Agent." + method, parameters)
      else { return nil }
      return reply
    }
    func slot() -> [String: JSONValue]? {
      guard case .array(let slots)? = call("GetStatus", [:])?["slots"] else { return nil }
      return slots.first?.objectValue
    }
    func serial(_ slot: [String: JSONValue]?, _ role: String) -> String? {
      slot?[role]?.objectValue?["serial"]?.stringValue
    }

    // The story, redone after a kill as far as the state does not show it.
    for _ in 0..<20 {
      guard ensureRunning() else { break }
      let current = slot()
      let active = serial(current, "active")
      if active == nil {
        if call("AddKey", ["key": .string(keys.a), "role": .string("active")]) != nil {
          acknowledged.insert(serials.a)
        }
        continue
      }
      guard active == serials.a else { break }
      if serial(current, "reserve") == nil {
        if call("AddKey", ["key": .string(keys.r), "role": .string("reserve")]) != nil {
          acknowledged.insert(serials.r)
        }
        continue
      }
      if graceEnds.isEmpty || current?["activeBlocked"] == nil {
        guard let reply = call("AddBlocklist", ["blocklist": .string(list)]) else { continue }
        if case .array(let blocks)? = reply["blocks"],
          let end = blocks.compactMap({ $0.objectValue?["graceEndsAt"]?.stringValue }).first
            .flatMap(Timestamp.init(rfc3339:))
        {
          graceEnds.append(end)
          acknowledged.insert("list")
        }
        continue
      }
      break
    }
    // The grace's end, and the kill if it has not come yet.
    if let end = graceEnds.first { sleepUntil(end + .milliseconds(250)) }
    if crash == nil { sleepUntil(start + .milliseconds(2100)) }
    agent.cancelKill()
    guard ensureRunning() else {
      violation("loads", "the agent did not answer after a restart")
      agent.stop(SIGKILL)
      return TrialResult(kind: kind, restarts: agent.restarts, violations: violations)
    }
    // A list acknowledged before the agent was killed at the grace's end: what it did after.
    if let end = graceEnds.first { sleepUntil(end + .milliseconds(250)) }
    usleep(200_000)
    let final = slot()
    agent.stop(SIGTERM)

    let state = try? FileStateStore(directory: folder.root + "/state").load().state
    if state == nil { violation("loads", "state.json does not load") }
    if let state, !state.outbox.isEmpty {
      violation("unannounced", "\(state.outbox.count) events left in the outbox")
    }
    let active = serial(final, "active")
    let blockedAndReserved = acknowledged.contains("list") && acknowledged.contains(serials.r)
    if blockedAndReserved && active != serials.r {
      violation("missing", "R is not active after the grace's end (active: \(active ?? "none"))")
    }
    if acknowledged.contains(serials.a) && active == nil {
      violation("lost", "A was acknowledged but the slot holds nothing")
    }

    _ = try? runCommand("/bin/journalctl", ["--sync"])
    let entries = CrashTrial.journalEntries(serials: [serials.a, serials.r])
    let promoted = entries.filter { $0["MESSAGE_ID"] == EventKind.keyPromoted.messageID }
    if promoted.count > 1 { violation("twice", "\(promoted.count) KEY_PROMOTED") }
    if active == serials.r && promoted.isEmpty { violation("missing", "R active without KEY_PROMOTED") }
    let blocked = entries.filter { $0["MESSAGE_ID"] == EventKind.keyBlocked.messageID }
    if acknowledged.contains("list") && blocked.count != 1 {
      violation("unannounced", "KEY_BLOCKED(A) in the journal \(blocked.count) times")
    }
    // The grace's end as KEY_BLOCKED gave it (the reply may have been lost to a kill).
    let logged = Set(blocked.compactMap { $0["LICENSE_GRACE_ENDS_AT"].flatMap(Timestamp.init(rfc3339:)) })
    if !Set(graceEnds).union(logged).isEmpty && Set(graceEnds).union(logged).count != 1 {
      violation("moved", "the grace's end moved: replies \(graceEnds), journal \(logged.sorted())")
    }
    for entry in promoted {
      let delay = entry["LICENSE_DELAY_USEC"].flatMap { Int64($0) } ?? -1
      let at = entry["__REALTIME_TIMESTAMP"].flatMap { Int64($0) } ?? 0
      guard let end = graceEnds.first ?? logged.first else {
        violation("early", "KEY_PROMOTED without KEY_BLOCKED or a grace end")
        continue
      }
      if delay < 0 || at < end.microseconds {
        violation("early", "KEY_PROMOTED delay \(delay) µs, at \(at), grace end \(end)")
      }
    }
    for twice in announcedTwice(entries) { violation("twice", twice) }
    return TrialResult(kind: kind, restarts: agent.restarts, violations: violations)
  }
}
