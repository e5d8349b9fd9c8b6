import LicenseCore

/// The agent's metrics in the Prometheus text format (contract §8), for node_exporter's
/// textfile collector: a pure function of the state, so that the file, `agentctl status`
/// and the journal always tell the same instants.
public enum MetricsText {
  /// The metric families of contract §8, in the order they are written: name, type, help.
  public static let families: [(name: String, type: String, help: String)] = [
    ("license_agent_info", "gauge", "The running license-agent (always 1)."),
    (
      "license_agent_key_expiry_timestamp_seconds", "gauge",
      "When each key held ends (its exp claim), in Unix seconds."
    ),
    (
      "license_agent_key_not_before_timestamp_seconds", "gauge",
      "When each key held starts (its nbf claim), in Unix seconds."
    ),
    (
      "license_agent_slot_takeover", "gauge",
      "What takes over when the slot's active key expires (1 for the current one)."
    ),
    ("license_agent_slot_expired", "gauge", "1 when the slot has no valid active key."),
    ("license_agent_alert", "gauge", "1 while the alert is pending for the slot."),
    ("license_agent_promotions_total", "counter", "Reserve keys promoted since the state was created."),
    (
      "license_agent_last_promotion_delay_seconds", "gauge",
      "From the expired key's exp to the last promotion being durable, in seconds."
    ),
    (
      "license_agent_activation_attempts_total", "counter",
      "Renewal attempts with the activation code since the state was created, by result."
    ),
    ("license_agent_next_action_timestamp_seconds", "gauge", "When the agent next acts for the slot."),
    (
      "license_agent_state_write_failures_total", "counter",
      "Failed writes of the state since the agent started."
    ),
    ("license_agent_key_units", "gauge", "The units (VMs, processors or cores) each key held licenses."),
    (
      "license_agent_units_in_use", "gauge",
      "The units the slot uses, as last reported (absent while nobody reported)."
    ),
    ("license_agent_usage_report_timestamp_seconds", "gauge", "When the slot's last usage report was made."),
    (
      "license_agent_key_blocked", "gauge",
      "1 for a key the agent holds that its issuer blocked (a blocklist, rule B1)."
    ),
    (
      "license_agent_key_grace_end_timestamp_seconds", "gauge",
      "When a blocked active key counts as expired: the end of its grace, or its exp if sooner (rule B2)."
    ),
    (
      "license_agent_consumer_confirmed", "gauge",
      "1 when the consumer confirmed it enforces the slot's active key (serial); 0 while a consumer of [consumers] expect has not."
    ),
  ]

  /// The takeover label values, in the order they are written.
  public static let takeovers = Takeover.allCases

