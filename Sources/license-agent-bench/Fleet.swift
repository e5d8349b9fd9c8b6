import ArgumentParser
import Dispatch
import FoundationEssentials
import LicenseCore
import SimpleJSON
import Synchronization

/// `license-agent-bench fleet`: a fleet of SVMs whose code-mode keys all expire at one
/// instant, renewed against a simulated activation server, in simulated time. Every SVM's
/// decisions are the core's own (`LicenseEngine.timeReached`, `activationSucceeded`,
/// `activationFailed`, `nextWake`: the code the daemon runs, not a copy), with its own state
/// (its own state id, hence its own draw) and its own random jitter; only the server, the
/// network and the clock are simulated.
struct Fleet: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract:
      "Simulated fleet renewing at once: peak requests/s at the server and lapses, at expiry vs ahead (C6).",
    discussion: """
      N SVMs hold code-mode keys that expire at the same instant (keys bought together). \
      The simulated server answers at most --capacity requests per second (503 beyond, as an \
      overloaded server does), is down (connection refused) for --outage around \
      --outage-centre (relative to the expiry), and opens the next period --opens-before the \
      expiry (not_yet_available before). Both strategies run on the same scenario: renewal at \
      expiry (renew-before = "0s", C2–C4) and renewal ahead (C6). For each: the requests, the \
      peak per second and per minute at the server, the SVMs whose licence lapsed and for how \
      long, the MANUAL_ACTIVATION_REQUIRED alerts, and the seconds the simulation took.
      """)

  @Option(help: "SVMs in the fleet.") var svms = 100_000
  @Option(help: "Requests per second the server answers; the others get 503.") var capacity = 50
  @Option(help: "How long the server is down (\"0s\": never).") var outage = "24h"
  @Option(help: "The outage's centre, relative to the expiry (e.g. --outage-centre=-5d: inside the window).")
  var outageCentre = "0s"
  @Option(help: "From when before the expiry the server gives the next period.") var opensBefore = "30d"
  @Option(help: "C6's renew-before for the ahead strategy.") var renewBefore = "7d"
  @Option(help: "C6's renew-spread.") var renewSpread = "3d"
  @Option(help: "How long after the expiry the simulation runs.") var horizon = "3d"
  @Option(help: "at-expiry, ahead or both.") var strategy = "both"
  @Option(help: "Seed of the jitter (random when not given).") var seed: UInt64?
  @Flag(help: "Print one JSON object.") var json = false

  func run() throws {
    func span(_ text: String, _ name: String) throws -> TimeSpan {
      let negative = text.hasPrefix("-")
      guard let value = TimeSpan(negative ? String(text.dropFirst()) : text) else {
        throw ValidationError(
          "--\(name) must be a duration such as \"24h\", \"30m\" or \"-5d\", not \"\(text)\"")
      }
      return negative ? TimeSpan(microseconds: -value.microseconds) : value
    }
    guard svms > 0, capacity > 0 else { throw ValidationError("--svms and --capacity must be positive") }
    guard ["both", "at-expiry", "ahead"].contains(strategy) else {
      throw ValidationError("--strategy must be at-expiry, ahead or both")
    }
    let expiry = Timestamp(seconds: 1_900_000_000)
    let outageSpan = try span(outage, "outage")
    let centre = expiry + (try span(outageCentre, "outage-centre"))
    let scenario = FleetScenario(
      svms: svms, capacity: capacity, expiry: expiry,
      outage: (centre - TimeSpan(microseconds: outageSpan.microseconds / 2))..<(centre
        + TimeSpan(microseconds: outageSpan.microseconds - outageSpan.microseconds / 2)),
      opens: expiry - (try span(opensBefore, "opens-before")),
      horizon: expiry + (try span(horizon, "horizon")))
    let baseSeed = seed ?? UInt64.random(in: 0...UInt64.max)
    var simulations: [(String, FleetSimulation)] = []
    if strategy != "ahead" {
      simulations.append(
        (
          "at-expiry",
          FleetSimulation(
            scenario: scenario, renewBefore: .seconds(0), renewSpread: .seconds(0), seed: baseSeed)
        ))
    }
    if strategy != "at-expiry" {
      simulations.append(
        (
          "ahead",
          FleetSimulation(
            scenario: scenario, renewBefore: try span(renewBefore, "renew-before"),
            renewSpread: try span(renewSpread, "renew-spread"), seed: baseSeed)
        ))
    }
    // The strategies are independent runs: one per core.
    let outcomes = Mutex<[String: FleetOutcome]>([:])
    let runs = simulations
    DispatchQueue.concurrentPerform(iterations: runs.count) { index in
      var simulation = runs[index].1
      let outcome = simulation.run()
      outcomes.withLock { $0[runs[index].0] = outcome }
    }
    let finished = outcomes.withLock { $0 }
    let results: [(String, FleetOutcome)] = runs.map { run in (run.0, finished[run.0]!) }
    if json {
      var object: [String: JSONValue] = [
        "svms": .number(Double(svms)), "capacity": .number(Double(capacity)),
        "outageSeconds": .number(Double(outageSpan.microseconds / 1_000_000)),
        "outageCentre": .string(outageCentre), "opensBefore": .string(opensBefore),
        "seed": .string(String(baseSeed)),
      ]
      for (name, outcome) in results { object[name] = outcome.json }
      print(JSONValue.object(object).serialized)
      return
    }
    print(
      "fleet: \(svms) SVMs whose keys expire at one instant; server: \(capacity) requests/s, down \(outageSpan.microseconds == 0 ? "never" : "\(outageSpan.inWords) centred on expiry \(outageCentre)"); next period open \(opensBefore) before the expiry (seed \(baseSeed))"
    )
    func line(_ label: String, _ value: (FleetOutcome) -> String) {
      print(
        label.padding(toLength: 38, withPad: " ", startingAt: 0)
          + results.map { value($0.1).padding(toLength: 24, withPad: " ", startingAt: 0) }.joined())
    }
    print(
      "".padding(toLength: 38, withPad: " ", startingAt: 0)
        + results.map { $0.0.padding(toLength: 24, withPad: " ", startingAt: 0) }.joined())
    line("requests at the server", { String($0.requests) })
    line("peak rate, busiest minute (req/s)", { String(format: "%.2f", $0.peakPerMinuteRate) })
    line("busiest second (requests)", { String($0.peakPerSecond) })
    line("busiest second while up (arrivals)", { String($0.peakPerSecondUp) })
    line("SVMs whose licence lapsed", { String($0.lapsed) })
    line("  lapse p50", { $0.lapse(50) })
    line("  lapse p99", { $0.lapse(99) })
    line("  lapse max", { $0.lapse(100) })
    line("  still lapsed at the horizon", { String($0.stillLapsed) })
    line("SVMs alerted (MANUAL_ACTIVATION_...)", { String($0.alertedSVMs) })
    line("engine decisions", { String($0.decisions) })
    line("simulation time (s)", { String(format: "%.1f", $0.seconds) })
  }
}

