/// Licensing units (rules U1–U3): what the consumer of the licence reports it uses per slot,
/// graded against the slot's active key as the vendor's management server grades it.

/// Where a slot's usage stands against its active key's units (U2).
public enum UsageBand: String, Sendable, Equatable, Codable, CaseIterable, Comparable {
  /// Under 90 %.
  case normal
  /// 90 % to 100 %: LICENSE_USAGE_HIGH.
  case high
  /// Over 100 %: LICENSE_LIMIT_EXCEEDED, warning.
  case exceeded
  /// Over 110 %: LICENSE_LIMIT_EXCEEDED, critical.
  case critical

  private var order: Int { Self.allCases.firstIndex(of: self)! }
  public static func < (lhs: UsageBand, rhs: UsageBand) -> Bool { lhs.order < rhs.order }

  /// The band of `used` units against `licensed` ones, at the exact bounds of U2 (integer
  /// arithmetic: 90 % of 10 units is 9, and 11 units of 10 is 110 %, not over it).
  public static func of(used: Int, licensed: Int) -> UsageBand {
    guard licensed > 0 else { return used > 0 ? .critical : .normal }
    // Both are bounded (reports by ``UsageReport/maximumUnits``, keys by their parser), so
    // the products cannot overflow; saturate anyway rather than trap.
    let hundredfold = used.multipliedReportingOverflow(by: 100)
    if hundredfold.overflow { return .critical }
    func over(_ percent: Int) -> Bool {
      let limit = licensed.multipliedReportingOverflow(by: percent)
      return !limit.overflow && hundredfold.partialValue > limit.partialValue
    }
    if over(110) { return .critical }
    if over(100) { return .exceeded }
    let ninety = licensed.multipliedReportingOverflow(by: 90)
    if !ninety.overflow && hundredfold.partialValue >= ninety.partialValue { return .high }
    return .normal
  }

  /// `used` as a percentage of `licensed`, rounded to one decimal (what the journal's
  /// `LICENSE_USAGE_PERCENT` and the status show).
  public static func percent(used: Int, licensed: Int) -> Double {
    guard licensed > 0 else { return 0 }
    return (Double(used) * 1000 / Double(licensed)).rounded() / 10
  }

  /// A percentage as the journal and the status print it: one decimal ("106.0").
  public static func percentText(_ percent: Double) -> String {
    let tenths = Int((percent * 10).rounded())
    return "\(tenths / 10).\(tenths % 10)"
  }
}

/// The last usage report of a slot (U1), kept durably, with what was logged of it (U2).
public struct UsageReport: Sendable, Equatable, Codable {
  /// The most units a report may give: far above any SVM's VMs, processors or cores, low
  /// enough that no arithmetic on it overflows.
  public static let maximumUnits = 1_000_000_000

  /// Units in use.
  public var units: Int
  /// When the report was received.
  public var reportedAt: Timestamp
  /// The highest band logged since usage was last under 90 % of `gradedSerial`'s units:
  /// each band is logged once when entered (U2).
  public var loggedBand: UsageBand
  /// The active key the logged band was graded against: a new active key (a promotion, a
  /// replacement, a renewal) is graded afresh.
  public var gradedSerial: String?
  /// When a band was last logged for `gradedSerial`, and which: within ``relogInterval`` of
  /// it, a band entered again after usage went back under 90 % is logged only if it is
  /// higher than that one.
  public var lastLoggedAt: Timestamp?
  public var lastLoggedBand: UsageBand?

  /// How often a report flapping across 90 % may log again: a consumer reporting every
  /// second across the bound must not flood the journal (nor push the events the agent
  /// checks against the journal out of its list).
  public static let relogInterval = TimeSpan.hours(1)
  /// A report that repeats the last one's units within this long is not written again (its
  /// instant stays the earlier one's): a consumer reporting in a loop costs no disk write.
  public static let repeatWindow = TimeSpan.minutes(1)

  public init(
    units: Int, reportedAt: Timestamp, loggedBand: UsageBand = .normal, gradedSerial: String? = nil,
    lastLoggedAt: Timestamp? = nil, lastLoggedBand: UsageBand? = nil
  ) {
    self.units = units
    self.reportedAt = reportedAt
    self.loggedBand = loggedBand
    self.gradedSerial = gradedSerial
    self.lastLoggedAt = lastLoggedAt
    self.lastLoggedBand = lastLoggedBand
  }
}

/// What a usage report did, for the reply.
public struct UsageRecorded: Sendable, Equatable {
  public var slot: Slot
  public var units: Int
  /// The band against the slot's active key; nil when the slot has none (lapsed).
  public var band: UsageBand?
}

/// LICENSE_USAGE_HIGH and LICENSE_LIMIT_EXCEEDED (U2).
public struct UsageGraded: Sendable, Equatable {
  public var slot: Slot
  /// The active key graded against.
  public var key: KeyRef
  /// Its units.
  public var units: Int
  public var used: Int
  public var band: UsageBand

  public var percent: Double { UsageBand.percent(used: used, licensed: units) }
}

/// A reserve or pending key licensing fewer units than the slot uses (U3): accepted, with
/// the warning `reserve_units_short`.
public struct UnitsShort: Sendable, Equatable {
  public static let code = "reserve_units_short"
  /// The key's units.
  public var units: Int
  /// The slot's last report.
  public var used: Int
  public var uncovered: Int { max(used - units, 0) }

