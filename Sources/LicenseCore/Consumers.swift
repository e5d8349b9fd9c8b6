/// Consumers of the licence (rule N2): the programs that enforce it (the protection
/// service) name themselves and confirm the serial they enforce per slot. After a takeover,
/// a consumer the configuration expects that has not confirmed the new active key within
/// `confirm-within` makes the agent log CONSUMER_NOT_UPDATED, once; a later confirmation
/// clears it.

/// A consumer's name: 1 to 64 characters of letters, digits, `.`, `_`, `-` and `@` (it is a
/// journal field value, a metric label and a status key; nothing else needs more).
public struct ConsumerName: Sendable, Hashable, Comparable, Codable, CustomStringConvertible {
  public let rawValue: String
  public static let maximumLength = 64

  public init?(_ text: String) {
    guard !text.isEmpty, text.utf8.count <= Self.maximumLength,
      text.utf8.allSatisfy({
        ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A) || $0 == 0x2E
          || $0 == 0x5F || $0 == 0x2D || $0 == 0x40
      })
    else { return nil }
    rawValue = text
  }

  public var description: String { rawValue }
  public static func < (lhs: ConsumerName, rhs: ConsumerName) -> Bool { lhs.rawValue < rhs.rawValue }

  public init(from decoder: Decoder) throws {
    let text = try decoder.singleValueContainer().decode(String.self)
    guard let name = ConsumerName(text) else {
      throw DecodingError.dataCorrupted(
        DecodingError.Context(codingPath: decoder.codingPath, debugDescription: "invalid consumer name"))
    }
    self = name
  }

  public func encode(to encoder: Encoder) throws {
    var container = encoder.singleValueContainer()
    try container.encode(rawValue)
  }

  /// The rule N2 error for a name that is not one.
  public static func violation(_ text: String) -> RuleViolation {
    RuleViolation(
      rule: .N2, code: "invalid_consumer",
      message:
        "\"\(text.prefix(80))\" is not a consumer name: use 1 to \(maximumLength) letters, digits, '.', '_', '-' or '@' (the name [consumers] expect lists)."
    )
  }
}

/// What the agent knows of one consumer for one slot, kept durably.
public struct ConsumerSlotRecord: Sendable, Equatable, Codable {
  /// The serial the consumer last confirmed it enforces, and when.
  public var confirmedSerial: String?
  public var confirmedAt: Timestamp?
  /// The slot's active key the consumer is to enforce, since when (the takeover, or when the
  /// agent began expecting the consumer); nil while the slot has no active key.
  public var awaitedSerial: String?
  public var awaitedSince: Timestamp?
  /// CONSUMER_NOT_UPDATED was logged for `awaitedSerial`.
  public var reported: Bool

  public init(
    confirmedSerial: String? = nil, confirmedAt: Timestamp? = nil, awaitedSerial: String? = nil,
    awaitedSince: Timestamp? = nil, reported: Bool = false
  ) {
    self.confirmedSerial = confirmedSerial
    self.confirmedAt = confirmedAt
    self.awaitedSerial = awaitedSerial
    self.awaitedSince = awaitedSince
    self.reported = reported
  }

  /// The consumer enforces the key it is to enforce.
  public var isConfirmed: Bool { awaitedSerial != nil && confirmedSerial == awaitedSerial }
}

/// Where a consumer stands for a slot (status and metrics).
public enum ConsumerStanding: String, Sendable, Equatable, Codable {
  /// It confirmed the slot's active key.
  case confirmed
  /// Not yet, and `confirm-within` has not passed since the takeover.
  case waiting
  /// Not within `confirm-within`: CONSUMER_NOT_UPDATED was logged (an expected consumer).
  case late
  /// Not confirmed, and not expected (nothing is logged for it).
  case unconfirmed
}

/// What a confirmation did, for the reply.
public struct ConsumerConfirmed: Sendable, Equatable {
  public var consumer: ConsumerName
  public var slot: Slot
  public var serial: String
  /// The slot's active key, which the consumer is to enforce.
  public var activeSerial: String?
  /// `serial` is the active key.
  public var current: Bool { activeSerial == serial }
  /// The configuration expects this consumer.
  public var expected: Bool
}

