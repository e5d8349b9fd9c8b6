import LicenseCore

/// Builds the status an operator sees from the state, the rules and the time: computed on
/// demand, never stored (one source of truth); the facts (takeover, when a slot lapses,
/// health) are the core's. Text that came from outside (a renewal's last error, from the
/// server or the client program) appears once, in its slot's `renewal` or `renewalAhead`;
/// alerts and warnings refer to it rather than repeat it. Used by the daemon's `GetStatus`,
/// and by `agentctl status` to show the state file when the agent cannot be reached.
public enum StatusBuilder {
  public static func build(
    state: LicenseState, engine: LicenseEngine, now: Timestamp, version: String, startedAt: Timestamp
  ) -> StatusReply {
    var slots: [SlotStatus] = []
    var warnings: [StatusWarning] = []
    var alerts: [String] = []
    let firstThreshold = engine.configuration.firstThreshold
    for slot in state.slotsInUse {
      guard let slotState = state[slot] else { continue }
      let takeover = engine.takeover(slotState)
      let lapsesAt = engine.lapsesAt(slotState)?.rfc3339
      let health = engine.health(slotState, now: now)
      let usage = state.usage[slot].map { UsageInfo($0, active: slotState.active, engine: engine, now: now) }
      warnings += usageWarnings(slot, usage, state: state)
      let consumers = consumerInfo(slot, state: state, engine: engine, now: now)
      warnings += consumerWarnings(slot, consumers, state: state)
      switch slotState {
      case .held(let held):
        let active = held.active
        let left = held.endsAt.microseconds(since: now)
        let ahead = held.ahead.map { RenewalAheadInfo($0, held: held, engine: engine) }
        if let block = held.blocked {
          // B2: a blocked active key keeps working until the end of its grace.
          let why = block.reason.isEmpty ? "" : " (\(block.reason))"
          let blockedOn = "the active key \(active.serial) was blocked by its issuer on \(block.since)\(why)"
          if let successor = held.successorKey, held.isLapsed {
            alerts.append(
              "\(slot.rawValue): EXPIRED: \(blockedOn) and its grace ended at \(held.endsAt); \(successor.serial) takes over only at \(successor.claims.notBefore). Add an active key that is valid now (agentctl add-key FILE)."
            )
          }
          warnings.append(
            StatusWarning(
              slot: slot, code: .keyBlocked,
              message:
                "\(slot.rawValue): \(blockedOn); it counts as expired at the end of its grace, \(held.endsAt). Add a reserve key that is not blocked (agentctl add-key --reserve FILE) or replace it (agentctl add-key FILE) before then."
            ))
        }
        slots.append(
          SlotStatus(
            slot: slot, status: held.isLapsed ? .expired : .active, active: KeyInfo(active),
            reserve: held.reserve.map(KeyInfo.init),
            pending: held.pending.map(KeyInfo.init), takeover: takeover,
            secondsLeft: Int(max(left, 0) / 1_000_000),
            renewalAhead: ahead, lapsesAt: lapsesAt, health: health, usage: usage, consumers: consumers,
            activeBlocked: held.blocked.map { BlockedInfo(held, $0) }))
        if let ahead, let code = active.activationCode {
          if ahead.alert {
            alerts.append(
              "\(slot.rawValue): MANUAL ACTIVATION REQUIRED: \(active.serial) expires at \(active.expiresAt) and renewing it ahead with the code …\(code.hint) was refused (the slot's last error says why); run agentctl activate --code-file FILE, or add a reserve key, before then."
            )
          } else if ahead.attempts > 0 && ahead.lastError != "not_yet_available" {
            warnings.append(
              StatusWarning(
                slot: slot, code: .renewalAheadFailing,
                message:
                  "\(slot.rawValue): renewing \(active.serial) ahead of its expiry (\(active.expiresAt)) failed \(ahead.attempts) time\(ahead.attempts == 1 ? "" : "s") (the slot's last error says why); \(ahead.nextAttemptAt.map { "next attempt at \($0)" } ?? "the agent renews at expiry")."
              ))
          }
        }
        if takeover == .none {
          if left <= firstThreshold.microseconds {
            warnings.append(
              StatusWarning(
                slot: slot, code: .expiringWithoutTakeover,
                message:
                  "\(slot.rawValue): key \(active.serial) expires in \(TimeSpan(microseconds: max(left, 0)).inWords) (\(held.endsAt)) and nothing will take over; add a reserve key (agentctl add-key --reserve FILE)."
              ))
          } else {
            warnings.append(
              StatusWarning(
                slot: slot, code: .noReserve,
                message:
                  "\(slot.rawValue): no reserve key; nothing takes over when \(active.serial) expires at \(held.endsAt)."
              ))
          }
        }
      case .lapsed(let lapsed):
        let expired = lapsed.expired
        slots.append(
          SlotStatus(
            slot: slot, status: lapsed.renewal == nil ? .expired : .renewing,
            expired: ExpiredKeyInfo(serial: expired.serial, expiresAt: expired.expiresAt.rfc3339),
            takeover: takeover, renewal: lapsed.renewal.map(RenewalInfo.init), lapsesAt: lapsesAt,
            health: health, usage: usage))
        if let renewal = lapsed.renewal {
          let attempts = renewal.attempts
          if attempts.alertRaised {
            alerts.append(
              "\(slot.rawValue): MANUAL ACTIVATION REQUIRED: \(expired.serial) expired at \(expired.expiresAt) and renewal with the code …\(renewal.code.hint) \(attempts.lastError == nil ? "did not succeed in time" : "failed (the slot's last error says why)"); run agentctl activate --code-file FILE."
            )
          }
          warnings.append(
            StatusWarning(
              slot: slot, code: attempts.isStopped ? .renewalStopped : .renewing,
              message:
                "\(slot.rawValue): key \(expired.serial) expired at \(expired.expiresAt); \(attempts.isStopped ? "renewal stopped" : "renewing") with the activation code …\(renewal.code.hint) (\(attempts.failures) failed attempt\(attempts.failures == 1 ? "" : "s"))."
            ))
        } else {
          warnings.append(
            StatusWarning(
              slot: slot, code: .slotExpired,
              message:
                "\(slot.rawValue): the licence expired at \(expired.expiresAt) (key \(expired.serial)); add an active key (agentctl add-key FILE)."
            ))
        }
      }
    }
    // R2: an SVM protecting both OS types needs a reserve for each (decided in the core).
    if let (missing, has) = state.reserveMissingForOSType {
      warnings.append(
        StatusWarning(
          slot: missing, code: .reserveMissingForOSType,
          message:
            "\(missing.rawValue): no reserve key, although \(has.rawValue) has one: a reserve serves only its own OS type, so each needs its own."
        ))
    }
    return StatusReply(
      schemaVersion: AgentInterface.statusSchemaVersion, version: version, startedAt: startedAt.rfc3339,
      now: now.rfc3339, product: engine.configuration.product, slots: slots, warnings: warnings,
      alerts: alerts,
      nextAction: engine.nextWake(state).map { nextAction($0, state: state) },
      health: engine.health(state, now: now))
  }

  /// N2: each consumer expected, or that confirmed, against the slot's active key; nil when
  /// there is none (no consumer, or no active key).
  static func consumerInfo(_ slot: Slot, state: LicenseState, engine: LicenseEngine, now: Timestamp)
    -> [ConsumerInfo]?
  {
    guard state[slot]?.active != nil else { return nil }
    let expected = Set(engine.configuration.expectedConsumers)
    let list = engine.consumersShown(for: slot, in: state).compactMap { name -> ConsumerInfo? in
      let isExpected = expected.contains(name)
      guard
        let standing = state.standing(
          of: name, slot: slot, expected: isExpected, now: now, within: engine.configuration.confirmWithin)
      else { return nil }
      let record = state.consumers[name]?[slot]
      let due =
        standing == .waiting || standing == .late
        ? record?.awaitedSince.map { ($0 + engine.configuration.confirmWithin).rfc3339 } : nil
      return ConsumerInfo(
        consumer: name.rawValue, expected: isExpected, state: standing,
        confirmedSerial: record?.confirmedSerial,
        confirmedAt: record?.confirmedAt?.rfc3339, dueAt: due)
    }
    return list.isEmpty ? nil : list
  }

  /// N2 for a person: an expected consumer that did not confirm the active key in time.
  static func consumerWarnings(_ slot: Slot, _ consumers: [ConsumerInfo]?, state: LicenseState)
    -> [StatusWarning]
  {
    guard let active = state[slot]?.active else { return [] }
    return (consumers ?? []).filter { $0.state == .late }.map { consumer in
      let confirmed = consumer.confirmedSerial.map { "it last confirmed \($0)" } ?? "it confirmed no key"
      return StatusWarning(
        slot: slot, code: .consumerNotUpdated,
        message:
          "\(slot.rawValue): the consumer \(consumer.consumer) has not confirmed the active key \(active.serial) (\(confirmed)); check that it runs and follows the agent (agentctl monitor)."
      )
    }
  }

  /// U1–U3 for a person: the slot's usage against its active key, a stale report, and a
  /// successor that licenses fewer units than the slot uses.
  static func usageWarnings(_ slot: Slot, _ usage: UsageInfo?, state: LicenseState) -> [StatusWarning] {
    guard let usage else { return [] }
    var warnings: [StatusWarning] = []
    let name = slot.rawValue
    if let band = usage.band, band != .normal, let active = state[slot]?.active {
      let figures =
        "\(usage.units) units in use of the \(active.claims.units) that \(active.serial) licenses (\(UsageBand.percentText(usage.percent ?? 0)) %)"
      warnings.append(
        band == .high
          ? StatusWarning(slot: slot, code: .usageHigh, message: "\(name): \(figures); plan more units.")
          : StatusWarning(
            slot: slot, code: .limitExceeded,
            message:
              "\(name): the licence limit is exceeded (\(band.rawValue)): \(figures); add units or protect fewer."
          ))
    }
    if usage.stale {
      warnings.append(
        StatusWarning(
          slot: slot, code: .usageStale,
          message:
            "\(name): the last usage report is \(TimeSpan(microseconds: Int64(usage.ageSeconds) * 1_000_000).inWords) old (\(usage.reportedAt)); check that the protection service reports it (agentctl report-usage)."
        ))
    }
    if let held = state[slot]?.held, let successor = held.reserve ?? held.pending,
      let short = state.unitsShort(successor.key, slot: slot)
    {
      warnings.append(
        StatusWarning(
          slot: slot, code: .reserveUnitsShort,
          message: "\(name): " + short.sentence(serial: successor.serial)))
    }
    return warnings
  }

  /// What the agent does at `wake` (`NextAction.action`, and the metrics' `action` label).
  public static func action(_ wake: Wake) -> NextAction.Action {
    switch wake.reason {
    case .expiry(_, _, let takeover):
      return takeover == .reserve || takeover == .pendingRenewal ? .promotion : .expiry
    case .warning: return .warning
    case .renewal: return .renewal
    case .renewalAhead: return .renewalAhead
    case .alert: return .alert
    case .confirmation: return .confirmation
    }
  }

  static func nextAction(_ wake: Wake, state: LicenseState) -> NextAction {
    let action = action(wake)
    let (slot, serial, description): (Slot, String, String)
    switch wake.reason {
    case .expiry(let at, let key, let takeover):
      let what: String
      switch takeover {
      case .reserve where state[at]?.held?.isLapsed == true:
        what = "promote reserve \(state[at]?.reserve?.serial ?? "?") once it is valid (\(key)'s grace ended)"
      case .reserve where state[at]?.held?.blocked != nil:
        what = "promote reserve \(state[at]?.reserve?.serial ?? "?") when \(key)'s grace ends (blocked)"
      case .reserve: what = "promote reserve \(state[at]?.reserve?.serial ?? "?") when \(key) expires"
      case .pendingRenewal:
        what = "promote the renewed key \(state[at]?.pending?.serial ?? "?") when \(key) expires"
      case .activationCode: what = "renew \(key) with its activation code"
      case .none: what = "\(key) expires; nothing takes over"
      }
      (slot, serial, description) = (at, key, "\(at.rawValue): \(what)")
    case .renewal(let at, let key, let attempt):
      (slot, serial, description) = (
        at, key, "\(at.rawValue): renewal attempt \(attempt) with the activation code"
      )
    case .renewalAhead(let at, let key, let attempt):
      (slot, serial, description) = (
        at, key,
        "\(at.rawValue): renew \(key) ahead of its expiry with the activation code (attempt \(attempt))"
      )
    case .alert(let at, let key):
      (slot, serial, description) = (
        at, key, "\(at.rawValue): MANUAL_ACTIVATION_REQUIRED unless renewed before then"
      )
    case .warning(let at, let key, let threshold):
      (slot, serial, description) = (
        at, key, "\(at.rawValue): EXPIRING_SOON (\(threshold) before \(key) expires)"
      )
    case .confirmation(let at, let key, let consumer):
      (slot, serial, description) = (
        at, key, "\(at.rawValue): CONSUMER_NOT_UPDATED unless \(consumer) confirms \(key) before then"
      )
    }
    return NextAction(
      at: wake.at.rfc3339, action: action, slot: slot, serial: serial, description: description)
  }
}
