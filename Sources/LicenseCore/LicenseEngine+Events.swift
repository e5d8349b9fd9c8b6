/// The texts and fields of the journal events the rules produce.
extension LicenseEngine {
  func manualActivationRequired(slot: Slot, renewal: RenewalState) -> JournalEvent {
    let error = renewal.lastError ?? "not renewed within \(configuration.alertAfter) of the expiry"
    let fields: [JournalEvent.Field] = [
      .init("LICENSE_SLOT", slot.rawValue), .init("LICENSE_SERIAL", renewal.expiredSerial),
      .init("LICENSE_EXPIRES_AT", renewal.expiredAt.rfc3339), .init("LICENSE_ERROR", error),
      .init("LICENSE_ATTEMPT", String(renewal.attempts)), .init("LICENSE_CODE_HINT", renewal.code.hint),
    ]
    let retrying =
      renewal.nextAttemptAt != nil ? " The agent keeps retrying." : " The agent will not retry this code."
    return JournalEvent(
      .manualActivationRequired,
      message:
        "MANUAL ACTIVATION REQUIRED: the \(slot.rawValue) licence expired at \(renewal.expiredAt) (key \(renewal.expiredSerial)) and could not be renewed with the activation code …\(renewal.code.hint): \(error).\(retrying) Run `agentctl activate --code-file FILE` with a valid code, or add a key with `agentctl add-key FILE`.",
      fields: fields)
  }

  func expiringSoon(
    slot: Slot, active: InstalledKey, threshold: TimeSpan, state: LicenseState, now: Timestamp
  )
    -> JournalEvent
  {
    let takeover = takeover(state[slot])
    var fields = keyFields(slot: slot, active.key)
    fields.append(.init("LICENSE_THRESHOLD", threshold.description))
    fields.append(.init("LICENSE_TAKEOVER", takeover.journalValue))
    let left = TimeSpan(microseconds: active.expiresAt.microseconds(since: now)).inWords
    let then: String
    switch takeover {
    case .reserve: then = "reserve key \(state[slot].reserve!.serial) will take over"
    case .pendingRenewal:
      then = "key \(state[slot].pending!.serial), already renewed with the activation code, will take over"
    case .activationCode:
      if let due = aheadAttemptDue(state[slot]), due < active.expiresAt {
        then = "the agent will renew it ahead with its activation code (next request at \(due))"
      } else {
        then = "the agent will renew it with its activation code"
      }
    case .none:
      then =
        "nothing will take over: add a reserve key (`agentctl add-key --reserve FILE`) or a new active key"
    }
    return JournalEvent(
      .expiringSoon, priority: takeover == .none ? 4 : 5,
      message:
        "The active \(slot.rawValue) key \(active.serial) expires in \(left), at \(active.expiresAt); \(then).",
      fields: fields)
  }

  func rejection(_ violation: RuleViolation) -> JournalEvent {
    var fields: [JournalEvent.Field] = []
    if let slot = violation.slot { fields.append(.init("LICENSE_SLOT", slot.rawValue)) }
    if let serial = violation.serial { fields.append(.init("LICENSE_SERIAL", serial)) }
    if let expiry = violation.expiresAt { fields.append(.init("LICENSE_EXPIRES_AT", expiry.rfc3339)) }
    fields.append(.init("LICENSE_RULE", violation.ruleAndCode))
    if let reason = violation.reason { fields.append(.init("LICENSE_REASON", reason)) }
    return JournalEvent(
      .reserveRejected, message: "A reserve key was refused: \(violation.message)", fields: fields)
  }

  /// ACTIVATION_RENEWED's fields: the new key, the key it continues, the attempt, the code's hint.
  func renewedFields(slot: Slot, _ key: LicenseKey, previous: String, attempt: Int, code: ActivationCode)
    -> [JournalEvent.Field]
  {
    keyFields(slot: slot, key) + [
      .init("LICENSE_PREVIOUS_SERIAL", previous), .init("LICENSE_ATTEMPT", String(attempt)),
      .init("LICENSE_CODE_HINT", code.hint),
    ]
  }

  func keyFields(slot: Slot, _ key: LicenseKey) -> [JournalEvent.Field] {
    [
      .init("LICENSE_SLOT", slot.rawValue), .init("LICENSE_SERIAL", key.serial),
      .init("LICENSE_EXPIRES_AT", key.claims.expiresAt.rfc3339),
    ]
  }
}
