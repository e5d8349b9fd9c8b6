import Foundation

/// Reading the Prometheus text format back in tests: the metrics file, a node_exporter scrape.
public enum PrometheusText {
  /// The samples of `text`: `name{labels}` (as written) -> value.
  public static func samples(_ text: String) -> [String: String] {
    var found: [String: String] = [:]
    for line in text.split(separator: "\n") where !line.hasPrefix("#") {
      guard let cut = line.lastIndex(of: " ") else { continue }
      found[String(line[..<cut])] = String(line[line.index(after: cut)...])
    }
    return found
  }

  /// A value in seconds (`1798761600.25`) in microseconds, exactly.
  public static func microseconds(_ value: String?) -> Int64? {
    guard let value, let decimal = Decimal(string: value) else { return nil }
    return NSDecimalNumber(decimal: decimal * 1_000_000).int64Value
  }
}
