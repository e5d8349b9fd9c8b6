/// The persisted forms of ``LicenseState``.
///
/// Schema 2 (written now) stores each slot as its case: `{"held": {"active": ..., "warned":
/// [...], "reserve" | "renewingAhead" | "pending": ...}}` or `{"lapsed": {"expired": ...,
/// "renewal": ...}}`. Schema 1 (what 0.1.0 writes: a slot as seven independent optionals) is
/// read, converted with nothing lost, and can be written back (``LicenseStateVersion1``), so
/// that a downgrade to 0.1.0 keeps the keys: 0.1.0 refuses a schema it does not know.
extension LicenseState: Codable {
  enum CodingKeys: String, CodingKey {
    case schemaVersion, stateID, slots, lastTransitionID, outbox, counters, usage, consumers, blocklists,
      delivered,
      openedInBoot,
      closedCleanly
  }

  public init(from decoder: Decoder) throws {
    let container = try decoder.container(keyedBy: CodingKeys.self)
    let version = try container.decode(Int.self, forKey: .schemaVersion)
    switch version {
    case 1:
      self = try LicenseStateVersion1(from: decoder).converted()
      return
    case Self.currentSchemaVersion:
      break
    default:
      throw DecodingError.dataCorruptedError(
        forKey: .schemaVersion, in: container, debugDescription: "unknown state schema \(version)")
    }
    self.init(
      stateID: try container.decode(String.self, forKey: .stateID),
      slots: try container.decode([Slot: SlotState].self, forKey: .slots),
      lastTransitionID: try container.decode(UInt64.self, forKey: .lastTransitionID),
      outbox: try container.decode([JournalEvent].self, forKey: .outbox),
      counters: try container.decodeIfPresent([Slot: SlotCounters].self, forKey: .counters) ?? [:],
      usage: try container.decodeIfPresent([Slot: UsageReport].self, forKey: .usage) ?? [:],
      consumers: try container.decodeIfPresent(
        [ConsumerName: [Slot: ConsumerSlotRecord]].self, forKey: .consumers) ?? [:],
      blocklists: try container.decodeIfPresent([String: StoredBlocklist].self, forKey: .blocklists) ?? [:],
      delivered: try container.decodeIfPresent([DeliveredEvent].self, forKey: .delivered) ?? [],
      openedInBoot: try container.decodeIfPresent(String.self, forKey: .openedInBoot) ?? "",
      closedCleanly: try container.decodeIfPresent(Bool.self, forKey: .closedCleanly) ?? true)
  }

  public func encode(to encoder: Encoder) throws {
    var container = encoder.container(keyedBy: CodingKeys.self)
    try container.encode(Self.currentSchemaVersion, forKey: .schemaVersion)
    try container.encode(stateID, forKey: .stateID)
    try container.encode(slots, forKey: .slots)
    try container.encode(lastTransitionID, forKey: .lastTransitionID)
    try container.encode(outbox, forKey: .outbox)
    try container.encode(counters, forKey: .counters)
    try container.encode(usage, forKey: .usage)
    if !consumers.isEmpty { try container.encode(consumers, forKey: .consumers) }
    if !blocklists.isEmpty { try container.encode(blocklists, forKey: .blocklists) }
    try container.encode(delivered, forKey: .delivered)
    try container.encode(openedInBoot, forKey: .openedInBoot)
    try container.encode(closedCleanly, forKey: .closedCleanly)
  }

  /// The schema-1 form of this state, for a downgrade to 0.1.0 (`license-agent
  /// --write-state-schema 1`).
  public var version1: LicenseStateVersion1 { LicenseStateVersion1(self) }

