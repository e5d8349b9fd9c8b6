import FoundationEssentials
import Glibc
import LicenseCore
import StandardIO

/// The agent's configuration (`agent.toml`, contract §6). Every key is optional.
public struct AgentConfiguration: Sendable, Equatable {
  public var product = EngineConfiguration.defaultProduct
  public var warningThresholds = EngineConfiguration.defaultWarningThresholds
  public var adminGroup = "license-admin"
  public var activation = Activation()
  /// `[usage] stale-after` (U1): a usage report older than this is shown as stale.
  public var usageStaleAfter = EngineConfiguration.defaultUsageStaleAfter
  /// `[consumers] expect` and `confirm-within` (N2): the consumers that must confirm each
  /// takeover, and how long they have.
  public var expectedConsumers: [ConsumerName] = []
  public var confirmWithin = EngineConfiguration.defaultConfirmWithin
  /// `[blocking] grace` (B2): how long a blocked active key keeps working.
  public var blockingGrace = EngineConfiguration.defaultBlockingGrace
  /// `[hooks] timeout` (N3): how long one hook may run before it is killed, with whatever it
  /// started.
  public var hookTimeout = AgentConfiguration.defaultHookTimeout
  public static let defaultHookTimeout = TimeSpan.seconds(30)
  /// `[metrics] textfile`: where the Prometheus text file goes (contract §8); nil: none.
  public var metricsTextfile: String? = AgentConfiguration.defaultMetricsTextfile

  /// node_exporter's textfile directory on Debian (`prometheus-node-exporter`).
  public static let defaultMetricsTextfile = "/var/lib/prometheus/node-exporter/license-agent.prom"

  /// `[activation]`: how keys obtained with an activation code are renewed.
  public struct Activation: Sendable, Equatable {
    public enum Client: String, Sendable, Equatable { case https, exec }
    public var client = Client.https
    public var url: String?
    public var proxy: String?
    public var command: [String] = []
    public var caFile: String?
    public var attemptTimeout = TimeSpan.seconds(30)
    public var retryInitial = TimeSpan.seconds(5)
    public var retryMax = TimeSpan.minutes(10)
    public var alertAfter = TimeSpan.minutes(30)
    /// C6: the first request ahead of `exp` falls in `[exp - renewBefore, + renewSpread]`;
    /// zero turns renewal ahead off.
    public var renewBefore = TimeSpan.days(7)
    public var renewSpread = TimeSpan.days(3)
  }

  public init() {}

  /// The rules engine's part of the configuration.
  public var engine: EngineConfiguration {
    EngineConfiguration(
      product: product, warningThresholds: warningThresholds, retryInitial: activation.retryInitial,
      retryMax: activation.retryMax, alertAfter: activation.alertAfter, renewBefore: activation.renewBefore,
      renewSpread: activation.renewSpread, usageStaleAfter: usageStaleAfter,
      expectedConsumers: expectedConsumers, confirmWithin: confirmWithin, blockingGrace: blockingGrace)
  }

  /// Reads `path`; a missing file is the default configuration.
  public static func load(path: String) throws(ConfigurationError) -> AgentConfiguration {
    guard access(path, F_OK) == 0 else { return AgentConfiguration() }
    guard let bytes = StandardStream.readFile(path) else {
      throw ConfigurationError(file: path, line: nil, key: nil, problem: "cannot be read (\(errnoText()))")
    }
    return try parse(String(decoding: bytes, as: UTF8.self), file: path)
  }

  /// Parses TOML text; errors name `file`, the line and the key.
  public static func parse(_ text: String, file: String) throws(ConfigurationError) -> AgentConfiguration {
    let document: TOMLDocument
    do {
      document = try TOMLDocument(parsing: text)
    } catch {
      throw ConfigurationError(
        file: file, line: error.line, key: nil, problem: "is not valid TOML: \(error.text)")
    }
    var config = AgentConfiguration()
    var seen: [String: Int] = [:]
    let sections = Set(settings.compactMap(\.section))
    for header in document.headers {
      let name = header.name.joined(separator: ".")
      guard !header.array, header.name.count == 1, sections.contains(name) else {
        throw ConfigurationError(
          file: file, line: header.line, key: name,
          problem: "is not a known setting (known: \(known(in: nil).joined(separator: ", ")))")
      }
    }
    for entry in document.entries {
      // `[activation]` then `url = ...`, or `activation.url = ...` at the top: the same.
      let path = entry.table + entry.key
      let name = path.joined(separator: ".")
      guard
        let setting = settings.first(where: { ($0.section.map { [$0] } ?? []) + [$0.key] == path })
      else {
        if path.count == 1, sections.contains(path[0]) {
          throw ConfigurationError(
            file: file, line: entry.line, key: name, problem: "must be a table ([\(name)])")
        }
        let section = path.count > 1 && sections.contains(path[0]) ? path[0] : nil
        throw ConfigurationError(
          file: file, line: entry.line, key: name,
          problem: "is not a known setting (known: \(known(in: section).joined(separator: ", ")))")
      }
      let error = { (problem: String) in
        ConfigurationError(file: file, line: entry.value.line, key: setting.name, problem: problem)
      }
      try setting.apply(&config, entry.value, error)
      seen[setting.name] = entry.value.line
    }
    // Checks across settings, reported at the line of the one they name.
    func crossError(_ key: String, _ problem: String) -> ConfigurationError {
      ConfigurationError(file: file, line: seen[key], key: key, problem: problem)
    }
    let a = config.activation
    if a.renewBefore.microseconds > 0 && a.renewSpread > a.renewBefore {
      throw crossError(
        "activation.renew-spread",
        "must not be longer than renew-before (\(a.renewBefore)): the first request must fall before the expiry"
      )
    }
    if a.retryMax < a.retryInitial {
      throw crossError("activation.retry-max", "must not be shorter than retry-initial (\(a.retryInitial))")
    }
    if a.client == .exec && a.command.isEmpty {
      throw crossError(
        "activation.client", "is \"exec\" but no command is set; add command = [\"/path/to/program\"]")
    }
    return config
  }

