import ArgumentParser
import Foundation
import Glibc
import LicenseCore
import SimpleJSON
import Varlink

/// `license-agent-bench monitor`: Monitor's subscribers (rule N1) against the promotion.
struct MonitorBench: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "monitor",
    abstract: "Promotion delay with 0, 10 and 100 Monitor subscribers, and their delivery latency.",
    discussion: """
      Runs the promotion benchmark three times, side by side: with no subscriber, with 10 \
      and with 100 Monitor subscribers (rule N1), a tenth of which (10 of 100) never read \
      (the agent drops them once they hold too much unread, and must not wait for them). For each run: the \
      promotion delay (exp to durable, LICENSE_DELAY_USEC) against the machine's limit \
      measured in the same window, and the delivery latency: from the instant the \
      promotion was durable (exp + LICENSE_DELAY_USEC) to a reading subscriber having read \
      its KEY_PROMOTED, beside the journal's own (to journald receiving the event, its \
      __REALTIME_TIMESTAMP), when the journal is used.
      """)

  @Option(help: "Promotions per run.")
  var keys = 60
  @Option(help: "Time between two expiries.")
  var spacing = "300ms"
  @Option(help: "The subscriber counts to compare, comma-separated.")
  var subscribers = "0,10,100"
  @Option(help: "The share of each run's subscribers that never read, in percent.")
  var stalledPercent = 10
  @Flag(help: "Print one JSON object.")
  var json = false
  @Option(help: "The license-agent to run (default: next to this program).")
  var agent: String?

  func run() throws {
    guard let step = TimeSpan(spacing), step.microseconds >= 50_000 else {
      throw ValidationError("--spacing must be a duration of at least 50ms")
    }
    let counts = subscribers.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
    guard !counts.isEmpty, counts.allSatisfy({ $0 >= 0 && $0 <= 110 }) else {
      throw ValidationError("--subscribers takes counts from 0 to 110, e.g. 0,10,100")
    }
    var rows: [JSONValue] = []
    if !json {
      print(
        "monitor: \(keys) promotions \(step) apart per run; \(stalledPercent) % of each run's subscribers never read"
      )
      print(
        "  subscribers  promotion p50/p99   limit p99  ratio   delivery p50/p99   journal p50/p99   dropped")
    }
    for count in counts {
      let stalled = count * min(max(stalledPercent, 0), 100) / 100
      let group = SubscriberGroup(reading: count - stalled, stalled: stalled)
      let result = try Promotion.measure(
        agentPath: agentExecutable(agent), keys: keys, step: step, metrics: true, attach: group.attach)
      group.stop()
      let delays = result.delays.values.sorted()
      let limit = result.limit.sorted()
      let p99 = percentile(delays, 99)
      let limitP99 = percentile(limit, 99)
      let ratio = limitP99 > 0 ? Double(p99) / Double(limitP99) : 0
      let durable = result.durableAt
      let delivery = group.deliveries.compactMap { serial, at in
        durable[serial].map { at.microseconds(since: $0) }
      }.sorted()
      let journal = result.journalReceived.compactMap { serial, at in
        durable[serial].map { at.microseconds(since: $0) }
      }.sorted()
      let row: [String: JSONValue] = [
        "subscribers": .number(Double(count)), "stalled": .number(Double(group.stalledCount)),
        "promotions": .number(Double(delays.count)),
        "p50_usec": .number(Double(percentile(delays, 50))), "p99_usec": .number(Double(p99)),
        "limit_p99_usec": .number(Double(limitP99)), "ratio_p99": .number((ratio * 100).rounded() / 100),
        "deliveries": .number(Double(delivery.count)),
        "delivery_p50_usec": .number(Double(percentile(delivery, 50))),
        "delivery_p99_usec": .number(Double(percentile(delivery, 99))),
        "journal_p50_usec": .number(Double(percentile(journal, 50))),
        "journal_p99_usec": .number(Double(percentile(journal, 99))),
        "dropped": .number(Double(group.droppedCount)),
      ]
      rows.append(.object(row))
      if !json {
        let deliveryText =
          delivery.isEmpty ? "-" : "\(percentile(delivery, 50))/\(percentile(delivery, 99)) µs"
        let journalText = journal.isEmpty ? "-" : "\(percentile(journal, 50))/\(percentile(journal, 99)) µs"
        print(
          "  \(pad(String(count), 11))  \(pad("\(percentile(delays, 50))/\(p99) µs", 17))  \(pad("\(limitP99) µs", 10))  "
            + "\(pad(String(format: "%.2f", ratio), 5))  \(pad(deliveryText, 17))  \(pad(journalText, 16))  "
            + "\(group.droppedCount)/\(group.stalledCount)")
      }
    }
    if json { print(JSONValue.object(["runs": .array(rows)]).serialized) }
  }

  private func pad(_ text: String, _ width: Int) -> String {
    String(repeating: " ", count: max(0, width - text.count)) + text
  }
}