  /// This state as 0.2.0 (and 0.1.0) can decode it, for a downgrade (`license-agent
  /// --write-state-for 0.2`): they refuse an event kind or a journal field they do not know,
  /// so the usage events (U2), U3's fields and what 0.3.x cannot read either are left out of
  /// the outbox and of the events delivered, and the usage reports (which they ignore) are
  /// dropped.
  public var readableBy020: LicenseState {
    var copy = readableBy030
    copy.usage = [:]
    return copy.leavingOut(
      kinds: [.licenseUsageHigh, .licenseLimitExceeded],
      fields: [.units, .unitsUsed, .usagePercent, .warning])
  }

  /// This state as 0.3.x can decode it (`license-agent --write-state-for 0.3`): what 0.4.x
  /// reads, without CONSUMER_NOT_UPDATED and its fields, and without the consumers'
  /// confirmations (N2), which 0.3.x ignores.
  public var readableBy030: LicenseState {
    var copy = readableBy040
    copy.consumers = [:]
    return copy.leavingOut(kinds: [.consumerNotUpdated], fields: [.consumer, .confirmedSerial])
  }

  /// This state as 0.4.x can decode it (`license-agent --write-state-for 0.4`): without
  /// KEY_BLOCKED and its fields, without the blocklists (0.4.0 knows none: B1–B3 are lost,
  /// and a list given again after the upgrade back starts its grace again), and without the
  /// grace of blocked active keys: 0.4.x keeps a blocked active key until its `exp`.
  public var readableBy040: LicenseState {
    var copy = self
    copy.blocklists = [:]
    for (slot, held) in heldSlots where held.blocked != nil {
      var unblocked = held
      unblocked.blocked = nil
      copy[slot] = .held(unblocked)
    }
    return copy.leavingOut(kinds: [.keyBlocked], fields: [.role, .blockedSince, .graceEndsAt])
  }

  private func leavingOut(kinds newKinds: Set<EventKind>, fields newFields: Set<JournalField>) -> LicenseState
  {
    func known(_ event: JournalEvent) -> JournalEvent? {
      guard !newKinds.contains(event.kind) else { return nil }
      var copy = event
      copy.fields.removeAll { newFields.contains($0.name) }
      return copy
    }
    var copy = self
    copy.outbox = outbox.compactMap(known)
    copy.delivered = delivered.compactMap { entry in
      known(entry.event).map {
        DeliveredEvent(event: $0, deliveredAt: entry.deliveredAt, replayed: entry.replayed)
      }
    }
    return copy
  }
}

extension Slot: CodingKeyRepresentable {}

extension LicenseKey: Codable {
  /// Persisted as the compact JWS alone; the claims are read again from it on load, so the
  /// key's text is the single source of truth.
  public init(from decoder: Decoder) throws {
    let text = try decoder.singleValueContainer().decode(String.self)
    do {
      self = try KeyParser.parseUnverified(text)
    } catch {
      throw DecodingError.dataCorrupted(
        .init(codingPath: decoder.codingPath, debugDescription: "stored key is unreadable: \(error)"))
    }
  }

  public func encode(to encoder: Encoder) throws {
    var container = encoder.singleValueContainer()
    try container.encode(compact)
  }
}

extension InstalledKey: Codable {
  enum CodingKeys: String, CodingKey { case key, addedAt, promotedAt, activationCode }

  public init(from decoder: Decoder) throws {
    let container = try decoder.container(keyedBy: CodingKeys.self)
    self.init(
      key: try container.decode(LicenseKey.self, forKey: .key),
      addedAt: try container.decode(Timestamp.self, forKey: .addedAt),
      promotedAt: try container.decodeIfPresent(Timestamp.self, forKey: .promotedAt),
      activationCode: try container.decodeIfPresent(ActivationCode.self, forKey: .activationCode))
  }

  public func encode(to encoder: Encoder) throws {
    var container = encoder.container(keyedBy: CodingKeys.self)
    try container.encode(key, forKey: .key)
    try container.encode(addedAt, forKey: .addedAt)
    try container.encodeIfPresent(promotedAt, forKey: .promotedAt)
    try container.encodeIfPresent(activationCode, forKey: .activationCode)
  }
}

