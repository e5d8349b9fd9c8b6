/// The one place where events become journal entries: each event's sentence for a person
/// (what happened and what to do) and its `LICENSE_*` fields, in a fixed order (contract
/// §4). Fields carry the facts; the sentences may change, the fields may not.
extension LicenseEvent {
  public var rendered: JournalEvent {
    switch self {
    case .keyPromoted(let e): return e.rendered
    case .reserveAdded(let e):
      let replaced = e.replacedSerial.map { ", replacing reserve \($0)" } ?? ""
      return JournalEvent(
        .reserveAdded,
        message:
          "Key \(e.key.serial) is now the reserve of the \(e.slot.rawValue) slot\(replaced); it takes over when \(e.active.serial) expires at \(e.active.expiresAt).\(shortSentence(e.unitsShort, e.key))",
        fields: keyFields(e.slot, e.key) + optional(.replacedSerial, e.replacedSerial)
          + shortFields(e.unitsShort))
    case .reserveRejected(let violation):
      var fields: [JournalEvent.Field] = []
      if let slot = violation.slot { fields.append(.init(.slot, slot.rawValue)) }
      if let serial = violation.serial { fields.append(.init(.serial, serial)) }
      if let expiry = violation.expiresAt { fields.append(.init(.expiresAt, expiry.rfc3339)) }
      fields.append(.init(.rule, violation.ruleAndCode))
      fields += optional(.reason, violation.reason)
      return JournalEvent(
        .reserveRejected, message: "A reserve key was refused: \(violation.message)", fields: fields)
    case .reserveDropped(let e): return e.rendered
    case .activeAdded(let e):
      let replaced = e.replacedSerial.map { ", replacing \($0)" } ?? ""
      let removed =
        e.removedSerials.isEmpty
        ? "" : "; keys of the former scheme were removed: \(e.removedSerials.joined(separator: ", "))"
      return JournalEvent(
        .activeAdded,
        message:
          "Key \(e.key.serial) is now the active \(e.slot.rawValue) key\(replaced), until \(e.key.expiresAt)\(removed).",
        fields: keyFields(e.slot, e.key) + optional(.replacedSerial, e.replacedSerial)
          + (e.removedSerials.isEmpty
            ? [] : [.init(.removedSerials, e.removedSerials.joined(separator: ","))]))
    case .expiringSoon(let e): return e.rendered
    case .licenseExpired(let e):
      let reserveNote =
        e.expiredReserve.map {
          " Its reserve \($0.serial) had itself expired at \($0.expiresAt) and was not promoted."
        } ?? ""
      let ended =
        e.graceEnded
        ? "key \(e.key.serial), blocked by its issuer, reached the end of its grace at \(e.key.expiresAt)"
        : "key \(e.key.serial) ended at \(e.key.expiresAt)"
      let then =
        e.takesOverLater.map {
          " and key \($0.serial), which takes over, is valid only from \($0.expiresAt): the slot is expired until then. Add an active key that is valid now with `agentctl add-key FILE` to end this sooner."
        } ?? " and nothing took over.\(reserveNote) Add an active key with `agentctl add-key FILE`."
      return JournalEvent(
        .licenseExpired, message: "The \(e.slot.rawValue) licence has expired: \(ended)\(then)",
        fields: keyFields(e.slot, e.key))
    case .keyBlocked(let e): return e.rendered
    case .activationAttemptFailed(let e): return e.rendered
    case .activationRenewed(let e): return e.rendered
    case .manualActivationRequired(let e): return e.rendered
    case .clockChanged(let delta):
      let direction = delta >= 0 ? "forward" : "backward"
      return JournalEvent(
        .clockChanged,
        message:
          "The system clock was stepped \(direction) by \(TimeSpan(microseconds: delta).inWords); licence deadlines were re-evaluated at once. If the step was not intended, check time synchronisation (timedatectl).",
        fields: [.init(.clockDeltaMicroseconds, String(delta))])
    case .usageGraded(let e): return e.rendered
    case .consumerNotUpdated(let e): return e.rendered
    case .stateRecovered(let error, let file):
      return JournalEvent(
        .stateRecovered,
        message:
          "The state file \(file) was unreadable (\(error)); the agent restored the previous good copy and kept the bad file beside it. Check `agentctl status`: the last change before the damage may have to be made again.",
        fields: [.init(.error, error)])
    }
  }
}

