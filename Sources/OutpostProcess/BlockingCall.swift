// Synchronous callers (the builder's steps, `outpost run`) wait for
// swift-subprocess's async API here, without borrowing a thread from Swift's
// cooperative pool.

import Dispatch
import Synchronization

/// Runs the jobs of one task on the thread that waits for it.
///
/// Why not `Task {}` and a semaphore: a synchronous test body already runs on
/// one of the cooperative pool's threads (two on this machine). Two such tests
/// each blocking a pool thread while their subprocess work waits for a free
/// pool thread never finish. With this executor preferred, the task and every
/// child task it starts run on the waiting thread itself, so the wait never
/// depends on the pool.
final class CallerThreadExecutor: TaskExecutor {
    private struct Queue {
        var jobs: [UnownedJob] = []
        var finished = false
    }
    private let queue = Mutex(Queue())
    private let wake = DispatchSemaphore(value: 0)

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        queue.withLock { $0.jobs.append(job) }
        wake.signal()
    }

    /// Runs queued jobs until `finish()` is called and the queue is empty.
    func drain() {
        while true {
            wake.wait()
            let next: UnownedJob?? = queue.withLock { q in
                if !q.jobs.isEmpty { return .some(q.jobs.removeFirst()) }
                return q.finished ? .none : .some(nil)
            }
            switch next {
            case .none: return
            case .some(nil): continue
            case .some(let job?): job.runSynchronously(on: asUnownedTaskExecutor())
            }
        }
    }

    func finish() {
        queue.withLock { $0.finished = true }
        wake.signal()
    }
}

/// Waits for `work` on the calling thread, which runs the work itself.
func blockingCall<T: Sendable>(_ work: @escaping @Sendable () async throws -> T) throws -> T {
    let executor = CallerThreadExecutor()
    let outcome = Mutex<Result<T, any Error>?>(nil)
    Task(executorPreference: executor) {
        let result: Result<T, any Error>
        do { result = .success(try await work()) } catch { result = .failure(error) }
        outcome.withLock { $0 = result }
        executor.finish()
    }
    executor.drain()
    // `finish()` runs only after the outcome is stored, so it is never nil here.
    return try (outcome.withLock { $0 } ?? .failure(HostProcessError.launch(command: "task", message: "ended without a result"))).get()
}
