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

/// An actor that runs on a ``DispatchQueueExecutor``: its executor, its queue (where its
/// Dispatch sources deliver), and a blocking entry for synchronous code. The agent and its
/// control server are such actors, on one executor.
public protocol DispatchQueueActor: Actor {
  nonisolated var executor: DispatchQueueExecutor { get }
}

extension DispatchQueueActor {
  public nonisolated var queue: DispatchQueue { executor.queue }
  public nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }

  /// Runs `body` isolated to the actor, from synchronous code off its queue (start-up,
  /// tests): blocks until done. Never from the queue itself, nor from async code (which
  /// calls the actor's methods with `await` instead).
  public nonisolated func sync<T: Sendable>(_ body: (isolated Self) throws -> T) rethrows -> T {
    try queue.sync { try assumeIsolated(body) }
  }
}