  public init(units: Int, used: Int) {
    self.units = units
    self.used = used
  }

  /// The sentence the reply, the events and the status give; `tookOver` once the key is
  /// the active one (KEY_PROMOTED).
  public func sentence(serial: String, tookOver: Bool = false) -> String {
    let then = tookOver ? "are not covered" : "would be uncovered when it takes over"
    return
      "Warning (\(Self.code)): key \(serial) licenses \(units) units but the slot uses \(used): \(uncovered) \(then)."
  }
}

extension LicenseState {
  /// `slot_not_in_use`: a request about a slot that holds no key, naming those that do.
  func slotNotInUse(_ slot: Slot, rule: RuleID, so consequence: String) -> RuleViolation {
    let inUse = slotsInUse.map(\.rawValue)
    let which = inUse.isEmpty ? "none yet (add a key first)" : inUse.joined(separator: ", ")
    return RuleViolation(
      rule: rule, code: "slot_not_in_use",
      message:
        "The SVM holds no key for the \(slot.rawValue) slot, so \(consequence); the slots in use are: \(which).",
      slot: slot)
  }

  /// U3: `key` (a reserve or pending key of `slot`) against the slot's last usage report;
  /// nil when it covers it, or when nobody reported (unknown is never zero, nor short).
  public func unitsShort(_ key: LicenseKey, slot: Slot) -> UnitsShort? {
    guard let report = usage[slot], key.claims.units < report.units else { return nil }
    return UnitsShort(units: key.claims.units, used: report.units)
  }
}

extension LicenseEngine {
  /// U1: a report older than `stale-after` at `now` is stale.
  public func isStale(_ report: UsageReport, now: Timestamp) -> Bool {
    now.microseconds(since: report.reportedAt) > configuration.usageStaleAfter.microseconds
  }

  /// U1: the consumer reports `units` in use for `slot`. A report replaces the previous one
  /// and is kept durably with its instant; U2 grades it against the slot's active key.
  public func reportUsage(slot: Slot, units: Int, now: Timestamp, state: LicenseState) -> Decision<
    UsageRecorded
  > {
    guard units >= 0, units <= UsageReport.maximumUnits else {
      return .unchanged(
        state,
        .failure(
          RuleViolation(
            rule: .U1, code: "invalid_units",
            message:
              "\(units) is not a number of units: report how many the slot uses, from 0 to \(UsageReport.maximumUnits).",
            slot: slot)))
    }
    guard let slotState = state[slot] else {
      return .unchanged(state, .failure(state.slotNotInUse(slot, rule: .U1, so: "its usage is not counted")))
    }
    let band = slotState.active.map { UsageBand.of(used: units, licensed: $0.claims.units) }
    let recorded = UsageRecorded(slot: slot, units: units, band: band)
    // The same figure again within the repeat window (and within half of stale-after): the
    // report stands as it is, with nothing to write.
    let window = min(UsageReport.repeatWindow.microseconds, configuration.usageStaleAfter.microseconds / 2)
    if let previous = state.usage[slot], previous.units == units,
      (0..<window).contains(now.microseconds(since: previous.reportedAt))
    {
      return .unchanged(state, .success(recorded))
    }
    var next = state
    var report = state.usage[slot] ?? UsageReport(units: units, reportedAt: now)
    report.units = units
    report.reportedAt = now
    next.usage[slot] = report
    return commit(next, events: [], result: .success(recorded), now: now)
  }

  /// U2 after any change: each slot's usage graded against its active key, a band logged
  /// once when entered (and again after usage went back under 90 %); a new active key is
  /// graded afresh. Usage of slots no longer in use (A2) is dropped.
  func gradingUsage(_ state: inout LicenseState, now: Timestamp) -> [LicenseEvent] {
    var events: [LicenseEvent] = []
    for slot in state.usage.keys.sorted() {
      guard var report = state.usage[slot] else { continue }
      guard let slotState = state[slot] else {
        state.usage[slot] = nil
        continue
      }
      guard let active = slotState.active else { continue }
      if report.gradedSerial != active.serial {
        report.gradedSerial = active.serial
        report.loggedBand = .normal
        report.lastLoggedAt = nil
        report.lastLoggedBand = nil
      }
      let band = UsageBand.of(used: report.units, licensed: active.claims.units)
      if band == .normal {
        report.loggedBand = .normal
      } else if band > report.loggedBand {
        report.loggedBand = band
        // Entered again after going under 90 %: logged again, but within an hour of the last
        // band logged only if higher than it (a rise is always logged).
        if let last = report.lastLoggedAt, let lastBand = report.lastLoggedBand, band <= lastBand,
          now.microseconds(since: last) < UsageReport.relogInterval.microseconds
        {
          state.usage[slot] = report
          continue
        }
        report.lastLoggedAt = now
        report.lastLoggedBand = band
        events.append(
          .usageGraded(
            UsageGraded(
              slot: slot, key: KeyRef(active), units: active.claims.units, used: report.units, band: band)
          ))
      }
      state.usage[slot] = report
    }
    return events
  }
}