/// The fleet and the world around it.
struct FleetScenario {
  var svms: Int
  var capacity: Int
  var expiry: Timestamp
  var outage: Range<Timestamp>
  var opens: Timestamp
  var horizon: Timestamp
}

/// What one strategy did to the server and to the licences.
struct FleetOutcome {
  var requests = 0
  var peakPerSecond = 0
  var peakPerMinuteRate = 0.0
  /// Peak per second while the server was up (what it had to answer).
  var peakPerSecondUp = 0
  var lapsed = 0
  /// Lapse durations in microseconds (an SVM still lapsed at the horizon counts to it).
  var lapses: [Int64] = []
  var stillLapsed = 0
  var alertedSVMs = 0
  var decisions = 0
  var seconds = 0.0

  func lapse(_ p: Int) -> String {
    lapses.isEmpty ? "-" : TimeSpan(microseconds: percentile(p)).inWords
  }

  var json: JSONValue {
    .object([
      "requests": .number(Double(requests)), "peakPerSecond": .number(Double(peakPerSecond)),
      "peakPerSecondWhileUp": .number(Double(peakPerSecondUp)),
      "peakPerMinuteRate": .number(peakPerMinuteRate), "lapsedSVMs": .number(Double(lapsed)),
      "stillLapsedAtHorizon": .number(Double(stillLapsed)),
      "lapseP50Seconds": .number(Double(percentile(50)) / 1e6),
      "lapseP99Seconds": .number(Double(percentile(99)) / 1e6),
      "lapseMaxSeconds": .number(Double(lapses.last ?? 0) / 1e6),
      "alertedSVMs": .number(Double(alertedSVMs)), "decisions": .number(Double(decisions)),
      "seconds": .number(seconds),
    ])
  }

