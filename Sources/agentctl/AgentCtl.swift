import ArgumentParser
import ControlInterface
import FoundationEssentials
import LicenseCore
import LicenseStorage
import SimpleJSON
import StandardIO
import Varlink

/// `agentctl`: the operator's tool. It speaks only Varlink to the agent's control socket.
@main
struct AgentCtl: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "agentctl",
    abstract: "Inspect and manage the licence keys of this SVM through license-agent.",
    discussion: """
      Exit status: status exits 0 when every slot has a valid key and no alert is pending, \
      1 when a key expires within the first warning threshold with nothing to take over, \
      2 when a slot is expired or an alert is pending, 3 when the agent cannot be reached \
      (it then shows the state file, when readable). Other commands exit 0 on success, \
      1 when a licensing rule refused the request, 3 when the agent cannot be reached, \
      64 on a usage error, 74 when the agent could not write its state, 77 when the caller \
      may not change keys (not root, not in the admin group).
      """,
    version: ProductVersion.current,
    subcommands: [
      Status.self, Monitor.self, AddKey.self, CheckKey.self, RemoveReserve.self, Activate.self,
      ReportUsage.self,
      Confirm.self, AddBlocklist.self,
    ]
  )

  /// Given before the verb (`agentctl --socket PATH status`), as systemd's tools accept them;
  /// after it they win.
  @OptionGroup var connection: ConnectionOptions

  /// A plain `--json` means `--json=short`, as systemd's tools take it.
  static func main() {
    let arguments = CommandLine.arguments.dropFirst().map { $0 == "--json" ? "--json=short" : $0 }
    main(Array(arguments))
  }
}

/// Options every subcommand shares, accepted before the verb too.
struct ConnectionOptions: ParsableArguments {
  @Option(
    help:
      "The agent's control socket (default: $LICENSE_AGENT_SOCKET, else \(AgentInterface.defaultSocketPath))."
  )
  var socket: String?
  @Flag(help: "Accepted, as systemd's tools accept it: agentctl never pages its output.")
  var noPager = false

  /// These options given after the verb, completed by those given before it.
  func after(_ global: AgentCtl) -> ConnectionOptions {
    var merged = self
    merged.socket = socket ?? global.connection.socket
    return merged
  }

  var socketPath: String {
    socket ?? ProcessInfo.processInfo.environment["LICENSE_AGENT_SOCKET"] ?? AgentInterface.defaultSocketPath
  }

  /// The largest reply agentctl reads: the agent's are a few kilobytes (a status with every
  /// slot's keys); more is not the agent, and ends the call.
  static let maximumReplySize = 1 << 20

  /// Calls a method of io.licenseagent.Agent; exits 3 when the agent cannot be reached.
  func call(_ method: AgentMethod, _ request: some AgentRequest, timeoutSeconds: Int = 30) throws
    -> VarlinkReply
  {
    do {
      let client = try VarlinkClient(
        path: socketPath, timeoutSeconds: timeoutSeconds, maximumReplySize: Self.maximumReplySize)
      return try client.call(method.qualifiedName, request.parameters)
    } catch {
      throw Self.unreachable(error)
    }
  }

  /// Calls a method of io.licenseagent.Agent with `more`: the client, to read what follows,
  /// and the first reply; exits 3 when the agent cannot be reached.
  func subscribe(_ method: AgentMethod, _ request: some AgentRequest, timeoutSeconds: Int = 10) throws
    -> (client: VarlinkClient, first: (reply: VarlinkReply, continues: Bool))
  {
    do {
      let client = try VarlinkClient(
        path: socketPath, timeoutSeconds: timeoutSeconds, maximumReplySize: Self.maximumReplySize)
      return (client, try client.callMore(method.qualifiedName, request.parameters))
    } catch {
      throw Self.unreachable(error)
    }
  }

  /// Says the agent cannot be reached; the exit status 3 to throw.
  static func unreachable(_ error: VarlinkClientError) -> ExitCode {
    printError(
      "agentctl: the agent cannot be reached: \(error). Is license-agent running? (systemctl status license-agent)"
    )
    return ExitCode(3)
  }
}

func printError(_ text: String) {
  StandardStream.error(text + "\n")
}

