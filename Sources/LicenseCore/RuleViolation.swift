/// A refusal by one of the licensing rules: the rule id (`A1`, `R5`, ...), the stable error
/// code of `rules.md` (`expires_before_active`), and a sentence that says what to do.
///
/// This is the value the control interface returns as `io.licenseagent.Agent.RuleViolation`
/// and `agentctl` prints; `reason` refines `invalid_key` (see ``KeyDefect/reason``).
public struct RuleViolation: Error, Equatable, Sendable, CustomStringConvertible {
  public var rule: RuleID
  public var code: String
  public var reason: String?
  public var message: String
  /// The serial of the refused key, when it could be read.
  public var serial: String?
  /// The slot the refused key is for, when known.
  public var slot: Slot?
  /// The refused key's expiry, when it could be read.
  public var expiresAt: Timestamp?

  public init(
    rule: RuleID, code: String, reason: String? = nil, message: String, serial: String? = nil,
    slot: Slot? = nil, expiresAt: Timestamp? = nil
  ) {
    self.rule = rule
    self.code = code
    self.reason = reason
    self.message = message
    self.serial = serial
    self.slot = slot
    self.expiresAt = expiresAt
  }

  /// `R5 expires_before_active`: the form of the journal's `LICENSE_RULE` field.
  public var ruleAndCode: String { "\(rule.rawValue) \(code)" }

  public var description: String { "\(rule.rawValue) \(code): \(message)" }
}