  func percentile(_ p: Int) -> Int64 {
    guard !lapses.isEmpty else { return 0 }
    return lapses[min(lapses.count - 1, max(0, (lapses.count * p + 99) / 100 - 1))]
  }
}

/// One run: every SVM's state, a queue of their next instants, and the simulated server.
struct FleetSimulation {
  let scenario: FleetScenario
  let engine: LicenseEngine
  let current: String
  let next: String
  let code = ActivationCode("FLEET-00000-SIMUL-ATION")!
  var random: SplitMix64

  init(scenario: FleetScenario, renewBefore: TimeSpan, renewSpread: TimeSpan, seed: UInt64) {
    self.scenario = scenario
    let issuer = JWK.generate(kid: "fleet")
    // The agent's defaults, but no EXPIRING_SOON thresholds: warnings change no request.
    engine = LicenseEngine(
      configuration: EngineConfiguration(
        warningThresholds: [], renewBefore: renewBefore, renewSpread: renewSpread),
      trust: TrustStore([JWK(kid: issuer.kid, publicKey: issuer.publicKey)]))
    func key(_ serial: String, nbf: Timestamp, exp: Timestamp) -> String {
      let claims = LicenseClaims(
        issuer: issuer.kid, serial: serial, issuedAt: Timestamp(seconds: nbf.microseconds / 1_000_000),
        notBefore: nbf, expiresAt: exp, product: EngineConfiguration.defaultProduct, edition: .enterprise,
        scheme: .vmCount, osType: .server, licenseType: .subscription, units: 25)
      return try! KeyParser.sign(claims, with: issuer)
    }
    // Every SVM holds its own copy of the same period's key (its state, draw and jitter are
    // its own); the server's next period starts at the expiry, so one key serves requests
    // made ahead and at or after the expiry alike.
    current = key("FLEET-1", nbf: scenario.expiry - .days(365), exp: scenario.expiry)
    next = key("FLEET-2", nbf: scenario.expiry, exp: scenario.expiry + .days(365))
    random = SplitMix64(seed: seed)
  }