extension RenewalAttempts: Codable {
  enum CodingKeys: String, CodingKey { case failures, schedule, at, lastError, alertRaised }

  public init(from decoder: Decoder) throws {
    let container = try decoder.container(keyedBy: CodingKeys.self)
    let schedule: Schedule
    switch try container.decode(String.self, forKey: .schedule) {
    case "at-draw": schedule = .atDraw
    case "due": schedule = .due(try container.decode(Timestamp.self, forKey: .at))
    case "under-way": schedule = .underWay(since: try container.decode(Timestamp.self, forKey: .at))
    case "stopped": schedule = .stopped
    case let other:
      throw DecodingError.dataCorruptedError(
        forKey: .schedule, in: container, debugDescription: "unknown schedule \"\(other)\"")
    }
    self.init(
      failures: try container.decode(Int.self, forKey: .failures), schedule: schedule,
      lastError: try container.decodeIfPresent(String.self, forKey: .lastError).map(ActivationFailure.stored),
      alertRaised: try container.decode(Bool.self, forKey: .alertRaised))
  }

  public func encode(to encoder: Encoder) throws {
    var container = encoder.container(keyedBy: CodingKeys.self)
    try container.encode(failures, forKey: .failures)
    switch schedule {
    case .atDraw: try container.encode("at-draw", forKey: .schedule)
    case .due(let at):
      try container.encode("due", forKey: .schedule)
      try container.encode(at, forKey: .at)
    case .underWay(let since):
      try container.encode("under-way", forKey: .schedule)
      try container.encode(since, forKey: .at)
    case .stopped: try container.encode("stopped", forKey: .schedule)
    }
    try container.encodeIfPresent(lastError, forKey: .lastError)
    try container.encode(alertRaised, forKey: .alertRaised)
  }
}

extension HeldSlot: Codable {
  enum CodingKeys: String, CodingKey { case active, warned, reserve, renewingAhead, pending, blocked }

  public init(from decoder: Decoder) throws {
    let container = try decoder.container(keyedBy: CodingKeys.self)
    let successors = [
      try container.decodeIfPresent(InstalledKey.self, forKey: .reserve).map(Successor.reserve),
      try container.decodeIfPresent(AheadRenewal.self, forKey: .renewingAhead).map(Successor.renewingAhead),
      try container.decodeIfPresent(InstalledKey.self, forKey: .pending).map(Successor.pending),
    ].compactMap { $0 }
    guard successors.count <= 1 else {
      throw DecodingError.dataCorruptedError(
        forKey: .reserve, in: container, debugDescription: "a slot has one successor at most")
    }
    self.init(
      active: try container.decode(InstalledKey.self, forKey: .active),
      warned: try TimeSpan.thresholds(try container.decode([String].self, forKey: .warned)),
      successor: successors.first ?? .none,
      blocked: try container.decodeIfPresent(ActiveBlock.self, forKey: .blocked))
  }

  public func encode(to encoder: Encoder) throws {
    var container = encoder.container(keyedBy: CodingKeys.self)
    try container.encode(active, forKey: .active)
    try container.encode(warned.sorted(by: >).map(\.description), forKey: .warned)
    switch successor {
    case .none: break
    case .reserve(let key): try container.encode(key, forKey: .reserve)
    case .renewingAhead(let renewal): try container.encode(renewal, forKey: .renewingAhead)
    case .pending(let key): try container.encode(key, forKey: .pending)
    }
    try container.encodeIfPresent(blocked, forKey: .blocked)
  }
}

extension SlotState: Codable {
  enum CodingKeys: String, CodingKey { case held, lapsed }