/// CONSUMER_NOT_UPDATED (N2).
public struct ConsumerNotUpdated: Sendable, Equatable {
  public var slot: Slot
  public var consumer: ConsumerName
  /// The active key the consumer should enforce.
  public var key: KeyRef
  /// The last serial it confirmed for the slot, if any.
  public var confirmedSerial: String?
  /// How long it had.
  public var within: TimeSpan
}

extension LicenseState {
  /// Where `consumer` stands for `slot` at `now`; nil when the slot has no active key.
  public func standing(
    of consumer: ConsumerName, slot: Slot, expected: Bool, now: Timestamp, within: TimeSpan
  ) -> ConsumerStanding? {
    guard let active = self[slot]?.active else { return nil }
    let record = consumers[consumer]?[slot]
    if record?.confirmedSerial == active.serial { return .confirmed }
    guard expected else { return .unconfirmed }
    if record?.reported == true && record?.awaitedSerial == active.serial { return .late }
    return .waiting
  }
}

extension LicenseEngine {
  /// At most this many consumers are kept (expected ones and others that confirmed): a
  /// consumer name is chosen by a caller, and the state stays bounded.
  public static let maximumConsumers = 32
  /// The longest serial a confirmation may name (keys' serials are far shorter).
  public static let maximumConfirmedSerialLength = 128