  mutating func run() -> FleetOutcome {
    let started = ContinuousClock.now
    var outcome = FleetOutcome()
    let start = scenario.expiry - .days(10)
    let template = engine.addKey(current, role: .active, code: code, now: start, state: LicenseState()).state
    var states: [LicenseState] = []
    states.reserveCapacity(scenario.svms)
    var queue = WakeQueue()
    var scheduled = [Int64](repeating: .max, count: scenario.svms)
    var lapseStart = [Int64?](repeating: nil, count: scenario.svms)
    var alerted = [Bool](repeating: false, count: scenario.svms)
    var perSecond: [Int64: Int] = [:]
    var servedPerSecond: [Int64: Int] = [:]

    /// The SVM's next instant: the wake its last decision planned (what the agent arms its
    /// timer with).
    func schedule(_ index: Int, _ wake: Wake?) {
      guard let wake, wake.at <= scenario.horizon else {
        scheduled[index] = .max
        return
      }
      scheduled[index] = wake.at.microseconds
      queue.push(wake.at.microseconds, Int32(index))
    }

    for index in 0..<scenario.svms {
      var state = template.acknowledging(through: template.lastTransitionID)
      state.stateID = "svm-\(index)"
      // Drawn for this SVM by its first decision.
      if case .held(var held)? = state[.server], held.ahead != nil {
        held.successor = .none
        state[.server] = .held(held)
      }
      states.append(state)
    }

    /// The simulated server's answer at `now`.
    func serve(_ request: ActivationRequest, at now: Timestamp) -> ActivationOutcome {
      outcome.requests += 1
      let second = now.microseconds / 1_000_000
      perSecond[second, default: 0] += 1
      if scenario.outage.contains(now) {
        return .failure(.transient(error: "network: connection refused", retryAfter: nil))
      }
      servedPerSecond[second, default: 0] += 1
      if servedPerSecond[second]! > scenario.capacity {
        return .failure(.transient(error: "http_503", retryAfter: nil))
      }
      if request.kind.isAhead && now < scenario.opens {
        return .failure(
          .notYetAvailable(retryAfter: TimeSpan(microseconds: scenario.opens.microseconds(since: now))))
      }
      return .key(next)
    }

    /// Carries out a decision for SVM `index` at `now`: the requests it makes are answered
    /// at once by the simulated server and their outcomes decided in turn.
    @discardableResult
    func apply(_ decision: Decision<TimeProcessed>, _ index: Int, _ now: Timestamp) -> Wake? {
      outcome.decisions += 1
      let state = decision.state.acknowledging(through: decision.state.lastTransitionID)
      if decision.events.contains(where: { $0.kind == .manualActivationRequired }) { alerted[index] = true }
      if state[.server]?.active == nil {
        if lapseStart[index] == nil { lapseStart[index] = scenario.expiry.microseconds }
      } else if let from = lapseStart[index] {
        outcome.lapses.append(now.microseconds - from)
        lapseStart[index] = nil
      }
      states[index] = state
      for case .activate(let request) in decision.actions {
        let result = engine.activationFinished(
          request, outcome: serve(request, at: now),
          jitter: Double(random.next() >> 11) / Double(UInt64(1) << 53), now: now,
          state: states[index])
        apply(result, index, now)
      }
      return engine.nextWake(states[index])
    }

    for index in 0..<scenario.svms {
      schedule(index, apply(engine.timeReached(now: start, state: states[index]), index, start))
    }
    while let (at, index32) = queue.pop() {
      let index = Int(index32)
      guard scheduled[index] == at else { continue }  // superseded
      let now = Timestamp(microseconds: at)
      schedule(index, apply(engine.timeReached(now: now, state: states[index]), index, now))
    }
    for index in 0..<scenario.svms where lapseStart[index] != nil {
      outcome.stillLapsed += 1
      outcome.lapses.append(scenario.horizon.microseconds - lapseStart[index]!)
    }
    outcome.lapsed = outcome.lapses.count
    outcome.lapses.sort()
    outcome.alertedSVMs = alerted.filter { $0 }.count
    outcome.peakPerSecond = perSecond.values.max() ?? 0
    outcome.peakPerSecondUp = servedPerSecond.values.max() ?? 0
    var perMinute: [Int64: Int] = [:]
    for (second, count) in perSecond { perMinute[second / 60, default: 0] += count }
    outcome.peakPerMinuteRate = Double(perMinute.values.max() ?? 0) / 60
    let elapsed = ContinuousClock.now - started
    outcome.seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    return outcome
  }
}

/// A binary min-heap of (instant, SVM): the simulation's event queue.
struct WakeQueue {
  private var heap: [(Int64, Int32)] = []

  mutating func push(_ at: Int64, _ index: Int32) {
    heap.append((at, index))
    var child = heap.count - 1
    while child > 0 {
      let parent = (child - 1) / 2
      guard heap[child].0 < heap[parent].0 else { break }
      heap.swapAt(child, parent)
      child = parent
    }
  }

  mutating func pop() -> (Int64, Int32)? {
    guard let first = heap.first else { return nil }
    let last = heap.removeLast()
    if !heap.isEmpty {
      heap[0] = last
      var parent = 0
      while true {
        let left = 2 * parent + 1
        let right = left + 1
        var smallest = parent
        if left < heap.count && heap[left].0 < heap[smallest].0 { smallest = left }
        if right < heap.count && heap[right].0 < heap[smallest].0 { smallest = right }
        if smallest == parent { break }
        heap.swapAt(parent, smallest)
        parent = smallest
      }
    }
    return first
  }
}