  public init(from decoder: Decoder) throws {
    let container = try decoder.container(keyedBy: CodingKeys.self)
    if let held = try container.decodeIfPresent(HeldSlot.self, forKey: .held) {
      self = .held(held)
    } else if let lapsed = try container.decodeIfPresent(LapsedSlot.self, forKey: .lapsed) {
      self = .lapsed(lapsed)
    } else {
      throw DecodingError.dataCorrupted(
        .init(codingPath: decoder.codingPath, debugDescription: "a slot is \"held\" or \"lapsed\""))
    }
  }

  public func encode(to encoder: Encoder) throws {
    var container = encoder.container(keyedBy: CodingKeys.self)
    switch self {
    case .held(let held): try container.encode(held, forKey: .held)
    case .lapsed(let lapsed): try container.encode(lapsed, forKey: .lapsed)
    }
  }
}

extension TimeSpan {
  /// Warning thresholds as the state spells them (`30d`, `7d`).
  static func thresholds(_ texts: [String]) throws -> Set<TimeSpan> {
    try Set(
      texts.map { text in
        guard let span = TimeSpan(text) else {
          throw DecodingError.dataCorrupted(
            .init(codingPath: [], debugDescription: "not a threshold: \(text)"))
        }
        return span
      })
  }
}

// MARK: - Schema 1

/// The state as 0.1.0 persisted it (schema 1): read and converted by ``LicenseState``'s
/// decoder, and written back by `license-agent --write-state-schema 1` before a downgrade
/// (the package's prerm), since 0.1.0 refuses a schema it does not know.
public struct LicenseStateVersion1: Codable, Equatable, Sendable {
  struct InstalledKey1: Codable, Equatable, Sendable {
    var key: LicenseKey
    var origin: KeyOrigin
    var addedAt: Timestamp
    var promotedAt: Timestamp?
    var activationCode: ActivationCode?
  }

  struct RenewalState1: Codable, Equatable, Sendable {
    var code: ActivationCode
    var expiredSerial: String
    var expiredAt: Timestamp
    var attempts: Int
    var nextAttemptAt: Timestamp?
    var lastError: String?
    var alertRaised: Bool
    var attemptStartedAt: Timestamp?
  }

  struct AheadRenewal1: Codable, Equatable, Sendable {
    var serial: String
    var draw: Double
    var since: Timestamp
    var attempts: Int
    var nextAttemptAt: Timestamp?
    var stopped: Bool
    var lastError: String?
    var alertRaised: Bool
    var attemptStartedAt: Timestamp?
  }

  struct SlotState1: Codable, Equatable, Sendable {
    var active: InstalledKey1?
    var reserve: InstalledKey1?
    var expired: ExpiredKey?
    var warned: [String]
    var renewal: RenewalState1?
    var ahead: AheadRenewal1?
    var pending: InstalledKey1?
  }

  var schemaVersion: Int
  var stateID: String
  var slots: [Slot: SlotState1]
  var lastTransitionID: UInt64
  var outbox: [JournalEvent]
  var counters: [Slot: SlotCounters]?
  var delivered: [DeliveredEvent]?
  var openedInBoot: String?
  var closedCleanly: Bool?

  /// Schema 1 as schema 2, with nothing lost: each slot's optionals become its case.
  func converted() throws -> LicenseState {
    var slots: [Slot: SlotState] = [:]
    for (slot, old) in self.slots {
      slots[slot] = try Self.convert(old)
    }
    return LicenseState(
      stateID: stateID, slots: slots, lastTransitionID: lastTransitionID, outbox: outbox,
      counters: counters ?? [:], delivered: delivered ?? [], openedInBoot: openedInBoot ?? "",
      closedCleanly: closedCleanly ?? true)
  }

  private static func convert(_ key: InstalledKey1) -> InstalledKey {
    InstalledKey(
      key: key.key, addedAt: key.addedAt, promotedAt: key.promotedAt, activationCode: key.activationCode)
  }