extension KeyPromoted {
  var rendered: JournalEvent {
    let words = TimeSpan(microseconds: lateness).inWords
    let late =
      lateness < 1_000_000
      ? ""
      : cause == .downtime
        ? " (the agent was not running at expiry: \(words) late)"
        : " (the system clock was stepped past the expiry: \(words) after it)"
    let message: String
    let ended =
      graceEnded
      ? "\(previous.serial), blocked by its issuer, reached the end of its grace at \(previous.expiresAt)\(late)"
      : "\(previous.serial) expired at \(previous.expiresAt)\(late)"
    switch source {
    case .reserve:
      message =
        "Reserve key \(key.serial) is now the active \(slot.rawValue) key: \(ended). The new key expires at \(key.expiresAt); add the next reserve before then."
    case .pending(let hint):
      message =
        "\(renewedAhead(key.serial, hint)), is now the active \(slot.rawValue) key: \(ended). It expires at \(key.expiresAt); the agent will renew it ahead in turn."
    }
    return JournalEvent(
      .keyPromoted, message: message + shortSentence(unitsShort, key, tookOver: true),
      fields: keyFields(slot, key) + [
        .init(.previousSerial, previous.serial), .init(.delayMicroseconds, String(delay)),
      ] + shortFields(unitsShort))
  }
}

extension ReserveDropped {
  var rendered: JournalEvent {
    let message: String
    var fields = keyFields(slot, key)
    switch reason {
    case .cannotFollow(let newActive, let rule):
      message =
        "Reserve key \(key.serial) was removed: it can no longer follow the new active key \(newActive.serial) (\(rule)). Add a reserve that expires after \(newActive.expiresAt)."
      fields += [.init(.activeSerial, newActive.serial), .init(.rule, rule)]
    case .removedByOperator(let activeSerial, let renewsWithCode):
      let then =
        renewsWithCode
        ? "the agent will renew the active key with its activation code"
        : "nothing will take over when the active key expires unless a new reserve is added (`agentctl add-key --reserve FILE`)"
      message = "Reserve key \(key.serial) of the \(slot.rawValue) slot was removed by an operator; \(then)."
      fields += optional(.activeSerial, activeSerial) + [.init(.reason, "removed-by-operator")]
    case .replacedByOperator(let activeSerial, let reserveSerial):
      message =
        "Key \(key.serial), renewed ahead with the activation code, was replaced by the reserve key \(reserveSerial) an operator added; the reserve takes over at expiry instead."
      fields += optional(.activeSerial, activeSerial) + [.init(.reason, "replaced-by-operator")]
    case .expiredBeforeTakeover(let active, let hint):
      message =
        "\(renewedAhead(key.serial, hint)), had itself expired at \(key.expiresAt) before it could take over from \(active.serial) (expired at \(active.expiresAt)); it is not promoted. The agent renews from \(key.serial) with the activation code now."
      fields.append(.init(.reason, "expired"))
    case .blocked(let activeSerial, let since, let why):
      let words = why.isEmpty ? "" : " (\(why))"
      message =
        "Reserve key \(key.serial) of the \(slot.rawValue) slot was removed: its issuer blocked it on \(since)\(words). Nothing takes over from \(activeSerial) unless a new reserve is added (`agentctl add-key --reserve FILE`)."
      fields += [.init(.activeSerial, activeSerial), .init(.reason, "blocked")]
    case .notValidAtGraceEnd(let active, let validFrom):
      message =
        "Key \(key.serial) of the \(slot.rawValue) slot is valid only from \(validFrom), after the end of the grace of the blocked key \(active.serial) at \(active.expiresAt); it is removed, and the agent renews with the activation code now."
      fields += [.init(.activeSerial, active.serial), .init(.reason, "not-yet-valid")]
    }
    return JournalEvent(.reserveDropped, message: message, fields: fields)
  }
}

extension ExpiringSoon {
  var rendered: JournalEvent {
    let words: String
    switch then {
    case .reserve(let serial): words = "reserve key \(serial) will take over"
    case .pending(let serial):
      words = "key \(serial), already renewed with the activation code, will take over"
    case .renewAhead(let next):
      words = "the agent will renew it ahead with its activation code (next request at \(next))"
    case .renewAtExpiry: words = "the agent will renew it with its activation code"
    case .nothing:
      words =
        "nothing will take over: add a reserve key (`agentctl add-key --reserve FILE`) or a new active key"
    }
    return JournalEvent(
      .expiringSoon, priority: takeover == .none ? 4 : 5,
      message:
        "The active \(slot.rawValue) key \(key.serial) expires in \(left.inWords), at \(key.expiresAt); \(words).",
      fields: keyFields(slot, key) + [
        .init(.threshold, threshold.description), .init(.takeover, takeover.journalValue),
      ])
  }
}

