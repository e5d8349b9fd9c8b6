import AgentSettings
import ArgumentParser
import ControlInterface
import FoundationEssentials
import LicenseCore
import LicenseStorage
import SimpleJSON
import SystemClock
import Varlink

struct Status: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Show every slot's keys, what takes over at expiry, warnings and the next action.",
    discussion: """
      When the agent cannot be reached (or answers anything but a status within 10 s), the \
      state file is shown instead (when readable, \
      e.g. as root), judged with the settings of agent.toml (or the defaults, which it then \
      says), and the exit status is 3. --json prints one object, always: the GetStatus reply \
      (schemaVersion \(AgentInterface.statusSchemaVersion)) plus "agentReachable" and "exitCode", \
      and "errors" when the agent or the state file could not be read (with no state, an \
      empty "slots").
      """)

  @OptionGroup var connection: ConnectionOptions
  @Option(
    name: .customLong("json"),
    help: ArgumentHelp(
      "Print one JSON object (stable, versioned by schemaVersion): short (one line; also plain --json) or pretty.",
      valueName: "short|pretty"))
  var json: JSONMode?
  @Option(
    help:
      "The state directory to read when the agent is unreachable (default: $STATE_DIRECTORY, else /var/lib/license-agent)."
  )
  var stateDirectory: String?
  @Option(
    help:
      "The configuration file the state is judged with when the agent is unreachable (default: $CONFIGURATION_DIRECTORY/agent.toml, else /etc/license-agent/agent.toml)."
  )
  var configurationFile: String?
  @ParentCommand var global: AgentCtl

  func run() throws {
    let socket = connection.after(global).socketPath
    var status: StatusReply?
    var problems: [String] = []
    // Anything but a status from the agent (no agent, an error reply, a reply that is not a
    // status: another program on the socket, a version that does not match) is "cannot be
    // reached" (exit 3), with the state file shown instead (contract section 7).
    var unreachable: String?
    do {
      let client = try VarlinkClient(
        path: socket, timeoutSeconds: 10, maximumReplySize: ConnectionOptions.maximumReplySize)
      switch try client.call(AgentMethod.getStatus.qualifiedName, GetStatusRequest().parameters) {
      case .success(let parameters):
        do {
          status = try decodeParameters(StatusReply.self, from: parameters.forTerminal)
        } catch {
          unreachable = "the reply on \(socket) is not a status this agentctl reads (\(error))"
        }
      case .failure(let error):
        unreachable = "the agent answered GetStatus with an error (\(error))"
      }
    } catch {
      unreachable = "the agent cannot be reached (\(error))"
    }
    let reachable = unreachable == nil
    if let unreachable {
      let problem = ExternalText.bounded(unreachable, limit: ExternalText.diagnosticsLimit)
      problems.append(problem)
      printError("agentctl: \(problem); showing the state file instead.")
      switch stateFromFile() {
      case .success(let fromFile): status = fromFile
      case .failure(let unreadable):
        problems.append(unreadable.description)
        printError("agentctl: \(unreadable)")
      }
    }
    let code = reachable ? Int32(status?.health.rawValue ?? 3) : 3
    if let json {
      // Always one object, so that a monitoring script has something to parse: the status
      // (the agent's, or the state file's), or, when neither could be read, the error.
      var object =
        status.map(varlinkParameters) ?? [
          "schemaVersion": .number(Double(AgentInterface.statusSchemaVersion)), "slots": .array([]),
        ]
      object["agentReachable"] = .bool(reachable)
      object["exitCode"] = .number(Double(code))
      if !problems.isEmpty { object["errors"] = .array(problems.map(JSONValue.string)) }
      print(json.render(.object(object)))
    } else if let status {
      print(render(status, reachable: reachable))
    }
    if code != 0 { throw ExitCode(code) }
  }

  /// Why the state file could not be shown.
  struct StateUnreadable: Error, CustomStringConvertible {
    var description: String
  }

  private func stateFromFile() -> Result<StatusReply, StateUnreadable> {
    let paths = AgentPaths.fromEnvironment(ProcessInfo.processInfo.environment)
    let directory = stateDirectory ?? paths.stateDirectory
    guard FileManager.default.isReadableFile(atPath: directory + "/state.json"),
      let data = FileManager.default.contents(atPath: directory + "/state.json"),
      let state = try? JSONDecoder().decode(LicenseState.self, from: data)
    else {
      return .failure(
        StateUnreadable(
          description:
            "cannot read \(directory)/state.json either (run as root, or pass --state-directory)"))
    }
    // Judged with the agent's own settings (warning thresholds, renewal ahead, product),
    // so that it cannot disagree with the agent about what it shows.
    let file = configurationFile ?? paths.configurationFile
    var configuration = AgentConfiguration()
    if !FileManager.default.fileExists(atPath: file) {
      printError("agentctl: \(file) does not exist: the state is judged with the default settings.")
    } else {
      do {
        configuration = try AgentConfiguration.load(path: file)
      } catch {
        printError("agentctl: \(error); the state is judged with the default settings instead.")
      }
    }
    let timestamp = SystemWallClock().now()
    return .success(
      StatusBuilder.build(
        state: state, engine: LicenseEngine(configuration: configuration.engine, trust: TrustStore()),
        now: timestamp, version: "unknown (agent not running)", startedAt: timestamp))
  }

  func render(_ status: StatusReply, reachable: Bool) -> String {
    let now = Timestamp(rfc3339: status.now) ?? Timestamp(microseconds: 0)
    func left(_ instant: String) -> String {
      guard let t = Timestamp(rfc3339: instant) else { return instant }
      let delta = t.microseconds(since: now)
      return delta >= 0
        ? "in \(TimeSpan(microseconds: delta).inWords)" : "\(TimeSpan(microseconds: -delta).inWords) ago"
    }
    func describe(_ key: KeyInfo) -> String {
      "\(key.serial)  \(key.typeDescription), \(key.edition), \(key.licenseType), \(key.units) units"
    }
    /// U1–U2: the slot's last usage report against its active key.
    func usage(_ slot: SlotStatus) -> String {
      guard let usage = slot.usage else { return "  usage    unknown (nothing reported yet)" }
      var text = "  usage    \(usage.units) units"
      if let percent = usage.percent, let band = usage.band, let active = slot.active {
        text += ", \(UsageBand.percentText(percent)) % of \(active.units) (\(band.rawValue))"
      }
      text += ", reported \(left(usage.reportedAt)) at \(usage.reportedAt)"
      return usage.stale ? text + ", STALE" : text
    }
    var lines: [String] = []
    if reachable {
      lines.append(
        "license-agent \(status.version), running since \(status.startedAt); product \(status.product)")
    } else {
      lines.append(
        "license-agent is NOT RUNNING: this is the state file as last written (product \(status.product))")
    }
    if status.slots.isEmpty { lines.append("\nNo licence key. Add one with: agentctl add-key FILE") }
    for slot in status.slots {
      lines.append("")
      if slot.status == .renewing, let expired = slot.expired, let renewal = slot.renewal {
        // A renewal the server refused for good renews nothing: the slot is expired, and
        // only an operator can end that.
        lines.append(
          renewal.state == .stopped
            ? "\(slot.slot): EXPIRED, waiting for manual activation (the code …\(renewal.codeHint) was refused)"
            : "\(slot.slot): RENEWING with the activation code …\(renewal.codeHint)")
        lines.append("  key \(expired.serial) expired at \(expired.expiresAt) (\(left(expired.expiresAt)))")
        lines.append(
          "  failed attempts: \(renewal.attempts)\(renewal.lastError.map { ", last error: \($0)" } ?? "")")
        if let next = renewal.nextAttemptAt {
          lines.append("  next attempt: \(next) (\(left(next)))")
        } else if renewal.state == .stopped {
          lines.append(
            "  no more attempts: the server refused the code; run agentctl activate with a valid code")
        }
        continue
      }
      if slot.status == .expired, let expired = slot.expired {
        lines.append("\(slot.slot): EXPIRED")
        lines.append(
          "  key \(expired.serial) expired at \(expired.expiresAt) (\(left(expired.expiresAt))); nothing took over"
        )
        continue
      }
      if let blocked = slot.activeBlocked, let lapsed = blocked.lapsedAt {
        lines.append("\(slot.slot): EXPIRED (the blocked key's grace ended at \(lapsed))")
      } else {
        lines.append("\(slot.slot): active")
      }
      if let active = slot.active {
        lines.append("  active   \(describe(active))")
        lines.append("           valid \(active.notBefore) .. \(active.expiresAt)")
        if let blocked = slot.activeBlocked {
          let why = blocked.reason.isEmpty ? "" : " (\(blocked.reason))"
          lines.append(
            "           BLOCKED by its issuer since \(blocked.since)\(why); learned at \(blocked.learnedAt)")
          lines.append(
            "           grace ends \(left(blocked.graceEndsAt)), at \(blocked.graceEndsAt): it counts as expired then"
          )
        } else {
          lines.append("           expires \(left(active.expiresAt)), at \(active.expiresAt)")
        }
      }
      lines.append(usage(slot))
      if let consumers = slot.consumers {
        lines.append("  consumers " + consumers.map { consumerText($0, left: left) }.joined(separator: "; "))
      }
      if let reserve = slot.reserve {
        lines.append("  reserve  \(describe(reserve))")
        lines.append("           valid \(reserve.notBefore) .. \(reserve.expiresAt)")
      } else {
        lines.append("  reserve  none")
      }
      if let pending = slot.pending {
        lines.append("  pending  \(describe(pending))")
        lines.append("           valid \(pending.notBefore) .. \(pending.expiresAt)")
        lines.append(
          "           renewed ahead with the code …\(pending.codeHint ?? "?")\(pending.addedAt.map { " at \($0) (\(left($0)))" } ?? "")"
        )
      }
      if let ahead = slot.renewalAhead {
        lines.append("  renewal ahead with the code …\(ahead.codeHint): \(ahead.state)")
        lines.append("           window \(ahead.windowStart) .. \(ahead.windowEnd)")
        switch ahead.state {
        case .waiting:
          lines.append("           first request at \(ahead.firstAttemptAt) (\(left(ahead.firstAttemptAt)))")
        case .requesting: lines.append("           a request is under way")
        case .retrying:
          lines.append(
            "           failed attempts: \(ahead.attempts)\(ahead.lastError.map { ", last error: \($0)" } ?? "")"
          )
          if let next = ahead.nextAttemptAt {
            lines.append("           next attempt: \(next) (\(left(next)))")
          }
        case .stopped:
          lines.append(
            "           no attempt left before expiry (\(ahead.attempts) failed\(ahead.lastError.map { ", last error: \($0)" } ?? "")); renewal at expiry instead"
          )
        }
      }
      // B2: a blocked key's end is its grace's.
      let when = slot.activeBlocked == nil ? "at expiry" : "at the grace's end"
      switch slot.takeover {
      case .reserve: lines.append("  \(when): reserve \(slot.reserve?.serial ?? "") becomes active")
      case .pendingRenewal:
        lines.append("  \(when): the renewed key \(slot.pending?.serial ?? "") becomes active")
      case .activationCode:
        if let ahead = slot.renewalAhead, ahead.state != .stopped {
          lines.append(
            "  \(when): the key renewed ahead takes over; failing that, renewal with the activation code")
        } else {
          lines.append("  \(when): renewed with the activation code")
        }
      case .none: lines.append("  \(when): NOTHING takes over; the licence of this slot lapses")
      }
    }
    if !status.alerts.isEmpty {
      lines.append("\nALERTS:")
      lines += status.alerts.map { "  !! \($0)" }
    }
    if !status.warnings.isEmpty {
      lines.append("\nWarnings:")
      lines += status.warnings.map { "  ! \($0.message)" }
    }
    if let next = status.nextAction {
      lines.append("\nNext action: \(next.at) (\(left(next.at))): \(next.description)")
    } else {
      lines.append("\nNext action: none scheduled")
    }
    return lines.joined(separator: "\n")
  }
}