  /// Every setting, as messages name it (`activation.retry-max`): what agent.toml(5) documents.
  public static var settingNames: [String] { settings.map(\.name) }

  /// The keys of `section` (the top level when nil: its keys and the sections), sorted.
  static func known(in section: String?) -> [String] {
    let keys = settings.filter { $0.section == section }.map(\.key)
    let tables = section == nil ? settings.compactMap(\.section) : []
    return Array(Set(keys + tables)).sorted()
  }

  static func isLoopback(_ host: String) -> Bool {
    let bare = host.trimming(["[", "]"])
    return bare == "localhost" || bare == "::1" || bare.hasPrefix("127.")
  }
}

/// A configuration error: the file, the line and key when known, and what is wrong.
public struct ConfigurationError: Error, Equatable, Sendable, CustomStringConvertible {
  public var file: String
  public var line: Int?
  public var key: String?
  public var problem: String

  public init(file: String, line: Int?, key: String?, problem: String) {
    self.file = file
    self.line = line
    self.key = key
    self.problem = problem
  }

  public var description: String {
    var location = file
    if let line { location += ":\(line)" }
    if let key { return "\(location): \(key) \(problem)" }
    return "\(location): \(problem)"
  }
}

// MARK: - The settings, one row each

/// One setting of `agent.toml`: where it is, and how its value is read into the
/// configuration (`error` makes the message for a wrong value, at its line).
struct Setting: Sendable {
  typealias Apply =
    @Sendable (
      inout AgentConfiguration, TOMLDocument.Value, (String) -> ConfigurationError
    ) throws(ConfigurationError) -> Void

  var section: String?
  var key: String
  var apply: Apply

  /// `section.key`, as messages name it.
  var name: String { section.map { "\($0).\(key)" } ?? key }
}