extension AttemptFailed {
  var rendered: JournalEvent {
    let message: String
    if ahead {
      let then =
        stoppedAhead
        ? "no attempt is left before the key expires at \(key.expiresAt): the agent renews at expiry"
        : "the key is valid until \(key.expiresAt) and the next attempt is at \(nextAttemptAt)"
      message =
        "Renewing the \(slot.rawValue) licence ahead of its expiry failed (attempt \(attempt): \(error)); \(then). Nothing is needed yet; if this goes on, check the network path to the activation server."
    } else {
      message =
        "Renewing the \(slot.rawValue) licence failed (attempt \(attempt): \(error)); the next attempt is at \(nextAttemptAt). Check the network path to the activation server."
    }
    return JournalEvent(
      .activationAttemptFailed, message: message,
      fields: keyFields(slot, key) + [
        .init(.attempt, String(attempt)), .init(.error, error), .init(.nextAttemptAt, nextAttemptAt.rfc3339),
        .init(.codeHint, codeHint),
      ] + aheadField(ahead))
  }
}

extension ActivationRenewed {
  var rendered: JournalEvent {
    let cleared = alertCleared ? " The manual-activation alert is cleared." : ""
    let message: String
    if let active = aheadOf {
      message =
        "The \(slot.rawValue) licence was renewed ahead of its expiry with its activation code (…\(codeHint)): key \(key.serial), valid from \(key.claims.notBefore) until \(key.claims.expiresAt), takes over when \(active.serial) expires at \(active.expiresAt) (attempt \(attempt)).\(cleared)"
    } else {
      message =
        "The \(slot.rawValue) licence was renewed with its activation code (…\(codeHint)): key \(key.serial) continues \(previousSerial), until \(key.claims.expiresAt) (attempt \(attempt)).\(cleared)"
    }
    return JournalEvent(
      .activationRenewed, message: message,
      fields: keyFields(slot, KeyRef(key)) + [
        .init(.previousSerial, previousSerial), .init(.attempt, String(attempt)), .init(.codeHint, codeHint),
      ] + aheadField(aheadOf != nil))
  }
}

extension ManualActivationRequired {
  var rendered: JournalEvent {
    let message: String
    if ahead {
      message =
        "MANUAL ACTIVATION REQUIRED: the \(slot.rawValue) licence expires at \(key.expiresAt) (key \(key.serial)) and could not be renewed ahead with the activation code …\(codeHint): \(error). The agent will try once more at expiry. Run `agentctl activate --code-file FILE` with a valid code, or add a reserve key with `agentctl add-key --reserve FILE`, before then."
    } else {
      let retry = retrying ? " The agent keeps retrying." : " The agent will not retry this code."
      message =
        "MANUAL ACTIVATION REQUIRED: the \(slot.rawValue) licence expired at \(key.expiresAt) (key \(key.serial)) and could not be renewed with the activation code …\(codeHint): \(error).\(retry) Run `agentctl activate --code-file FILE` with a valid code, or add a key with `agentctl add-key FILE`."
    }
    return JournalEvent(
      .manualActivationRequired, message: message,
      fields: keyFields(slot, key) + [
        .init(.error, error), .init(.attempt, String(attempt)), .init(.codeHint, codeHint),
      ] + aheadField(ahead))
  }
}

extension UsageGraded {
  var rendered: JournalEvent {
    let figures =
      "\(used) units in use of the \(units) that key \(key.serial) licenses (\(UsageBand.percentText(percent)) %)"
    let message: String
    let priority: Int
    switch band {
    case .normal, .high:
      priority = EventKind.licenseUsageHigh.priority
      message =
        "The \(slot.rawValue) licence is nearly used up: \(figures). Plan more units before the limit is exceeded; the fleet's total counts (licenseagent.svm.fleet_usage)."
    case .exceeded:
      priority = EventKind.licenseLimitExceeded.priority
      message =
        "The \(slot.rawValue) licence limit is exceeded: \(figures). Add units (a key with more, or a second key) or protect fewer; over 110 % the vendor treats it as critical."
    case .critical:
      priority = 2
      message =
        "CRITICAL: the \(slot.rawValue) licence limit is exceeded by more than 10 %: \(figures). Add units now (a key with more) or protect fewer."
    }
    return JournalEvent(
      band == .high ? .licenseUsageHigh : .licenseLimitExceeded, priority: priority, message: message,
      fields: keyFields(slot, key) + [
        .init(.units, String(units)), .init(.unitsUsed, String(used)),
        .init(.usagePercent, UsageBand.percentText(percent)),
      ])
  }
}

