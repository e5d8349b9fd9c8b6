import FoundationEssentials
import LicenseCore
import StandardIO
import TOMLKit

/// The agent's configuration (`agent.toml`, contract §6). Every key is optional.
public struct AgentConfiguration: Sendable, Equatable {
  public var product = EngineConfiguration.defaultProduct
  public var warningThresholds = EngineConfiguration.defaultWarningThresholds
  public var adminGroup = "license-admin"
  public var activation = Activation()
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
      renewSpread: activation.renewSpread)
  }

  /// Reads `path`; a missing file is the default configuration.
  public static func load(path: String) throws(ConfigurationError) -> AgentConfiguration {
    guard FileManager.default.fileExists(atPath: path) else { return AgentConfiguration() }
    guard let data = FileManager.default.contents(atPath: path) else {
      throw ConfigurationError(file: path, line: nil, key: nil, problem: "cannot be read")
    }
    return try parse(String(decoding: data, as: UTF8.self), file: path)
  }

  /// Parses TOML text; errors name `file`, the line and the key.
  public static func parse(_ text: String, file: String) throws(ConfigurationError) -> AgentConfiguration {
    try checkStructure(text, file: file)
    let table: TOMLTable
    do {
      table = try TOMLTable(string: text)
    } catch let error as TOMLParseError {
      throw ConfigurationError(
        file: file, line: error.source.begin.line, key: nil,
        problem: "is not valid TOML: \(error.description)")
    } catch {
      throw ConfigurationError(file: file, line: nil, key: nil, problem: "is not valid TOML: \(error)")
    }
    let reader = Reader(text: text, file: file)
    var config = AgentConfiguration()
    try reader.allow(table, keys: ["product", "activation", "warnings", "control", "metrics"], section: nil)
    if let value = table["product"] {
      config.product = try reader.string(value, key: "product", section: nil)
      guard !config.product.isEmpty else { throw reader.error("product", nil, "must not be empty") }
    }
    if let section = table["warnings"] {
      let warnings = try reader.table(section, key: "warnings")
      try reader.allow(warnings, keys: ["before"], section: "warnings")
      if let before = warnings["before"] {
        guard let array = before.array else {
          throw reader.error("before", "warnings", "must be an array of durations such as [\"30d\", \"7d\"]")
        }
        var spans: [TimeSpan] = []
        for item in array {
          let span = try reader.duration(item, key: "before", section: "warnings")
          guard span.microseconds > 0 else {
            throw reader.error("before", "warnings", "durations must be positive")
          }
          spans.append(span)
        }
        config.warningThresholds = Array(Set(spans)).sorted(by: >)
      }
    }
    if let section = table["metrics"] {
      let metrics = try reader.table(section, key: "metrics")
      try reader.allow(metrics, keys: ["textfile"], section: "metrics")
      if let value = metrics["textfile"] {
        let path = try reader.string(value, key: "textfile", section: "metrics")
        if path.isEmpty {
          config.metricsTextfile = nil
        } else {
          guard path.hasPrefix("/"), path.hasSuffix(".prom"), !path.hasSuffix("/.prom") else {
            throw reader.error(
              "textfile", "metrics",
              "must be an absolute path ending in .prom (node_exporter reads only *.prom files), or \"\" to write none"
            )
          }
          config.metricsTextfile = path
        }
      }
    }
    if let section = table["control"] {
      let control = try reader.table(section, key: "control")
      try reader.allow(control, keys: ["admin-group"], section: "control")
      if let group = control["admin-group"] {
        config.adminGroup = try reader.string(group, key: "admin-group", section: "control")
      }
    }
    if let section = table["activation"] {
      let activation = try reader.table(section, key: "activation")
      try reader.allow(
        activation,
        keys: [
          "client", "url", "proxy", "command", "ca-file", "attempt-timeout", "retry-initial", "retry-max",
          "alert-after", "renew-before", "renew-spread",
        ],
        section: "activation")
      var a = Activation()
      if let value = activation["client"] {
        let text = try reader.string(value, key: "client", section: "activation")
        guard let client = Activation.Client(rawValue: text) else {
          throw reader.error("client", "activation", "must be \"https\" or \"exec\", not \"\(text)\"")
        }
        a.client = client
      }
      if let value = activation["url"] {
        let url = try reader.string(value, key: "url", section: "activation")
        guard let parsed = URL(string: url), let scheme = parsed.scheme, ["https", "http"].contains(scheme),
          parsed.host != nil
        else {
          throw reader.error(
            "url", "activation", "must be an https:// URL (plain http:// only to a loopback address)")
        }
        if scheme == "http", !isLoopback(parsed.host!) {
          throw reader.error(
            "url", "activation", "plain http:// is allowed only to a loopback address; use https://")
        }
        a.url = url
      }
      if let value = activation["proxy"] {
        a.proxy = try reader.string(value, key: "proxy", section: "activation")
      }
      if let value = activation["ca-file"] {
        a.caFile = try reader.string(value, key: "ca-file", section: "activation")
      }
      if let value = activation["command"] {
        guard let array = value.array, !array.isEmpty else {
          throw reader.error(
            "command", "activation", "must be a non-empty array: [\"/path/to/program\", \"arg\", ...]")
        }
        a.command = try array.map { item throws(ConfigurationError) in
          try reader.string(item, key: "command", section: "activation")
        }
        guard a.command[0].hasPrefix("/") else {
          throw reader.error(
            "command", "activation", "the program must be an absolute path (it is run without a shell)")
        }
      }
      for (key, path) in [
        ("attempt-timeout", \Activation.attemptTimeout), ("retry-initial", \Activation.retryInitial),
        ("retry-max", \Activation.retryMax), ("alert-after", \Activation.alertAfter),
      ] {
        if let value = activation[key] {
          let span = try reader.duration(value, key: key, section: "activation")
          guard span.microseconds > 0 else { throw reader.error(key, "activation", "must be positive") }
          a[keyPath: path] = span
        }
      }
      // C6: "0s" is allowed (renewal ahead off; a zero spread asks at exp - renew-before).
      for (key, path) in [
        ("renew-before", \Activation.renewBefore), ("renew-spread", \Activation.renewSpread),
      ] {
        if let value = activation[key] {
          let span = try reader.duration(value, key: key, section: "activation")
          guard span.microseconds >= 0 else { throw reader.error(key, "activation", "must not be negative") }
          a[keyPath: path] = span
        }
      }
      if a.renewBefore.microseconds > 0 && a.renewSpread > a.renewBefore {
        throw reader.error(
          "renew-spread", "activation",
          "must not be longer than renew-before (\(a.renewBefore)): the first request must fall before the expiry"
        )
      }
      if a.retryMax < a.retryInitial {
        throw reader.error(
          "retry-max", "activation", "must not be shorter than retry-initial (\(a.retryInitial))")
      }
      if a.client == .exec && a.command.isEmpty {
        throw reader.error(
          "client", "activation", "is \"exec\" but no command is set; add command = [\"/path/to/program\"]")
      }
      config.activation = a
    }
    return config
  }

  /// Checks the shape of every line before TOMLKit sees the text: toml++ (inside TOMLKit
  /// 0.6.0) aborts the whole process, by an assertion in its key parser, on some malformed
  /// table headers and keys (`[activación]`, a control character in a name, `[[[`; found
  /// by fuzzing, Fuzz/README.md), and a configuration error must never stop the agent
  /// other than by saying what is wrong. Outside strings and comments, a line holds
  /// nothing, a table header `[name]` / `[[name]]`, or `name = value`, where a name is
  /// dotted parts of ASCII letters, digits, `-` and `_`, or quoted; a value may span lines
  /// inside brackets. TOMLKit then parses what passed.
  static func checkStructure(_ text: String, file: String) throws(ConfigurationError) {
    var scanner = TOMLLineScanner(text: text)
    do { try scanner.scanDocument() } catch {
      throw ConfigurationError(
        file: file, line: scanner.line, key: nil, problem: "is not valid TOML: \(error.text)")
    }
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

  public var description: String {
    var location = file
    if let line { location += ":\(line)" }
    if let key { return "\(location): \(key) \(problem)" }
    return "\(location): \(problem)"
  }
}

