import AgentRuntime
import AgentSettings
import Dispatch
import FoundationEssentials
import Glibc
import LicenseCore
import LicenseStorage
import Logging
import ServiceLifecycle
import StandardIO
import Synchronization
import Systemd
import UnixSignals

/// `license-agent`: the daemon. Run with no arguments in the foreground, as systemd starts it.
@main
struct LicenseAgentMain {
  static let usage = """
    Usage: license-agent [--version | --help | --check-config FILE | --remove-metrics |
                          --write-state-for 0.1|0.2|0.3]

    Runs the licence agent in the foreground (as systemd's license-agent.service does). It keeps
    the SVM's licence from lapsing: it promotes the reserve key at the instant the active key
    expires, and tells the journal everything that matters.

    Files (contract §6), from systemd's variables or their defaults:
      $CONFIGURATION_DIRECTORY/agent.toml         (/etc/license-agent/agent.toml)
      $CONFIGURATION_DIRECTORY/trusted-issuers/   (/etc/license-agent/trusted-issuers/)
      $STATE_DIRECTORY/state.json                 (/var/lib/license-agent/)
      $RUNTIME_DIRECTORY/io.licenseagent.Agent    (/run/license-agent/, the control socket)

    --check-config FILE  checks FILE as agent.toml (every key, type and duration, exactly as the
                         daemon reads it at start and on SIGHUP), prints what is wrong, and exits:
                         0 valid, 78 invalid, 66 unreadable. Changes nothing; tools check a new
                         configuration with it before they install it (e.g. Ansible's validate).
    --remove-metrics     removes the metrics file ([metrics] textfile of agent.toml, contract §8) and
                         exits 0. The unit runs it as ExecStopPost=, so that after a crash too
                         monitoring sees the agent is down; the daemon removes it itself at a
                         graceful stop.
    --write-state-for 0.1|0.2|0.3|0.4
                         rewrites the state (state.json and its last good copy) in the form
                         license-agent 0.1.x (schema 1), 0.2.x, 0.3.x or 0.4.x (schema 2, without
                         what they cannot read: usage reports and their events for 0.2.x,
                         consumers' confirmations and CONSUMER_NOT_UPDATED for 0.3.x and older,
                         blocklists, KEY_BLOCKED and blocked keys' grace for all) reads, and exits: 0
                         done, 1 not done (the state is unchanged). Only while the agent is
                         stopped: the package runs it before a downgrade (an older version
                         refuses what it cannot read and would not start); this version reads
                         them and writes its own form back at its next start.
                         --write-state-schema 1|2 is the older spelling of 0.1 and 0.2.

    Signals: SIGTERM/SIGINT stop gracefully; SIGHUP rereads the configuration and the trust
    directory (an invalid configuration keeps the old one).
    Environment: LICENSE_AGENT_LOG=journal|console|auto (default auto: the journal when its
    socket exists, else standard error).
    Exit status: 0 stopped cleanly, 1 could not start (state, socket), 64 usage error,
    78 invalid configuration.

    Operators use agentctl(1); see license-agent(8).
    """

  /// `--check-config FILE`: the daemon's own parser on FILE, nothing else touched. Unlike the
  /// daemon, a missing file is an error here: the caller names a file it means to install.
  static func checkConfiguration(file: String) -> Int32 {
    guard let data = FileManager.default.contents(atPath: file) else {
      StandardStream.error(
        "license-agent: \(file): cannot be read (missing, or no permission): nothing was checked\n")
      return 66
    }
    do {
      _ = try AgentConfiguration.parse(String(decoding: data, as: UTF8.self), file: file)
    } catch {
      StandardStream.error("license-agent: invalid configuration: \(error)\n")
      return 78
    }
    print("\(file): valid configuration")
    return 0
  }

  /// `--remove-metrics`: the metrics file of the configuration goes; an unreadable
  /// configuration removes the default one. Never fails: it runs after the daemon stopped.
  static func removeMetrics() -> Int32 {
    let paths = AgentPaths.fromEnvironment(ProcessInfo.processInfo.environment)
    let path: String?
    do {
      path = try AgentConfiguration.load(path: paths.configurationFile).metricsTextfile
    } catch {
      path = AgentConfiguration.defaultMetricsTextfile
    }
    if let path { MetricsFile.remove(path) }
    return 0
  }