  private static func convert(_ old: SlotState1) throws -> SlotState? {
    if let active = old.active {
      var successor = Successor.none
      if let reserve = old.reserve {
        successor = .reserve(convert(reserve))
      } else if let pending = old.pending {
        successor = .pending(convert(pending))
      } else if let ahead = old.ahead, ahead.serial == active.key.serial {
        let schedule: RenewalAttempts.Schedule =
          ahead.attemptStartedAt.map { .underWay(since: $0) }
          ?? (ahead.stopped ? .stopped : ahead.nextAttemptAt.map { .due($0) } ?? .atDraw)
        successor = .renewingAhead(
          AheadRenewal(
            draw: ahead.draw, since: ahead.since,
            attempts: RenewalAttempts(
              failures: ahead.attempts, schedule: schedule,
              lastError: ahead.lastError.map(ActivationFailure.stored),
              alertRaised: ahead.alertRaised)))
      }
      return .held(
        HeldSlot(active: convert(active), warned: try TimeSpan.thresholds(old.warned), successor: successor))
    }
    guard let expired = old.expired else { return nil }
    let renewal = old.renewal.map { renewal -> Renewal in
      let schedule: RenewalAttempts.Schedule =
        renewal.attemptStartedAt.map { .underWay(since: $0) } ?? renewal.nextAttemptAt.map { .due($0) }
        ?? .stopped
      return Renewal(
        code: renewal.code,
        attempts: RenewalAttempts(
          failures: renewal.attempts, schedule: schedule,
          lastError: renewal.lastError.map(ActivationFailure.stored),
          alertRaised: renewal.alertRaised))
    }
    return .lapsed(LapsedSlot(expired: expired, renewal: renewal))
  }

}

extension LicenseStateVersion1 {
  /// Schema 2 as schema 1, for a downgrade.
  init(_ state: LicenseState) {
    func key(_ installed: InstalledKey) -> InstalledKey1 {
      InstalledKey1(
        key: installed.key, origin: installed.origin, addedAt: installed.addedAt,
        promotedAt: installed.promotedAt,
        activationCode: installed.activationCode)
    }
    var slots: [Slot: SlotState1] = [:]
    for (slot, current) in state.slots {
      switch current {
      case .held(let held):
        var old = SlotState1(
          active: key(held.active), warned: held.warned.sorted(by: >).map(\.description))
        switch held.successor {
        case .none: break
        case .reserve(let reserve): old.reserve = key(reserve)
        case .pending(let pending): old.pending = key(pending)
        case .renewingAhead(let ahead):
          let attempts = ahead.attempts
          old.ahead = AheadRenewal1(
            serial: held.active.serial, draw: ahead.draw, since: ahead.since, attempts: attempts.failures,
            nextAttemptAt: attempts.dueAt, stopped: attempts.isStopped, lastError: attempts.lastError,
            alertRaised: attempts.alertRaised,
            attemptStartedAt: attempts.underWaySince)
        }
        slots[slot] = old
      case .lapsed(let lapsed):
        slots[slot] = SlotState1(
          expired: lapsed.expired, warned: [],
          renewal: lapsed.renewal.map { renewal in
            let attempts = renewal.attempts
            return RenewalState1(
              code: renewal.code, expiredSerial: lapsed.expired.serial, expiredAt: lapsed.expired.expiresAt,
              attempts: attempts.failures, nextAttemptAt: attempts.dueAt, lastError: attempts.lastError,
              alertRaised: attempts.alertRaised,
              attemptStartedAt: attempts.underWaySince)
          })
      }
    }
    // 0.1.0 decodes only the events and fields it knows (as 0.2.0 does).
    let readable = state.readableBy020
    self.init(
      schemaVersion: 1, stateID: state.stateID, slots: slots, lastTransitionID: state.lastTransitionID,
      outbox: readable.outbox, counters: state.counters, delivered: readable.delivered,
      openedInBoot: state.openedInBoot,
      closedCleanly: state.closedCleanly)
  }
}
