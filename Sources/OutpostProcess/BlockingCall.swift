// Synchronous callers (the builder's steps, `outpost run`) wait here for
// swift-subprocess's async API.

import Dispatch
import Synchronization

/// Runs `work` as a task and blocks the calling thread until it is done.
///
/// swift-subprocess needs threads of Swift's cooperative pool while a program
/// runs (it starts unstructured tasks for its cancellation handling), so the
/// waiting thread must not be the pool's last free one: call the synchronous
/// API from the main thread or a thread of your own (as `outpost` does), and
/// the async API from async code. Many synchronous calls at once from pool
/// threads (two on this machine) would wait for each other forever.
func blockingCall<T: Sendable>(_ work: @escaping @Sendable () async throws -> T) throws -> T {
    let outcome = Mutex<Result<T, any Error>?>(nil)
    let done = DispatchSemaphore(value: 0)
    Task {
        let result: Result<T, any Error>
        do { result = .success(try await work()) } catch { result = .failure(error) }
        outcome.withLock { $0 = result }
        done.signal()
    }
    done.wait()
    // The task stores its outcome before it signals, so it is never nil here.
    return try (outcome.withLock { $0 } ?? .failure(HostProcessError.launch(command: "task", message: "ended without a result"))).get()
}