  /// `--write-state-for 0.1|0.2|0.3|0.4` (and its older spelling `--write-state-schema 1|2`): the
  /// state in the form that version reads, before a downgrade.
  static func writeState(for release: FileStateStore.OlderRelease) -> Int32 {
    let paths = AgentPaths.fromEnvironment(ProcessInfo.processInfo.environment)
    do {
      let store = try FileStateStore(directory: paths.stateDirectory)
      let loaded = try store.downgrade(for: release)
      let count = loaded.state.slots.count
      let schema = release == .v01 ? 1 : 2
      print(
        "\(store.stateFile): written in schema \(schema) (\(count) slot\(count == 1 ? "" : "s")), for license-agent \(release.rawValue).x"
      )
      return 0
    } catch {
      StandardStream.error("license-agent: cannot write the state for \(release.rawValue).x: \(error)\n")
      return 1
    }
  }

  static func main() async {
    // A client that disconnects mid-reply, or an activation client that exits before reading
    // its input, must not kill the agent.
    signal(SIGPIPE, SIG_IGN)
    let arguments = Array(CommandLine.arguments.dropFirst())
    if arguments == ["--version"] {
      print("license-agent \(Agent.version)")
      return
    }
    if arguments == ["--help"] || arguments == ["-h"] {
      print(usage)
      return
    }
    if arguments.first == "--check-config" {
      guard arguments.count == 2 else {
        StandardStream.error("license-agent: --check-config takes one FILE\n\n\(usage)\n")
        exit(64)
      }
      exit(checkConfiguration(file: arguments[1]))
    }
    if arguments == ["--remove-metrics"] { exit(removeMetrics()) }
    if arguments.first == "--write-state-for" {
      guard arguments.count == 2, let release = FileStateStore.OlderRelease(rawValue: arguments[1]) else {
        StandardStream.error("license-agent: --write-state-for takes 0.1, 0.2, 0.3 or 0.4\n\n\(usage)\n")
        exit(64)
      }
      exit(writeState(for: release))
    }
    if arguments.first == "--write-state-schema" {
      guard arguments.count == 2, let schema = Int(arguments[1]), schema == 1 || schema == 2 else {
        StandardStream.error(
          "license-agent: --write-state-schema takes 1 (for 0.1.0) or 2 (for 0.2.0)\n\n\(usage)\n")
        exit(64)
      }
      exit(writeState(for: schema == 1 ? .v01 : .v02))
    }
    guard arguments.isEmpty else {
      StandardStream.error("license-agent: unknown argument '\(arguments[0])'\n\n\(usage)\n")
      exit(64)
    }

    let environment = ProcessInfo.processInfo.environment
    let useJournal: Bool
    switch environment["LICENSE_AGENT_LOG"] ?? "auto" {
    case "journal": useJournal = true
    case "console": useJournal = false
    default: useJournal = Journal.isAvailable
    }
    LoggingSystem.bootstrap { label in JournalLogHandler(label: label, useJournal: useJournal) }
    let logger = Logger(label: "license-agent")
    let paths = AgentPaths.fromEnvironment(environment)

    let configuration: AgentConfiguration
    do {
      configuration = try AgentConfiguration.load(path: paths.configurationFile)
    } catch {
      logger.critical("Invalid configuration, not starting: \(error)")
      exit(78)
    }
    let (trust, problems) = TrustDirectory.load(paths.trustDirectory)
    for problem in problems {
      logger.error(
        "Ignored a file of the trust directory",
        metadata: ["file": "\(problem.file)", "problem": "\(problem.problem)"])
    }
    if trust.keys.isEmpty {
      logger.warning(
        "No trusted issuer: every key will be refused until an issuer's public JWK is installed",
        metadata: ["trust_directory": "\(paths.trustDirectory)"])
    }
    let store: FileStateStore
    do {
      store = try FileStateStore(directory: paths.stateDirectory, crashPoint: testCrashPoint(environment))
    } catch {
      logger.critical("Cannot open the state directory, not starting: \(error)")
      exit(1)
    }
    let sink: EventSink = useJournal ? JournalEventSink() : ConsoleEventSink()
    let agent = Agent(
      paths: paths, configuration: configuration, trust: trust, store: store, sink: sink, logger: logger,
      reapsChildren: true)
    // SIGHUP is handled from before READY=1: systemd may reload as soon as it sees READY.
    let reload = installReloadHandler(agent)
    do {
      // READY=1 comes from AgentService, once the service group handles SIGTERM.
      try agent.start(announceReady: false)
    } catch {
      logger.critical("Cannot start: \(error)")
      exit(1)
    }

    let group = ServiceGroup(
      configuration: ServiceGroupConfiguration(
        services: [
          .init(service: AgentService(agent: agent)),
          .init(service: ReloadService(source: reload)),
        ],
        gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
    // The services' tasks run on a queue of their own, never on libdispatch's global queues
    // (see QueueTaskExecutor: an idle agent must not wake up every second).
    let executor = QueueTaskExecutor(
      queue: DispatchQueue(label: "license-agent.services", qos: Agent.queueQoS))
    await withTaskExecutorPreference(executor) {
      do {
        try await group.run()
      } catch {
        logger.error("Service group ended with an error: \(error)")
      }
    }
  }
}

/// Rereads the configuration on each SIGHUP. Made outside `main`: a closure written there
/// would be main-actor isolated and trap when it fires on the signal queue.
func installReloadHandler(_ agent: Agent) -> DispatchSourceSignal {
  signal(SIGHUP, SIG_IGN)
  let source = DispatchSource.makeSignalSource(
    signal: SIGHUP, queue: DispatchQueue(label: "license-agent.sighup", qos: Agent.queueQoS))
  source.setEventHandler { @Sendable in agent.requestReload() }
  source.resume()
  return source
}

/// Announces READY=1 (the group now handles SIGTERM and SIGINT), runs until graceful
/// shutdown, then stops the agent (STOPPING=1).
struct AgentService: Service {
  let agent: Agent
  func run() async throws {
    // Calls into the agent's actor: they hop onto its queue, no thread of the service
    // group's executor is blocked.
    await agent.announceReady()
    try? await gracefulShutdown()
    await agent.stop()
  }
}

/// Keeps the SIGHUP source (installed before start) until graceful shutdown.
///
/// A Dispatch signal source on a serial queue rather than `UnixSignalsSequence` with
/// `cancelOnGracefulShutdown()`: the latter runs unstructured tasks on the global executor,
/// which starts libdispatch's 1-second workqueue monitor, and an idle agent must not wake up
/// between events (T2; see QueueTaskExecutor).
struct ReloadService: Service {
  // DispatchSource is thread-safe; cancel() may be called from any thread.
  nonisolated(unsafe) let source: DispatchSourceSignal
  func run() async throws {
    try? await gracefulShutdown()
    source.cancel()
  }
}

/// The crash harness's hook (`license-agent-bench crash`), compiled into debug builds only:
/// `LICENSE_AGENT_CRASH_AT=STEP:N` kills the agent with SIGKILL when the N-th state write
/// reaches STEP (a ``WriteStep`` name), exactly where a power cut could stop it. Release
/// builds, which the package ships, ignore the variable.
func testCrashPoint(_ environment: [String: String]) -> (@Sendable (WriteStep) throws -> Void)? {
  #if DEBUG
    guard let spec = environment["LICENSE_AGENT_CRASH_AT"] else { return nil }
    let parts = spec.split(separator: ":")
    guard parts.count == 2, let step = WriteStep(rawValue: String(parts[0])), let target = Int(parts[1])
    else {
      StandardStream.error("license-agent: LICENSE_AGENT_CRASH_AT must be STEP:N, e.g. renamed:2\n")
      exit(64)
    }
    let counter = CrashCounter()
    return { reached in
      guard reached == step, counter.next() == target else { return }
      kill(getpid(), SIGKILL)
    }
  #else
    return nil
  #endif
}

/// Counts the writes reaching the crash step.
final class CrashCounter: Sendable {
  private let count = Mutex(0)
  func next() -> Int {
    count.withLock { value in
      value += 1
      return value
    }
  }
}