/// Reads a key from FILE, or standard input for "-".
func readKey(_ path: String) throws -> String {
  let data: Data?
  if path == "-" {
    data = Data(StandardStream.readAll())
  } else {
    data = FileManager.default.contents(atPath: path)
  }
  guard let data, !data.isEmpty else {
    throw ValidationError(
      "cannot read a key from \(path == "-" ? "standard input" : path): no such file, not readable, or empty")
  }
  return String(decoding: data, as: UTF8.self)
}

/// Prints an error reply in words and exits with the contract's status.
func fail(_ error: VarlinkError) throws -> Never {
  // What the socket answered goes to a terminal: control characters (escape sequences from
  // whatever listens on a --socket path) become spaces, and the text is bounded.
  func text(_ value: String) -> String { ExternalText.bounded(value, limit: ExternalText.diagnosticsLimit) }
  let message = text(error.parameters["message"]?.stringValue ?? error.description)
  switch error.name {
  case AgentInterface.ruleViolation:
    let rule = text(error.parameters["rule"]?.stringValue ?? "?")
    let code = text(error.parameters["code"]?.stringValue ?? "?")
    let reason = error.parameters["reason"]?.stringValue.map { $0 == code ? "" : ", \(text($0))" } ?? ""
    printError("agentctl: refused by rule \(rule) (\(code)\(reason)): \(message)")
    throw ExitCode(1)
  case AgentInterface.permissionDenied:
    printError("agentctl: permission denied: \(message)")
    throw ExitCode(77)
  case AgentInterface.activationFailed:
    let reason = text(error.parameters["error"]?.stringValue ?? "?")
    printError("agentctl: activation failed (\(reason)): \(message)")
    throw ExitCode(error.parameters["transient"]?.boolValue == true ? 75 : 1)
  case AgentInterface.storageFailure:
    printError("agentctl: the agent could not write its state: \(message)")
    throw ExitCode(74)
  default:
    printError("agentctl: the agent answered with an error: \(text(error.description))")
    throw ExitCode(1)
  }
}

struct AddKey: ParsableCommand {
  @ParentCommand var global: AgentCtl
  static let configuration = CommandConfiguration(
    commandName: "add-key",
    abstract: "Add a licence key as the active key (default) or as the reserve key of its slot.",
    discussion: "The key's slot follows from its type (vm-count server or workstation, processors, cores).")

  @OptionGroup var connection: ConnectionOptions
  @Argument(help: "The key file ('-' for standard input).")
  var file: String
  @Flag(help: "Add the key as the slot's reserve, promoted when the active key expires.")
  var reserve = false
  @Flag(help: "Confirm a change of licensing scheme, which removes every key of the old scheme (A2).")
  var replaceScheme = false

  func run() throws {
    let added = try sendKey(
      .addKey, file: file, reserve: reserve, replaceScheme: replaceScheme,
      connection: connection.after(global))
    print(added.message)
  }
}

struct CheckKey: ParsableCommand {
  @ParentCommand var global: AgentCtl
  static let configuration = CommandConfiguration(
    commandName: "check-key",
    abstract: "Check a key as add-key would, changing nothing.")

  @OptionGroup var connection: ConnectionOptions
  @Argument(help: "The key file ('-' for standard input).")
  var file: String
  @Flag(help: "Check the key as a reserve key.")
  var reserve = false
  @Flag(help: "Check as if a scheme change were confirmed.")
  var replaceScheme = false

  func run() throws {
    let checked = try sendKey(
      .checkKey, file: file, reserve: reserve, replaceScheme: replaceScheme,
      connection: connection.after(global))
    print("OK: \(checked.message)")
  }
}

/// AddKey or CheckKey with the key read from FILE; exits as the contract says on an error.
func sendKey(
  _ method: AgentMethod, file: String, reserve: Bool, replaceScheme: Bool, connection: ConnectionOptions
) throws -> AddKeyReply {
  let request = KeyRequest(
    key: try readKey(file), role: reserve ? .reserve : .active, replaceScheme: replaceScheme ? true : nil)
  switch try connection.call(method, request) {
  case .success(let reply): return try decodeParameters(AddKeyReply.self, from: reply)
  case .failure(let error): try fail(error)
  }
}

struct RemoveReserve: ParsableCommand {
  @ParentCommand var global: AgentCtl
  static let configuration = CommandConfiguration(
    commandName: "remove-reserve",
    abstract: "Remove the reserve key of a slot (server, workstation, processors or cores).")

  @OptionGroup var connection: ConnectionOptions
  @Argument(help: "The slot: server, workstation, processors or cores.")
  var slot: Slot