extension AgentConfiguration {
  /// Every setting of contract §6.
  static let settings: [Setting] = [
    Setting(section: nil, key: "product") { config, value, error throws(ConfigurationError) in
      config.product = try string(value, error)
      guard !config.product.isEmpty else { throw error("must not be empty") }
    },
    Setting(section: "warnings", key: "before") { config, value, error throws(ConfigurationError) in
      guard case .array(let items) = value.kind else {
        throw error("must be an array of durations such as [\"30d\", \"7d\"]")
      }
      var spans: [TimeSpan] = []
      for item in items {
        let span = try duration(item, error)
        guard span.microseconds > 0 else { throw error("durations must be positive") }
        spans.append(span)
      }
      config.warningThresholds = Array(Set(spans)).sorted(by: >)
    },
    Setting(section: "metrics", key: "textfile") { config, value, error throws(ConfigurationError) in
      let path = try string(value, error)
      if path.isEmpty {
        config.metricsTextfile = nil
        return
      }
      guard path.hasPrefix("/"), path.hasSuffix(".prom"), !path.hasSuffix("/.prom") else {
        throw error(
          "must be an absolute path ending in .prom (node_exporter reads only *.prom files), or \"\" to write none"
        )
      }
      config.metricsTextfile = path
    },
    positiveDuration("usage", "stale-after", \.usageStaleAfter),
    Setting(section: "consumers", key: "expect") { config, value, error throws(ConfigurationError) in
      guard case .array(let items) = value.kind else {
        throw error("must be an array of consumer names such as [\"protection-server\"]")
      }
      var names: [ConsumerName] = []
      for item in items {
        let text = try string(item, error)
        guard let name = ConsumerName(text) else {
          throw error(
            "has \"\(text.prefix(80))\", which is not a consumer name: use 1 to \(ConsumerName.maximumLength) letters, digits, '.', '_', '-' or '@'"
          )
        }
        if !names.contains(name) { names.append(name) }
      }
      guard names.count <= LicenseEngine.maximumConsumers else {
        throw error("lists \(names.count) consumers; at most \(LicenseEngine.maximumConsumers) are kept")
      }
      config.expectedConsumers = names
    },
    positiveDuration("consumers", "confirm-within", \.confirmWithin),
    Setting(section: "blocking", key: "grace") { config, value, error throws(ConfigurationError) in
      let span = try duration(value, error)
      guard span.microseconds >= 0, span <= TimeSpan.days(366) else {
        throw error("must be between \"0s\" (a blocked key counts as expired at once) and \"366d\"")
      }
      config.blockingGrace = span
    },
    Setting(section: "hooks", key: "timeout") { config, value, error throws(ConfigurationError) in
      let span = try duration(value, error)
      guard span.microseconds > 0, span <= TimeSpan.hours(1) else {
        throw error("must be positive and at most 1h (hooks run one at a time)")
      }
      config.hookTimeout = span
    },
    Setting(section: "control", key: "admin-group") { config, value, error throws(ConfigurationError) in
      config.adminGroup = try string(value, error)
    },
    Setting(section: "activation", key: "client") { config, value, error throws(ConfigurationError) in
      let text = try string(value, error)
      guard let client = Activation.Client(rawValue: text) else {
        throw error("must be \"https\" or \"exec\", not \"\(text)\"")
      }
      config.activation.client = client
    },
    Setting(section: "activation", key: "url") { config, value, error throws(ConfigurationError) in
      let url = try string(value, error)
      guard let parsed = URL(string: url), let scheme = parsed.scheme, ["https", "http"].contains(scheme),
        let host = parsed.host
      else {
        throw error("must be an https:// URL (plain http:// only to a loopback address)")
      }
      if scheme == "http", !isLoopback(host) {
        throw error("plain http:// is allowed only to a loopback address; use https://")
      }
      config.activation.url = url
    },
    Setting(section: "activation", key: "proxy") { config, value, error throws(ConfigurationError) in
      config.activation.proxy = try string(value, error)
    },
    Setting(section: "activation", key: "ca-file") { config, value, error throws(ConfigurationError) in
      config.activation.caFile = try string(value, error)
    },
    Setting(section: "activation", key: "command") { config, value, error throws(ConfigurationError) in
      guard case .array(let items) = value.kind, !items.isEmpty else {
        throw error("must be a non-empty array: [\"/path/to/program\", \"arg\", ...]")
      }
      var command: [String] = []
      for item in items { command.append(try string(item, error)) }
      guard command[0].hasPrefix("/") else {
        throw error("the program must be an absolute path (it is run without a shell)")
      }
      config.activation.command = command
    },
    positiveDuration("activation", "attempt-timeout", \.activation.attemptTimeout),
    positiveDuration("activation", "retry-initial", \.activation.retryInitial),
    positiveDuration("activation", "retry-max", \.activation.retryMax),
    positiveDuration("activation", "alert-after", \.activation.alertAfter),
    // C6: "0s" is allowed (renewal ahead off; a zero spread asks at exp - renew-before).
    nonNegativeDuration("activation", "renew-before", \.activation.renewBefore),
    nonNegativeDuration("activation", "renew-spread", \.activation.renewSpread),
  ]

  private static func positiveDuration(
    _ section: String, _ key: String, _ path: WritableKeyPath<AgentConfiguration, TimeSpan> & Sendable
  )
    -> Setting
  {
    Setting(section: section, key: key) { config, value, error throws(ConfigurationError) in
      let span = try duration(value, error)
      guard span.microseconds > 0 else { throw error("must be positive") }
      config[keyPath: path] = span
    }
  }

  private static func nonNegativeDuration(
    _ section: String, _ key: String, _ path: WritableKeyPath<AgentConfiguration, TimeSpan> & Sendable
  ) -> Setting {
    Setting(section: section, key: key) { config, value, error throws(ConfigurationError) in
      let span = try duration(value, error)
      guard span.microseconds >= 0 else { throw error("must not be negative") }
      config[keyPath: path] = span
    }
  }

  private static func string(_ value: TOMLDocument.Value, _ error: (String) -> ConfigurationError)
    throws(ConfigurationError) -> String
  {
    guard case .string(let text) = value.kind else { throw error("must be a string") }
    return text
  }

  private static func duration(_ value: TOMLDocument.Value, _ error: (String) -> ConfigurationError)
    throws(ConfigurationError) -> TimeSpan
  {
    guard case .string(let text) = value.kind, let span = TimeSpan(text) else {
      throw error("must be a duration string such as \"250ms\", \"5s\", \"10m\", \"1h\" or \"30d\"")
    }
    // Every instant the agent computes from a setting stays far from the end of the range.
    guard span <= TimeSpan.maximumSetting else {
      throw error(
        "is \"\(text)\", longer than 100 years (\(TimeSpan.maximumSetting)); use a shorter duration")
    }
    return span
  }
}