/// Monitor subscribers of one run: some read every reply on threads of their own and note
/// when each KEY_PROMOTED arrived; the others subscribe and never read.
final class SubscriberGroup: @unchecked Sendable {
  let reading: Int
  let stalledCount: Int
  private let lock = NSLock()
  private var arrivals: [String: Timestamp] = [:]
  private var allArrivals: [(String, Timestamp)] = []
  private var stalledSockets: [Int32] = []
  private var threads = 0

  init(reading: Int, stalled: Int) {
    self.reading = reading
    self.stalledCount = stalled
  }

  /// Every (serial, instant read) of every reading subscriber.
  var deliveries: [(String, Timestamp)] { lock.withLock { allArrivals } }

  /// How many of the stalled subscribers the agent has closed (dropped).
  var droppedCount: Int {
    lock.withLock { stalledSockets }.filter { fd in
      var buffer = [UInt8](repeating: 0, count: 65536)
      // Drain without blocking: a closed connection ends with EOF after its last replies.
      while true {
        let count = recv(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT))
        if count == 0 { return true }
        if count < 0 { return false }
      }
    }.count
  }

  func attach(_ socket: String) throws {
    for _ in 0..<reading {
      let client = try VarlinkClient(path: socket, timeoutSeconds: 10, maximumReplySize: 1 << 20)
      guard case .success = try client.callMore("io.licenseagent.Agent.Monitor").reply else {
        throw BenchError(description: "Monitor was refused")
      }
      // The client moves to the thread that reads it, and is used there alone.
      nonisolated(unsafe) let owned = client
      Thread.detachNewThread { [self] in
        while let (reply, continues) = try? owned.next(waitingForever: true) {
          let at = now()
          if case .success(let parameters) = reply,
            let event = parameters["event"]?.objectValue,
            event["LICENSE_EVENT"]?.stringValue == "KEY_PROMOTED",
            let serial = event["LICENSE_SERIAL"]?.stringValue
          {
            lock.withLock { allArrivals.append((serial, at)) }
          }
          if !continues { break }
        }
      }
    }
    for _ in 0..<stalledCount {
      let fd = try Self.connect(socket)
      let call = #"{"method":"io.licenseagent.Agent.Monitor","parameters":{},"more":true}"# + "\0"
      _ = call.withCString { send(fd, $0, strlen($0) + 1, Int32(MSG_NOSIGNAL)) }
      lock.withLock { stalledSockets.append(fd) }
    }
  }

  func stop() {
    for fd in lock.withLock({ stalledSockets }) { close(fd) }
  }

  private static func connect(_ path: String) throws -> Int32 {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    var size: Int32 = 4096
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8) + [0]) }
    let connected = withUnsafePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
      }
    }
    guard connected == 0 else { throw BenchError(description: "cannot connect to \(path)") }
    return fd
  }
}