  func run() throws {
    switch try connection.after(global).call(.removeReserve, RemoveReserveRequest(slot: slot)) {
    case .success(let reply):
      let removed = try decodeParameters(RemoveReserveReply.self, from: reply)
      print(
        "Removed reserve key \(removed.removed.serial) from the \(slot.rawValue) slot; nothing takes over at expiry now."
      )
    case .failure(let error):
      try fail(error)
    }
  }
}

struct ReportUsage: ParsableCommand {
  @ParentCommand var global: AgentCtl
  static let configuration = CommandConfiguration(
    commandName: "report-usage",
    abstract: "Report the units a slot uses (for the protection service and scripts).",
    discussion: """
      UNITS counts as the vendor counts: for the server and workstation slots, the VMs of \
      that guest OS type protected in the last 30 days; for processors and cores, those of \
      the hosts protected. The report replaces the slot's previous one; the agent grades it \
      against the active key (90 %, over 100 %, over 110 %) and logs a band once when it is \
      entered. Root and the admin group only.
      """)

  @OptionGroup var connection: ConnectionOptions
  @Argument(help: "The slot: server, workstation, processors or cores.")
  var slot: Slot
  @Argument(help: "The units in use (0 or more).")
  var units: Int

  func validate() throws {
    guard units >= 0 else { throw ValidationError("UNITS must be 0 or more, not \(units)") }
  }

  func run() throws {
    switch try connection.after(global).call(.reportUsage, ReportUsageRequest(slot: slot, units: units)) {
    case .success(let reply): print(try decodeParameters(ReportUsageReply.self, from: reply).message)
    case .failure(let error): try fail(error)
    }
  }
}

struct Activate: ParsableCommand {
  @ParentCommand var global: AgentCtl
  static let configuration = CommandConfiguration(
    abstract: "Manual activation: get the key for an activation code and add it; it renews itself at expiry.",
    discussion: """
      The code is read from a file (--code-file, keep it 0600) or standard input \
      (--code-stdin), never echoed. --code puts it on the command line, where shell history \
      and ps can see it: accepted, with a warning. A code is 4 groups of 5 letters or digits \
      (ABCDE-12345-FGHIJ-67890); another shape is refused without contacting the server. \
      Exit status: 0 added, 1 refused (code or rule), 75 the activation server was \
      unreachable or busy (try again), 3 agent unreachable, 64 usage error, 77 not allowed.
      """)

  @OptionGroup var connection: ConnectionOptions
  @Option(help: "A file holding the activation code.")
  var codeFile: String?
  @Flag(help: "Read the activation code from standard input.")
  var codeStdin = false
  @Option(help: "The activation code itself (visible to other users in ps; prefer --code-file).")
  var code: String?
  @Flag(help: "Add the key as the slot's reserve.")
  var reserve = false

  func validate() throws {
    let sources = [codeFile != nil, codeStdin, code != nil].filter { $0 }.count
    guard sources == 1 else {
      throw ValidationError("give the code with exactly one of --code-file FILE, --code-stdin or --code")
    }
  }

  func run() throws {
    let text: String
    if let codeFile {
      guard let data = FileManager.default.contents(atPath: codeFile) else {
        throw ValidationError("cannot read the code from \(codeFile)")
      }
      text = String(decoding: data, as: UTF8.self)
    } else if codeStdin {
      text = String(decoding: StandardStream.readAll(), as: UTF8.self)
    } else {
      printError(
        "agentctl: warning: a code on the command line is visible in ps and shell history; prefer --code-file or --code-stdin"
      )
      text = code ?? ""
    }
    // Checked here too, so that a mistyped code fails at once, without even the agent.
    guard let activationCode = ActivationCode(text) else {
      printError(
        "agentctl: refused by rule C5 (invalid_code_format): \(ActivationCode.formatViolation().message)")
      throw ExitCode(1)
    }
    let request = ActivateRequest(code: activationCode.value, role: reserve ? .reserve : .active)
    switch try connection.after(global).call(.activate, request, timeoutSeconds: 300) {
    case .success(let reply):
      print(try decodeParameters(AddKeyReply.self, from: reply).message)
    case .failure(let error):
      try fail(error)
    }
  }
}

extension Slot: ExpressibleByArgument {
  public init?(argument: String) { self.init(rawValue: argument) }
  public static var allValueStrings: [String] { allCases.map(\.rawValue) }
}
