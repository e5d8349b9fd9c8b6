import ArgumentParser
import ControlInterface
import FoundationEssentials
import LicenseCore
import SimpleJSON
import StandardIO
import Varlink

/// `agentctl monitor`: the licence's changes as they happen, like `journalctl -f`.
struct Monitor: ParsableCommand {
  @ParentCommand var global: AgentCtl
  static let configuration = CommandConfiguration(
    abstract: "Follow the licence: the status, then each change as it happens (Ctrl-C to stop).",
    discussion: """
      Subscribes to the agent (Monitor, rule N1): prints the status in one line per slot, \
      then one line per durable change, in order, once it is on disk: the time, the event \
      (as the journal has it) and its message. --json prints each reply as one JSON object \
      per line: {"sequence", "event", "status"} (the first has no event). Any local user may \
      monitor. Exits 3 when the agent cannot be reached, stops, or drops this subscriber \
      for not reading (it then says so).
      """)

  @OptionGroup var connection: ConnectionOptions
  @Option(help: "Follow as this consumer (a name of [consumers] expect); confirm with agentctl confirm.")
  var consumer: String?
  @Option(
    name: .customLong("json"),
    help: ArgumentHelp("Print each reply as one JSON object per line.", valueName: "short|pretty"))
  var json: JSONMode?

  func validate() throws {
    if let consumer, ConsumerName(consumer) == nil {
      throw ValidationError(ConsumerName.violation(consumer).message)
    }
  }

  func run() throws {
    let (client, first) = try connection.after(global).subscribe(.monitor, MonitorRequest(consumer: consumer))
    var reply = first
    while true {
      switch reply.reply {
      case .failure(let error):
        if error.name == AgentInterface.subscriberDropped {
          let message = ExternalText.bounded(
            error.parameters["message"]?.stringValue ?? "", limit: ExternalText.diagnosticsLimit)
          printError("agentctl: the agent dropped this monitor: \(message)")
          throw ExitCode(3)
        }
        try fail(error)
      case .success(let parameters):
        try show(parameters)
      }
      guard reply.continues else {
        printError("agentctl: the agent ended the monitor")
        throw ExitCode(3)
      }
      do {
        reply = try client.next(waitingForever: true)
      } catch {
        printError("agentctl: the agent closed the connection (stopped or restarted?): \(error)")
        throw ExitCode(3)
      }
    }
  }

  private func show(_ parameters: [String: JSONValue]) throws {
    if let json {
      emit(json.render(.object(parameters)))
      return
    }
    let decoded: MonitorReply
    do {
      decoded = try decodeParameters(MonitorReply.self, from: parameters.forTerminal)
    } catch {
      printError("agentctl: the reply on the socket is not a Monitor reply this agentctl reads (\(error))")
      throw ExitCode(3)
    }
    let status = decoded.status
    guard let event = decoded.event else {
      if decoded.sequence == 0 {
        emit("\(status.now) license-agent \(status.version): following the licence (Ctrl-C to stop)")
        for slot in status.slots { emit("\(status.now) \(Self.summary(slot))") }
      } else {
        // A change that logs nothing (a usage report within its band, a confirmation).
        emit(
          "\(status.now) changed without an event: " + status.slots.map(Self.summary).joined(separator: "; "))
      }
      return
    }
    func field(_ name: String) -> String {
      ExternalText.bounded(event[name] ?? "", limit: ExternalText.diagnosticsLimit)
    }
    let slot = field("LICENSE_SLOT")
    let serial = field("LICENSE_SERIAL")
    var line = "\(status.now) \(field("LICENSE_EVENT"))"
    if !slot.isEmpty { line += " \(slot)" }
    if !serial.isEmpty { line += " \(serial)" }
    emit(line + ": " + field("MESSAGE"))
  }

  /// One line for a slot: what is active, what takes over, and its consumers.
  static func summary(_ slot: SlotStatus) -> String {
    var text = "\(slot.slot.rawValue): \(slot.status.rawValue)"
    if let active = slot.active { text += " \(active.serial) until \(active.expiresAt)" }
    if let expired = slot.expired { text += " (\(expired.serial) expired at \(expired.expiresAt))" }
    text += ", takeover \(slot.takeover.rawValue)"
    if let consumers = slot.consumers {
      text += "; consumers: " + consumers.map { consumerText($0, left: { $0 }) }.joined(separator: ", ")
    }
    return text
  }

  /// A line at once, even into a pipe (a reader follows it as it comes).
  private func emit(_ line: String) {
    StandardStream.output(line + "\n")
  }
}

/// `agentctl add-blocklist`: a blocklist of a trusted issuer (rule B1).
struct AddBlocklist: ParsableCommand {
  @ParentCommand var global: AgentCtl
  static let configuration = CommandConfiguration(
    commandName: "add-blocklist",
    abstract: "Give the agent a blocklist of a trusted issuer; say which keys of this SVM it blocks.",
    discussion: """
      The list (a JWS, as license-keytool blocklist makes it) is kept when it is newer than \
      the issuer's list the agent has (a lower or equal sequence is refused, rule B1 \
      blocklist_rollback). A blocked reserve or key renewed ahead is removed at once (B3). \
      Lists in /etc/license-agent/blocklists/*.jws are read at start and on reload. Root and \
      the admin group only.
      """)

  @OptionGroup var connection: ConnectionOptions
  @Argument(help: "The blocklist file ('-' for standard input).")
  var file: String

  func run() throws {
    let text = try readKey(file)
    switch try connection.after(global).call(.addBlocklist, AddBlocklistRequest(blocklist: text)) {
    case .success(let reply):
      print(try decodeParameters(AddBlocklistReply.self, from: reply.forTerminal).message)
    case .failure(let error): try fail(error)
    }
  }
}

/// `agentctl confirm`: a consumer says it enforces a key (rule N2).
struct Confirm: ParsableCommand {
  @ParentCommand var global: AgentCtl
  static let configuration = CommandConfiguration(
    abstract: "Confirm that a consumer enforces a slot's key (for consumers and scripts).",
    discussion: """
      A consumer of the licence (the protection service) confirms the serial it enforces \
      per slot once it has taken a new key. A consumer listed in [consumers] expect that \
      has not confirmed a new active key within confirm-within makes the agent log \
      CONSUMER_NOT_UPDATED; a confirmation clears it. Root and the admin group only.
      """)

  @OptionGroup var connection: ConnectionOptions
  @Option(help: "The consumer's name (as [consumers] expect lists it).")
  var consumer: String
  @Argument(help: "The slot: server, workstation, processors or cores.")
  var slot: Slot
  @Argument(help: "The serial of the key the consumer now enforces.")
  var serial: String

  func validate() throws {
    if ConsumerName(consumer) == nil { throw ValidationError(ConsumerName.violation(consumer).message) }
  }

  func run() throws {
    let request = ConfirmRequest(consumer: consumer, slot: slot, serial: serial)
    switch try connection.after(global).call(.confirm, request) {
    case .success(let reply): print(try decodeParameters(ConfirmReply.self, from: reply).message)
    case .failure(let error): try fail(error)
    }
  }
}
