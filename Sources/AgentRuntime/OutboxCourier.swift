import Dispatch
import LicenseCore
import Logging
import StandardIO
import Systemd

/// Carries the outbox to the journal, exactly once (P2), and checks later that the journal
/// kept what it took (contract §4, `LICENSE_REPLAYED`). A value owned by the agent's actor:
/// it changes the state it is given, and the agent makes that durable.
struct OutboxCourier {
  let sink: EventSink
  private let console = ConsoleEventSink()

  /// Retries of the outbox while the journal refuses events: at most this many, 250 ms
  /// doubling (about 8 s in all), then the events go to standard error.
  static let maximumDeliveryRetries = 5
  private var deliveryRetries = 0
  /// A retry of the outbox is queued.
  var retryScheduled = false

  /// How long after an event is taken the journal is asked whether it holds it: past
  /// journald's rate-limit window (`RateLimitIntervalSec=`, 30 s by default), whose drops
  /// `sd_journal_sendv` reports as success; by then journald has written what it did take.
  static let journalCheckDelay = TimeSpan.seconds(35)
  /// How long journald may take to write what it took (it writes asynchronously).
  static let journalSettleDelay = TimeSpan.seconds(5)
  /// Delivered events are kept for checking this long at most.
  static let deliveredRetention = TimeSpan.days(1)
  /// How many times an event lost by the journal is sent again at most.
  static let maximumSends = 3
  /// Events to look for in the journal, with when (monotonic milliseconds).
  private var checks: [(event: JournalEvent, due: Int64)] = []
  /// Fires when the earliest check is due (armed by the agent on its queue).
  var checkTimer: DispatchSourceTimer?

  init(sink: EventSink) { self.sink = sink }

  /// What a round of delivery did.
  struct Round {
    /// The state lost what the journal took: the agent writes it (the acknowledgement).
    var acknowledged = false
    /// The journal refused an event: the round is to be made again after this delay.
    var retryAfterMilliseconds: Int?
  }

  /// Sends the outbox in order, each event exactly as it is stored, and removes from it
  /// only what the journal took. An event the journal refuses stops the round, to be retried
  /// later (bounded); nothing taken is sent again. Where there is no journal at all, or once
  /// the retries are spent, events go to standard error instead (systemd puts that in the
  /// journal, without the fields).
  mutating func deliver(_ state: inout LicenseState, now: Timestamp, logger: Logger) -> Round {
    var round = Round()
    var remaining = state.outbox[...]
    var refused: Int32?
    var taken: [JournalEvent] = []
    while let event = remaining.first {
      let name = event.transitionID.map(state.transitionName)
      switch sink.send(event, transition: name) {
      case .delivered:
        taken.append(event)
        remaining.removeFirst()
      case .unavailable:
        console.send(event, transition: name)
        remaining.removeFirst()
      case .refused(let errno):
        if deliveryRetries < Self.maximumDeliveryRetries {
          refused = errno
        } else {
          logger.critical(
            "The journal keeps refusing an event: it is written to standard error instead",
            metadata: ["event": "\(event.kind.rawValue)", "errno": "\(errno)"])
          console.send(event, transition: name)
          remaining.removeFirst()
        }
      }
      if refused != nil { break }
    }
    if remaining.count != state.outbox.count {
      // In memory at once, so that this process never sends an event twice; on disk as the
      // acknowledgement (if that write fails, a restart's replay finds them in the journal).
      // What the journal took is kept a while, to be checked against it.
      state.outbox = Array(remaining)
      recordDelivered(taken, in: &state, now: now)
      round.acknowledged = true
    }
    guard let refused else {
      deliveryRetries = 0
      return round
    }
    guard !retryScheduled else { return round }
    retryScheduled = true
    let delay = 250 << deliveryRetries
    deliveryRetries += 1
    logger.warning(
      "The journal refused an event; it stays in the outbox and is sent again",
      metadata: ["errno": "\(refused)", "retry_in_ms": "\(delay)", "retry": "\(deliveryRetries)"])
    round.retryAfterMilliseconds = delay
    return round
  }