  /// The whole file.
  public static func render(
    state: LicenseState, engine: LicenseEngine, version: String, product: String, stateWriteFailures: Int
  ) -> String {
    var samples: [String: [String]] = [:]
    func add(_ name: String, _ labels: [(String, String)], _ value: String) {
      let text =
        labels.isEmpty
        ? "" : "{" + labels.map { "\($0.0)=\"\(escape($0.1))\"" }.joined(separator: ",") + "}"
      samples[name, default: []].append("\(name)\(text) \(value)")
    }
    add("license_agent_info", [("version", version), ("product", product)], "1")
    for slot in state.slotsInUse {
      guard let slotState = state[slot] else { continue }
      let name = slot.rawValue
      for (role, key) in [
        ("active", slotState.active), ("reserve", slotState.reserve), ("pending", slotState.pending),
      ] {
        guard let key else { continue }
        let labels = [("slot", name), ("role", role), ("serial", key.serial)]
        add("license_agent_key_expiry_timestamp_seconds", labels, seconds(key.expiresAt))
        add("license_agent_key_not_before_timestamp_seconds", labels, seconds(key.claims.notBefore))
        add("license_agent_key_units", labels, String(key.claims.units))
      }
      if let held = slotState.held, held.blocked != nil {
        // B1: only an active key is ever blocked here (a blocked reserve or pending key is
        // dropped at once), as the status shows it.
        add(
          "license_agent_key_blocked",
          [("slot", name), ("role", "active"), ("serial", held.active.serial)], "1")
        // B2: when the blocked active key counts as expired.
        add(
          "license_agent_key_grace_end_timestamp_seconds", [("slot", name), ("serial", held.active.serial)],
          seconds(held.endsAt))
      }
      if let report = state.usage[slot] {
        add("license_agent_units_in_use", [("slot", name)], String(report.units))
        add("license_agent_usage_report_timestamp_seconds", [("slot", name)], seconds(report.reportedAt))
      }
      if let active = slotState.active {
        // N2: each consumer expected, 1 once it confirmed the active key and 0 until then (what
        // an alert watches); any other consumer only while it enforces the active key (it is
        // never awaited, so never 0).
        let expected = Set(engine.configuration.expectedConsumers)
        for consumer in engine.consumersShown(for: slot, in: state) {
          let confirmed = state.consumers[consumer]?[slot]?.confirmedSerial == active.serial
          guard confirmed || expected.contains(consumer) else { continue }
          add(
            "license_agent_consumer_confirmed",
            [("consumer", consumer.rawValue), ("slot", name), ("serial", active.serial)],
            confirmed ? "1" : "0")
        }
      }
      let current = engine.takeover(slotState)
      for takeover in takeovers {
        add(
          "license_agent_slot_takeover", [("slot", name), ("takeover", takeover.rawValue)],
          takeover == current ? "1" : "0")
      }
      let expired = slotState.active == nil || slotState.held?.isLapsed == true
      add("license_agent_slot_expired", [("slot", name)], expired ? "1" : "0")
      add(
        "license_agent_alert", [("slot", name), ("alert", "manual_activation_required")],
        engine.alertPending(slotState) ? "1" : "0")
      if let wake = engine.nextWake(state, slot: slot) {
        add(
          "license_agent_next_action_timestamp_seconds",
          [("slot", name), ("action", StatusBuilder.action(wake).rawValue)],
          seconds(wake.at))
      }
    }
    for slot in Set(state.slotsInUse).union(state.counters.keys).sorted() {
      let counters = state.counters[slot] ?? SlotCounters()
      let name = slot.rawValue
      add("license_agent_promotions_total", [("slot", name)], String(counters.promotions))
      if let delay = counters.lastPromotionDelayMicroseconds {
        add("license_agent_last_promotion_delay_seconds", [("slot", name)], decimal(delay))
      }
      for (result, count) in [
        ("renewed", counters.renewed), ("transient", counters.transientFailures),
        ("permanent", counters.permanentFailures),
      ] {
        add("license_agent_activation_attempts_total", [("slot", name), ("result", result)], String(count))
      }
    }
    add("license_agent_state_write_failures_total", [], String(stateWriteFailures))
    var text = ""
    for family in families {
      guard let lines = samples[family.name] else { continue }
      text += "# HELP \(family.name) \(family.help)\n# TYPE \(family.name) \(family.type)\n"
      for line in lines { text += line + "\n" }
    }
    return text
  }

  /// Unix seconds, exact to the microsecond (`1798761600` or `1798761600.25`).
  static func seconds(_ instant: Timestamp) -> String { decimal(instant.microseconds) }

  static func decimal(_ microseconds: Int64) -> String {
    let sign = microseconds < 0 ? "-" : ""
    let magnitude = microseconds.magnitude
    let (whole, fraction) = magnitude.quotientAndRemainder(dividingBy: 1_000_000)
    guard fraction != 0 else { return sign + String(whole) }
    var digits = String(fraction)
    digits = String(repeating: "0", count: 6 - digits.count) + digits
    while digits.hasSuffix("0") { digits.removeLast() }
    return "\(sign)\(whole).\(digits)"
  }

  /// A label value as the text format wants it: backslash, double quote and line feed escaped.
  static func escape(_ value: String) -> String {
    var out = ""
    for character in value {
      switch character {
      case "\\": out += "\\\\"
      case "\"": out += "\\\""
      case "\n": out += "\\n"
      default: out.append(character)
      }
    }
    return out
  }
}
