import AgentSettings
import FuzzSupport

/// libFuzzer target for the configuration parser (`Fuzz/README.md`): any bytes as
/// agent.toml. Properties besides not crashing: an error names the file, and a
/// configuration that parses has positive durations and thresholds.
func exercise(_ bytes: [UInt8]) {
  let text = String(decoding: bytes, as: UTF8.self)
  do {
    let configuration = try AgentConfiguration.parse(text, file: "fuzz.toml")
    let activation = configuration.activation
    precondition(
      activation.retryInitial.microseconds > 0 && activation.retryMax.microseconds > 0
        && activation.attemptTimeout.microseconds > 0, "a non-positive duration was accepted")
    precondition(
      configuration.warningThresholds.allSatisfy { $0.microseconds > 0 },
      "a non-positive threshold was accepted")
  } catch {
    precondition(error.description.hasPrefix("fuzz.toml"), "an error that does not name the file")
  }
}

@main struct FuzzTarget {
  static func main() { fuzzMain(exercise) }
}