  /// N2: `consumer` enforces `serial` for `slot` now. Kept durably; a confirmation of the
  /// slot's active key clears a pending CONSUMER_NOT_UPDATED. Confirming another serial (an
  /// older key) is recorded as what the consumer enforces, and does not clear it.
  public func confirm(
    consumer: String, slot: Slot, serial: String, now: Timestamp, state: LicenseState
  ) -> Decision<ConsumerConfirmed> {
    guard let name = ConsumerName(consumer) else {
      return .unchanged(state, .failure(ConsumerName.violation(consumer)))
    }
    guard !serial.isEmpty, serial.utf8.count <= Self.maximumConfirmedSerialLength,
      serial.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7F })
    else {
      return .unchanged(
        state,
        .failure(
          RuleViolation(
            rule: .N2, code: "invalid_serial",
            message:
              "A confirmation names the serial of the key the consumer enforces (printable, at most \(Self.maximumConfirmedSerialLength) characters), as GetStatus or Monitor gave it.",
            slot: slot)))
    }
    guard let slotState = state[slot] else {
      return .unchanged(
        state, .failure(state.slotNotInUse(slot, rule: .N2, so: "there is nothing to confirm")))
    }
    if state.consumers[name] == nil && state.consumers.count >= Self.maximumConsumers {
      return .unchanged(
        state,
        .failure(
          RuleViolation(
            rule: .N2, code: "too_many_consumers",
            message:
              "The agent already keeps \(Self.maximumConsumers) consumers; list the ones that matter in [consumers] expect, or confirm under an existing name.",
            slot: slot)))
    }
    let confirmed = ConsumerConfirmed(
      consumer: name, slot: slot, serial: serial, activeSerial: slotState.active?.serial,
      expected: configuration.expectedConsumers.contains(name))
    // The same serial again: nothing to write (a consumer confirming in a loop costs no disk
    // write).
    if state.consumers[name]?[slot]?.confirmedSerial == serial {
      return .unchanged(state, .success(confirmed))
    }
    var next = state
    var record = next.consumers[name]?[slot] ?? ConsumerSlotRecord()
    record.confirmedSerial = serial
    record.confirmedAt = now
    next.consumers[name, default: [:]][slot] = record
    return commit(next, events: [], result: .success(confirmed), now: now)
  }

  /// The configuration changed (start, reload): expected consumers are tracked from now.
  public func consumersReconfigured(now: Timestamp, state: LicenseState) -> Decision<TimeProcessed> {
    var next = state
    trackingConsumers(&next, now: now)
    if next == state { return .unchanged(state) }
    return commit(next, events: [], result: .success(TimeProcessed()), now: now)
  }

  /// After any change: each expected consumer is to enforce each slot's active key, from the
  /// instant it became active (or the consumer became expected); a slot without an active
  /// key awaits nothing. Records of slots no longer in use, and of consumers neither expected
  /// nor having confirmed anything, are dropped.
  func trackingConsumers(_ state: inout LicenseState, now: Timestamp) {
    let expected = Set(configuration.expectedConsumers)
    for name in Set(state.consumers.keys).union(expected) {
      var records = state.consumers[name] ?? [:]
      for slot in records.keys where state[slot] == nil { records[slot] = nil }
      if expected.contains(name) {
        for slot in state.slotsInUse {
          var record = records[slot] ?? ConsumerSlotRecord()
          let active = state[slot]?.active?.serial
          if record.awaitedSerial != active {
            record.awaitedSerial = active
            record.awaitedSince = active == nil ? nil : now
            record.reported = false
          }
          records[slot] = record
        }
      } else {
        // Not expected: only what it confirmed is kept.
        for (slot, record) in records {
          if record.confirmedSerial == nil {
            records[slot] = nil
          } else {
            records[slot] = ConsumerSlotRecord(
              confirmedSerial: record.confirmedSerial, confirmedAt: record.confirmedAt)
          }
        }
      }
      state.consumers[name] = records.isEmpty && !expected.contains(name) ? nil : records
    }
  }

  /// The consumers of `slot` the status and the metrics show, by name: the ones expected,
  /// and any other that confirmed a key of the slot.
  public func consumersShown(for slot: Slot, in state: LicenseState) -> [ConsumerName] {
    Set(configuration.expectedConsumers).union(
      state.consumers.filter { $0.value[slot]?.confirmedSerial != nil }.keys
    ).sorted()
  }

  /// When `consumer` must have confirmed `slot`'s active key by, if it is still awaited.
  public func confirmationDeadline(_ record: ConsumerSlotRecord, consumer: ConsumerName) -> Timestamp? {
    guard configuration.expectedConsumers.contains(consumer), !record.reported, !record.isConfirmed,
      let since = record.awaitedSince, record.awaitedSerial != nil
    else { return nil }
    return since + configuration.confirmWithin
  }

  /// The confirmation deadlines still ahead, earliest first (the timer, status, metrics).
  func confirmationWakes(_ state: LicenseState, slot: Slot) -> [Wake] {
    state.consumers.keys.sorted().compactMap { name in
      guard let record = state.consumers[name]?[slot], let serial = record.awaitedSerial,
        let due = confirmationDeadline(record, consumer: name)
      else { return nil }
      return Wake(at: due, reason: .confirmation(slot: slot, serial: serial, consumer: name))
    }
  }

  /// N2 at `now`: CONSUMER_NOT_UPDATED for each expected consumer whose deadline passed.
  func reportingLateConsumers(_ state: inout LicenseState, now: Timestamp) -> [LicenseEvent] {
    var events: [LicenseEvent] = []
    for name in state.consumers.keys.sorted() {
      for slot in state.slotsInUse {
        guard var record = state.consumers[name]?[slot],
          let due = confirmationDeadline(record, consumer: name), due <= now,
          let active = state[slot]?.active, record.awaitedSerial == active.serial
        else { continue }
        record.reported = true
        state.consumers[name]?[slot] = record
        events.append(
          .consumerNotUpdated(
            ConsumerNotUpdated(
              slot: slot, consumer: name, key: KeyRef(active), confirmedSerial: record.confirmedSerial,
              within: configuration.confirmWithin)))
      }
    }
    return events
  }

  /// A backward clock step keeps what is left of each confirmation delay (as retries do).
  func confirmationsKeepingTheirDelay(_ state: LicenseState, after delta: Int64) -> LicenseState {
    guard delta < 0 else { return state }
    var next = state
    let shift = TimeSpan(microseconds: delta)
    for (name, records) in state.consumers {
      for (slot, record) in records {
        guard let since = record.awaitedSince, confirmationDeadline(record, consumer: name) != nil else {
          continue
        }
        next.consumers[name]?[slot]?.awaitedSince = since + shift
      }
    }
    return next
  }
}

extension ConsumerName: CodingKeyRepresentable {
  public var codingKey: any CodingKey { ConsumerCodingKey(stringValue: rawValue) }
  public init?<T: CodingKey>(codingKey: T) { self.init(codingKey.stringValue) }
}

private struct ConsumerCodingKey: CodingKey {
  var stringValue: String
  var intValue: Int? { nil }
  init(stringValue: String) { self.stringValue = stringValue }
  init?(intValue: Int) { nil }
}
