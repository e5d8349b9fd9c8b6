/// Where the agent's files are (contract §6): systemd's `*_DIRECTORY` variables, else the
/// defaults under /etc, /var/lib and /run.
public struct AgentPaths: Sendable, Equatable {
  public var configurationDirectory: String
  public var stateDirectory: String
  public var runtimeDirectory: String

  public init(configurationDirectory: String, stateDirectory: String, runtimeDirectory: String) {
    self.configurationDirectory = configurationDirectory
    self.stateDirectory = stateDirectory
    self.runtimeDirectory = runtimeDirectory
  }

  /// From the environment. systemd may list several directories separated by ':'; the
  /// first is used.
  public static func fromEnvironment(_ environment: [String: String]) -> AgentPaths {
    func directory(_ name: String, _ fallback: String) -> String {
      guard let value = environment[name], !value.isEmpty else { return fallback }
      return String(value.split(separator: ":").first ?? Substring(fallback))
    }
    return AgentPaths(
      configurationDirectory: directory("CONFIGURATION_DIRECTORY", "/etc/license-agent"),
      stateDirectory: directory("STATE_DIRECTORY", "/var/lib/license-agent"),
      runtimeDirectory: directory("RUNTIME_DIRECTORY", "/run/license-agent"))
  }

  public var configurationFile: String { configurationDirectory + "/agent.toml" }
  public var trustDirectory: String { configurationDirectory + "/trusted-issuers" }
  /// Blocklists (B1), `*.jws`, read at start and on reload.
  public var blocklistDirectory: String { configurationDirectory + "/blocklists" }
  /// Programs run after each durable change (N3).
  public var hooksDirectory: String { configurationDirectory + "/hooks.d" }
  public var socketPath: String { runtimeDirectory + "/io.licenseagent.Agent" }
}
