import Dispatch

/// Runs Swift concurrency jobs on one serial Dispatch queue instead of the global concurrent
/// executor.
///
/// On Linux, libdispatch starts a workqueue monitor (a 1-second timer that never stops) the
/// first time any job runs on a global, non-overcommit queue, which is where Swift
/// concurrency's default executor runs tasks. An idle agent must not wake up between events
/// (rule T2), so the daemon runs its service group with this executor as the task executor
/// preference (SE-0417): every task of the group runs on the agent's own serial queue,
/// which, like any queue made with `DispatchQueue(label:)`, never starts that monitor.
public final class QueueTaskExecutor: TaskExecutor {
  public let queue: DispatchQueue

  public init(queue: DispatchQueue) { self.queue = queue }

  public func enqueue(_ job: consuming ExecutorJob) {
    let unowned = UnownedJob(job)
    queue.async { unowned.runSynchronously(on: self.asUnownedTaskExecutor()) }
  }
}