extension [String: JSONValue] {
  /// What a reply says, fit for a terminal: every string bounded and stripped of control
  /// characters (escape sequences from whatever listens on a --socket path), once, before
  /// anything of it is printed. JSON output needs none of it: it escapes them.
  var forTerminal: [String: JSONValue] { mapValues(\.forTerminal) }
}

extension JSONValue {
  var forTerminal: JSONValue {
    switch self {
    case .string(let text): return .string(ExternalText.bounded(text, limit: ExternalText.diagnosticsLimit))
    case .array(let items): return .array(items.map(\.forTerminal))
    case .object(let members): return .object(members.mapValues(\.forTerminal))
    default: return self
    }
  }
}

/// N2: a consumer of a slot's active key, as `status` and `monitor` print it.
func consumerText(_ consumer: ConsumerInfo, left: (String) -> String) -> String {
  var text = "\(consumer.consumer) \(consumer.state == .late ? "LATE" : consumer.state.rawValue)"
  switch consumer.state {
  case .confirmed: break
  case .waiting: text += consumer.dueAt.map { " (due \(left($0)))" } ?? ""
  case .late, .unconfirmed:
    text += consumer.confirmedSerial.map { " (enforces \($0))" } ?? " (confirmed nothing)"
  }
  return text
}

/// How JSON is printed, as systemd's tools accept it: `--json=short` (one line, also what a
/// plain `--json` means) or `--json=pretty` (indented).
enum JSONMode: String, ExpressibleByArgument, CaseIterable {
  case short, pretty

  func render(_ value: JSONValue) -> String {
    switch self {
    case .short: return value.serialized
    case .pretty: return value.prettyPrinted()
    }
  }
}

extension JSONValue {
  /// Indented by two spaces, keys sorted, as `--json=pretty` prints it.
  func prettyPrinted(indent: String = "") -> String {
    let inner = indent + "  "
    switch self {
    case .object(let members) where !members.isEmpty:
      let lines = members.keys.sorted().map {
        "\(inner)\(JSONValue.string($0).serialized): \(members[$0]!.prettyPrinted(indent: inner))"
      }
      return "{\n" + lines.joined(separator: ",\n") + "\n\(indent)}"
    case .array(let items) where !items.isEmpty:
      return "[\n" + items.map { inner + $0.prettyPrinted(indent: inner) }.joined(separator: ",\n")
        + "\n\(indent)]"
    default:
      return serialized
    }
  }
}