  /// An event of no state change (a refusal, a clock change, a recovery): sent at once;
  /// standard error when the journal does not take it.
  func announce(_ event: JournalEvent) {
    if sink.send(event, transition: nil) != .delivered { console.send(event, transition: nil) }
  }

  /// At start: the events of transitions persisted but not acknowledged before a crash
  /// leave the outbox when the journal shows they were sent already (exactly once); the
  /// others are sent by the next round. True when the outbox changed.
  func dropAlreadyDelivered(_ state: inout LicenseState, logger: Logger) -> Bool {
    guard !state.outbox.isEmpty else { return false }
    let before = state.outbox.count
    let loaded = state
    state.outbox.removeAll { event in
      guard let name = event.transitionID.map(loaded.transitionName) else { return false }
      return sink.wasDelivered(event, transition: name) == true
    }
    logger.notice(
      "Events of an interrupted change are replayed",
      metadata: ["replayed": "\(state.outbox.count)", "already_delivered": "\(before - state.outbox.count)"])
    return state.outbox.count != before
  }

  // MARK: - Events the journal lost

  /// The events the journal took: kept in the state (the newest ``LicenseState/maximumDelivered``,
  /// for at most ``deliveredRetention``), and each looked for in the journal once
  /// ``journalCheckDelay`` has passed.
  private mutating func recordDelivered(
    _ events: [JournalEvent], in state: inout LicenseState, now: Timestamp
  ) {
    guard !events.isEmpty else { return }
    state.delivered += events.map { DeliveredEvent(event: $0, deliveredAt: now) }
    state.delivered.removeAll { $0.deliveredAt + Self.deliveredRetention < now }
    if state.delivered.count > LicenseState.maximumDelivered {
      state.delivered.removeFirst(state.delivered.count - LicenseState.maximumDelivered)
    }
    schedule(events, after: Self.journalCheckDelay)
  }

  /// Looks for `events` in the journal once `delay` has passed.
  mutating func schedule(_ events: [JournalEvent], after delay: TimeSpan) {
    let due = MonotonicClock.milliseconds() + delay.microseconds / 1000
    checks += events.map { ($0, due) }
  }

  /// When the earliest check is due (monotonic milliseconds); nil when none is pending.
  var nextCheck: Int64? { checks.map(\.due).min() }

  /// The events whose check is due now, taken off the list.
  mutating func dueChecks() -> [JournalEvent] {
    let now = MonotonicClock.milliseconds()
    let due = checks.filter { $0.due <= now }.map(\.event)
    checks.removeAll { $0.due <= now }
    return due
  }

  /// Looks for delivered events in the journal (by every field and the transition, from
  /// this agent's user and unit only: ``JournalEventSink``) and returns, marked in `state`,
  /// the copies to send again with `LICENSE_REPLAYED=1` of those it does not hold. An event
  /// the journal cannot be asked about is left alone (nothing is sent twice on a guess).
  func lost(_ due: [JournalEvent], in state: inout LicenseState, logger: Logger) -> [JournalEvent] {
    var copies: [JournalEvent] = []
    for event in due {
      guard let id = event.transitionID,
        let index = state.delivered.firstIndex(where: { $0.event == event && !$0.replayed })
      else { continue }
      guard sink.wasDelivered(event, transition: state.transitionName(id)) == false else { continue }
      state.delivered[index].replayed = true
      let copy = event.replayed
      // A copy the journal lost too (its rate limit still dropping) is sent again, at most
      // `maximumSends` times in all: only ever while the journal does not hold it.
      let sent = state.delivered.count { $0.event == copy }
      guard sent < Self.maximumSends else {
        logger.critical(
          "The journal keeps losing an event: it is not sent again",
          metadata: ["event": "\(event.kind.rawValue)", "sent": "\(sent + 1)"])
        continue
      }
      copies.append(copy)
    }
    return copies
  }
}
