import Dispatch
import Glibc
import Logging

/// Publishes the metrics text file for node_exporter (contract §8): at most one write
/// pending for many changes, the text made by the agent from its state and written on a
/// queue of its own, so that a slow or failing disk never delays a promotion or a reply.
/// A value owned by the agent's actor.
struct MetricsPublisher {
  /// The file is written here (tests wait on it).
  let queue: DispatchQueue
  /// Where the metrics go: the configured textfile, unless its directory was missing.
  private(set) var file: String?
  /// A write is queued on the agent's queue (one for a burst of changes).
  private var pending = false
  private var failureLogged = false

  init(queue: DispatchQueue) { self.queue = queue }

  /// At start and on reload: a textfile whose directory does not exist (node_exporter not
  /// installed) is not written, and the agent says so once.
  mutating func configure(_ textfile: String?, logger: Logger) {
    file = nil
    failureLogged = false
    guard let path = textfile else { return }
    let directory = MetricsFile.directory(of: path)
    var info = stat()
    guard stat(directory, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR else {
      logger.notice(
        "Metrics are not written: their directory does not exist (install prometheus-node-exporter, or set [metrics] textfile, \"\" to turn this off)",
        metadata: ["directory": "\(directory)", "textfile": "\(path)"])
      return
    }
    file = path
  }

  /// Whether a write must be queued now (none is yet, and there is a file to write).
  mutating func needsWrite() -> Bool {
    guard file != nil, !pending else { return false }
    pending = true
    return true
  }

  /// Writes `text` on the metrics queue; `done` gets the result there.
  mutating func write(
    _ text: String, done: @escaping @Sendable (Result<Void, MetricsFile.WriteError>, String) -> Void
  ) {
    pending = false
    guard let path = file else { return }
    queue.async { done(MetricsFile.write(text, to: path), path) }
  }

  /// A failure is logged once, not on every change; once a write succeeds again, so is that.
  mutating func written(_ result: Result<Void, MetricsFile.WriteError>, path: String, logger: Logger) {
    switch result {
    case .success:
      if failureLogged {
        failureLogged = false
        logger.notice("Metrics are written again", metadata: ["textfile": "\(path)"])
      }
    case .failure(let error):
      guard !failureLogged else { return }
      failureLogged = true
      logger.warning(
        "Cannot write the metrics file; licensing goes on, and this is not logged again until a write succeeds",
        metadata: ["textfile": "\(path)", "error": "\(error.description)"])
    }
  }

  /// At stop: the file goes, so that monitoring sees the agent is down (the unit's
  /// ExecStopPost does the same after a crash). After a write under way, on the metrics
  /// queue; waited for at most a second, so that a stuck disk never holds the agent.
  mutating func remove() {
    guard let path = file else { return }
    file = nil
    let removed = DispatchSemaphore(value: 0)
    queue.async {
      MetricsFile.remove(path)
      removed.signal()
    }
    _ = removed.wait(timeout: .now() + 1)
  }
}