/// Reads values and finds the line of a key, for messages.
private struct Reader {
  let lines: [Substring]
  let file: String

  init(text: String, file: String) {
    lines = text.split(separator: "\n", omittingEmptySubsequences: false)
    self.file = file
  }

  /// The 1-based line where `key` is set in `[section]` (or at the top when nil).
  func line(of key: String, section: String?) -> Int? {
    var current: String?
    for (index, raw) in lines.enumerated() {
      let line = raw.trimmingWhitespace()
      if line.hasPrefix("[") {
        current = line.trimming(["[", "]", " "])
        continue
      }
      guard current == section else { continue }
      let name = line.split(separator: "=", maxSplits: 1).first?.trimmingWhitespace().trimming(["\"", "'"])
      if name == key { return index + 1 }
    }
    if section != nil, key == section {
      return lines.firstIndex { $0.trimmingWhitespace() == "[\(key)]" }.map { $0 + 1 }
    }
    return nil
  }

  func error(_ key: String, _ section: String?, _ problem: String) -> ConfigurationError {
    ConfigurationError(
      file: file, line: line(of: key, section: section), key: section.map { "\($0).\(key)" } ?? key,
      problem: problem)
  }

  func allow(_ table: TOMLTable, keys: Set<String>, section: String?) throws(ConfigurationError) {
    for key in table.keys.sorted() where !keys.contains(key) {
      throw error(key, section, "is not a known setting (known: \(keys.sorted().joined(separator: ", ")))")
    }
  }

  func table(_ value: TOMLValueConvertible, key: String) throws(ConfigurationError) -> TOMLTable {
    guard let table = value.table else { throw error(key, nil, "must be a table ([\(key)])") }
    return table
  }

  func string(_ value: TOMLValueConvertible, key: String, section: String?) throws(ConfigurationError)
    -> String
  {
    guard let text = value.string else { throw error(key, section, "must be a string") }
    return text
  }

  func duration(_ value: TOMLValueConvertible, key: String, section: String?) throws(ConfigurationError)
    -> TimeSpan
  {
    guard let text = value.string, let span = TimeSpan(text) else {
      throw error(
        key, section, "must be a duration string such as \"250ms\", \"5s\", \"10m\", \"1h\" or \"30d\"")
    }
    // Every instant the agent computes from a setting stays far from the end of the range.
    guard span <= TimeSpan.maximumSetting else {
      throw error(
        key, section,
        "is \"\(text)\", longer than 100 years (\(TimeSpan.maximumSetting)); use a shorter duration")
    }
    return span
  }
}
