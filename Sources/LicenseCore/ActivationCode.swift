/// An activation code (contract §2): 4 groups of 5 characters `[A-Z0-9]` joined by `-`;
/// lower case is accepted and upper-cased. A secret (rule C1): it is stored only in the
/// state file (0600) and shown only as its last 5 characters, its ``hint``.
public struct ActivationCode: Sendable, Equatable, Codable, CustomStringConvertible {
  /// The normalized code. Never log or print it.
  public let value: String

  /// Reads a code; surrounding white space is ignored. Nil when it has another shape.
  public init?(_ text: String) {
    let trimmed = text.trimmingWhitespace().uppercased()
    let groups = trimmed.split(separator: "-", omittingEmptySubsequences: false)
    guard groups.count == 4,
      groups.allSatisfy({
        $0.utf8.count == 5 && $0.utf8.allSatisfy { ($0 >= 65 && $0 <= 90) || ($0 >= 48 && $0 <= 57) }
      })
    else { return nil }
    value = trimmed
  }

  /// The last 5 characters: `LICENSE_CODE_HINT`, and all that status shows.
  public var hint: String { String(value.suffix(5)) }

  /// Never the code: `…` and the hint.
  public var description: String { "…" + hint }

  /// The violation for text that is not a code (refused locally, without any request).
  public static func formatViolation() -> RuleViolation {
    RuleViolation(
      rule: .C5, code: "invalid_code_format",
      message:
        "That is not an activation code: a code is 4 groups of 5 letters or digits joined by '-' (ABCDE-12345-FGHIJ-67890). Nothing was sent to the activation server; check the code and try again."
    )
  }

  public init(from decoder: Decoder) throws {
    let text = try decoder.singleValueContainer().decode(String.self)
    guard let code = ActivationCode(text) else {
      throw DecodingError.dataCorrupted(
        .init(codingPath: decoder.codingPath, debugDescription: "not an activation code"))
    }
    self = code
  }

  public func encode(to encoder: Encoder) throws {
    var container = encoder.singleValueContainer()
    try container.encode(value)
  }
}

/// The retry delay of renewal attempts (rule C3): exponential backoff with full jitter.
///
/// After the `failures`-th consecutive transient failure, the cap is
/// `min(maximum, initial × 2^(failures−1))` and the delay is `jitter × cap`, with `jitter`
/// uniform in [0, 1) (full jitter spreads a fleet's retries after a shared outage). A
/// `Retry-After` from the server is honoured: the delay is never shorter than it. The first
/// attempt, at the instant of expiry, has no delay and no jitter.
///
/// | failures | cap (initial 5 s, maximum 10 min) |
/// |---|---|
/// | 1 | 5 s |
/// | 2 | 10 s |
/// | 3 | 20 s |
/// | 4 | 40 s |
/// | 5 | 80 s |
/// | 6 | 160 s |
/// | 7 | 320 s |
/// | 8 and more | 600 s (the maximum) |
public func renewalRetryDelay(
  failures: Int, initial: TimeSpan, maximum: TimeSpan, jitter: Double, retryAfter: TimeSpan? = nil
) -> TimeSpan {
  let exponent = min(max(failures - 1, 0), 40)
  let (scaled, overflow) = initial.microseconds.multipliedReportingOverflow(by: Int64(1) << exponent)
  let cap = overflow ? maximum.microseconds : min(scaled, maximum.microseconds)
  let jittered = Int64((Double(cap) * min(max(jitter, 0), 1)).rounded(.down))
  return TimeSpan(microseconds: max(jittered, retryAfter?.microseconds ?? 0))
}

/// Whether the `failures`-th failed attempt is logged as ACTIVATION_ATTEMPT_FAILED: the first
/// five, then the 8th, 16th, 32nd... so that a long outage does not flood the journal
/// (`agentctl status` always shows the current count).
public func isLoggedAttempt(_ failures: Int) -> Bool {
  failures <= 5 || (failures > 0 && failures & (failures - 1) == 0)
}