extension KeyBlocked {
  var rendered: JournalEvent {
    let why = reason.isEmpty ? "" : " (\(reason))"
    let message: String
    switch role {
    case .active:
      let ends = graceEndsAt ?? key.expiresAt
      let words: String
      switch then {
      case .reserve(let serial)?: words = "reserve key \(serial) takes over then if it is valid then"
      case .pending(let serial)?:
        words = "key \(serial), renewed ahead with the activation code, takes over then"
      case .renewAhead?, .renewAtExpiry?:
        words = "the agent renews with the activation code then (ask the vendor why the key was blocked)"
      case .nothing?, nil:
        words =
          "nothing takes over and the slot will be expired: add a reserve key that is not blocked (`agentctl add-key --reserve FILE`) or a new active key before then"
      }
      message =
        "CRITICAL: the active \(slot.rawValue) key \(key.serial) was blocked by its issuer on \(since)\(why). It keeps working until the end of its grace, \(ends); \(words)."
    case .reserve, .pending:
      let what =
        role == .pending
        ? "Key \(key.serial), renewed ahead with the activation code," : "Reserve key \(key.serial)"
      message =
        "\(what) of the \(slot.rawValue) slot was blocked by its issuer on \(since)\(why); it is removed and will not take over. Add a reserve key that is not blocked (`agentctl add-key --reserve FILE`)."
    }
    return JournalEvent(
      .keyBlocked, message: message,
      fields: keyFields(slot, key) + [
        .init(.role, role.rawValue), .init(.blockedSince, since.rfc3339),
      ] + optional(.graceEndsAt, graceEndsAt?.rfc3339) + [.init(.reason, reason)])
  }
}

extension ConsumerNotUpdated {
  var rendered: JournalEvent {
    let confirmed =
      confirmedSerial.map { "it last confirmed key \($0)" } ?? "it has confirmed no key for this slot"
    return JournalEvent(
      .consumerNotUpdated,
      message:
        "The consumer \(consumer) has not confirmed that it enforces the \(slot.rawValue) key \(key.serial) within \(within) of it becoming the active key (\(confirmed)): it may still enforce the former licence and run limited. Check that \(consumer) is running and subscribed (`agentctl status` lists what each consumer confirmed); the alert clears when it confirms.",
      fields: keyFields(slot, key) + [.init(.consumer, consumer.rawValue)]
        + optional(.confirmedSerial, confirmedSerial))
  }
}

/// U3's sentence, after a space, for an event about a key short of the slot's usage.
private func shortSentence(_ short: UnitsShort?, _ key: KeyRef, tookOver: Bool = false) -> String {
  short.map { " " + $0.sentence(serial: key.serial, tookOver: tookOver) } ?? ""
}

/// U3's fields: the warning, the key's units and the slot's usage.
private func shortFields(_ short: UnitsShort?) -> [JournalEvent.Field] {
  guard let short else { return [] }
  return [
    .init(.warning, UnitsShort.code), .init(.units, String(short.units)),
    .init(.unitsUsed, String(short.used)),
  ]
}

/// `LICENSE_SLOT`, `LICENSE_SERIAL`, `LICENSE_EXPIRES_AT`: every event about a key.
private func keyFields(_ slot: Slot, _ key: KeyRef) -> [JournalEvent.Field] {
  [.init(.slot, slot.rawValue), .init(.serial, key.serial), .init(.expiresAt, key.expiresAt.rfc3339)]
}

private func optional(_ name: JournalField, _ value: String?) -> [JournalEvent.Field] {
  value.map { [.init(name, $0)] } ?? []
}

private func aheadField(_ ahead: Bool) -> [JournalEvent.Field] { ahead ? [.init(.ahead, "1")] : [] }

/// How KEY_PROMOTED and RESERVE_DROPPED name a key obtained ahead: "Key X, renewed ahead
/// with the activation code (…hint)".
private func renewedAhead(_ serial: String, _ hint: String?) -> String {
  "Key \(serial), renewed ahead with the activation code\(hint.map { " (…\($0))" } ?? "")"
}
