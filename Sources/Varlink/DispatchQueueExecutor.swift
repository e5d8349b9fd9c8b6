import Dispatch

/// The serial executor of actors whose state lives on one serial Dispatch queue.
///
/// The agent's state, its control server and the Dispatch sources that drive them (timers,
/// the clock watch, sockets) all run on one queue. An actor with this executor makes the
/// compiler check that confinement: its state is reached only from code isolated to it,
/// async callers hop onto the queue without blocking a thread, and a Dispatch handler that
/// runs on the queue enters the actor with `assumeIsolated`, which checks at run time that
/// it really is on the queue (``checkIsolated()``) instead of trusting a comment.
public final class DispatchQueueExecutor: SerialExecutor {
  public let queue: DispatchQueue

  public init(queue: DispatchQueue) { self.queue = queue }

  public func enqueue(_ job: consuming ExecutorJob) {
    let job = UnownedJob(job)
    queue.async { job.runSynchronously(on: self.asUnownedSerialExecutor()) }
  }

  /// Called by `assumeIsolated` when the current thread is not running one of this
  /// executor's jobs (a Dispatch handler on the queue): traps unless on the queue.
  public func checkIsolated() {
    dispatchPrecondition(condition: .onQueue(queue))
  }
}
