import LicenseCore

/// Builds the status an operator sees from the state, the rules and the time: computed on
/// demand, never stored (one source of truth). Text that came from outside (a renewal's
/// last error, from the server or the client program) appears once, in its slot's
/// `renewal` or `renewalAhead`; alerts and warnings refer to it rather than repeat it. Used by the daemon's `GetStatus`, and by
/// `agentctl status` to show the state file when the agent cannot be reached.
public enum StatusBuilder {
  public static func build(
    state: LicenseState, engine: LicenseEngine, now: Timestamp, version: String, startedAt: Timestamp,
    alerts: [String] = []
  ) -> StatusReply {
    var slots: [SlotStatus] = []
    var warnings: [StatusWarning] = []
    var alerts = alerts
    let firstThreshold = engine.configuration.warningThresholds.max() ?? .days(30)
    for slot in state.slotsInUse {
      let slotState = state[slot]
      let takeover = engine.takeover(slotState)
      if let active = slotState.active {
        let left = active.expiresAt.microseconds(since: now)
        let ahead = slotState.ahead.flatMap { ahead in
          ahead.serial == active.serial ? RenewalAheadInfo(ahead, active: active, engine: engine) : nil
        }
        slots.append(
          SlotStatus(
            slot: slot.rawValue, status: "active", active: KeyInfo(active),
            reserve: slotState.reserve.map(KeyInfo.init), pending: slotState.pending.map(KeyInfo.init),
            takeover: takeover.rawValue, secondsLeft: Int(max(left, 0) / 1_000_000), renewalAhead: ahead))
        if let ahead, let code = active.activationCode {
          if ahead.alert {
            alerts.append(
              "\(slot.rawValue): MANUAL ACTIVATION REQUIRED: \(active.serial) expires at \(active.expiresAt) and renewing it ahead with the code …\(code.hint) was refused (the slot's last error says why); run agentctl activate --code-file FILE, or add a reserve key, before then."
            )
          } else if ahead.attempts > 0 && ahead.lastError != "not_yet_available" {
            warnings.append(
              StatusWarning(
                slot: slot.rawValue, code: "renewal_ahead_failing",
                message:
                  "\(slot.rawValue): renewing \(active.serial) ahead of its expiry (\(active.expiresAt)) failed \(ahead.attempts) time\(ahead.attempts == 1 ? "" : "s") (the slot's last error says why); \(ahead.nextAttemptAt.map { "next attempt at \($0)" } ?? "the agent renews at expiry")."
              ))
          }
        }
        if takeover == .none {
          if left <= firstThreshold.microseconds {
            warnings.append(
              StatusWarning(
                slot: slot.rawValue, code: "expiring_without_takeover",
                message:
                  "\(slot.rawValue): key \(active.serial) expires in \(TimeSpan(microseconds: max(left, 0)).inWords) (\(active.expiresAt)) and nothing will take over; add a reserve key (agentctl add-key --reserve FILE)."
              ))
          } else {
            warnings.append(
              StatusWarning(
                slot: slot.rawValue, code: "no_reserve",
                message:
                  "\(slot.rawValue): no reserve key; nothing takes over when \(active.serial) expires at \(active.expiresAt)."
              ))
          }
        }
      } else if let expired = slotState.expired {
        let renewal = slotState.renewal.map(RenewalInfo.init)
        slots.append(
          SlotStatus(
            slot: slot.rawValue, status: renewal == nil ? "expired" : "renewing",
            expired: ExpiredKeyInfo(serial: expired.serial, expiresAt: expired.expiresAt.rfc3339),
            takeover: engine.takeover(slotState).rawValue, renewal: renewal))
        if let renewal = slotState.renewal {
          if renewal.alertRaised {
            alerts.append(
              "\(slot.rawValue): MANUAL ACTIVATION REQUIRED: \(expired.serial) expired at \(expired.expiresAt) and renewal with the code …\(renewal.code.hint) \(renewal.lastError == nil ? "did not succeed in time" : "failed (the slot's last error says why)"); run agentctl activate --code-file FILE."
            )
          }
          let stopped = renewal.nextAttemptAt == nil && renewal.attemptStartedAt == nil
          warnings.append(
            StatusWarning(
              slot: slot.rawValue, code: stopped ? "renewal_stopped" : "renewing",
              message:
                "\(slot.rawValue): key \(expired.serial) expired at \(expired.expiresAt); \(stopped ? "renewal stopped" : "renewing") with the activation code …\(renewal.code.hint) (\(renewal.attempts) failed attempt\(renewal.attempts == 1 ? "" : "s"))."
            ))
        } else {
          warnings.append(
            StatusWarning(
              slot: slot.rawValue, code: "slot_expired",
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
          slot: missing.rawValue, code: "reserve_missing_for_os_type",
          message:
            "\(missing.rawValue): no reserve key, although \(has.rawValue) has one: a reserve serves only its own OS type, so each needs its own."
        ))
    }
    return StatusReply(
      schemaVersion: AgentInterface.statusSchemaVersion, version: version, startedAt: startedAt.rfc3339,
      now: now.rfc3339,
      product: engine.configuration.product, slots: slots, warnings: warnings, alerts: alerts,
      nextAction: engine.nextWake(state).map { nextAction($0, state: state) })
  }

  /// The name of what the agent does at `wake` (`NextAction.action`, and the metrics'
  /// `action` label).
  public static func action(_ wake: Wake) -> String {
    switch wake.reason {
    case .expiry(_, _, let takeover):
      return takeover == .reserve || takeover == .pendingRenewal ? "promotion" : "expiry"
    case .warning: return "warning"
    case .renewal: return "renewal"
    case .renewalAhead: return "renewal-ahead"
    case .alert: return "alert"
    }
  }

  static func nextAction(_ wake: Wake, state: LicenseState) -> NextAction {
    let action = action(wake)
    switch wake.reason {
    case .expiry(let slot, let serial, let takeover):
      let what: String
      switch takeover {
      case .reserve: what = "promote reserve \(state[slot].reserve?.serial ?? "?") when \(serial) expires"
      case .pendingRenewal:
        what = "promote the renewed key \(state[slot].pending?.serial ?? "?") when \(serial) expires"
      case .activationCode: what = "renew \(serial) with its activation code"
      case .none: what = "\(serial) expires; nothing takes over"
      }
      return NextAction(
        at: wake.at.rfc3339, action: action, slot: slot.rawValue,
        serial: serial,
        description: "\(slot.rawValue): \(what)")
    case .renewal(let slot, let serial, let attempt):
      return NextAction(
        at: wake.at.rfc3339, action: action, slot: slot.rawValue, serial: serial,
        description: "\(slot.rawValue): renewal attempt \(attempt) with the activation code")
    case .renewalAhead(let slot, let serial, let attempt):
      return NextAction(
        at: wake.at.rfc3339, action: action, slot: slot.rawValue, serial: serial,
        description:
          "\(slot.rawValue): renew \(serial) ahead of its expiry with the activation code (attempt \(attempt))"
      )
    case .alert(let slot, let serial):
      return NextAction(
        at: wake.at.rfc3339, action: action, slot: slot.rawValue, serial: serial,
        description: "\(slot.rawValue): MANUAL_ACTIVATION_REQUIRED unless renewed before then")
    case .warning(let slot, let serial, let threshold):
      return NextAction(
        at: wake.at.rfc3339, action: action, slot: slot.rawValue, serial: serial,
        description: "\(slot.rawValue): EXPIRING_SOON (\(threshold) before \(serial) expires)")
    }
  }

  /// `agentctl status`'s exit status (contract §7): 2 when a slot is expired or an alert is
  /// pending, 1 when a key expires within the first warning threshold with nothing to take
  /// over, else 0.
  public static func exitCode(_ status: StatusReply) -> Int32 {
    if !status.alerts.isEmpty || status.slots.contains(where: { $0.status != "active" }) { return 2 }
    if status.warnings.contains(where: { $0.code == "expiring_without_takeover" }) { return 1 }
    return 0
  }
}
