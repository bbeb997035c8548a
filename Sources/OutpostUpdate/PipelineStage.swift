// One stage of the write pass's pipeline: a thread that takes chunks in
// order from a bounded queue. The engine chains two, so reading chunk n+2,
// hashing chunk n+1 and writing chunk n (O_DIRECT) overlap, and the pass runs
// at close to the slower of disk and SHA-256 instead of at their sum.
//
//   engine thread: read ─ submit ─┐ read ─ submit ─┐
//   hash stage:                   └─ hash ─ submit ─┴─ hash ─ submit ─┐
//   write stage:                            └─ write ──────────────────┴─ write
//
// Chunks stay in submission order and each queue is bounded (memory: depth
// chunks per stage). The first failure stops the stage; later chunks are
// dropped, never handled out of order, and the failure is what the engine
// throws, so a torn slot is never marked bootable.

import OutpostPlatform
import Synchronization

// @unchecked: `work` is not Sendable. It captures the engine's block device
// and payload digest, which only this stage's thread touches while the
// stage runs: the engine thread only submits and finishes. All other shared
// state is in `state`, a Mutex.
final class PipelineStage: @unchecked Sendable {
    typealias Work = (UInt64, [UInt8]) throws(UpdateError) -> Void

    private struct State {
        var queue: [(lba: UInt64, bytes: [UInt8])] = []
        var closed = false
        var failure: UpdateError?
    }

    private enum Step {
        case work(lba: UInt64, bytes: [UInt8])
        case wait
        case stop
    }

    private let state = Mutex(State())
    /// Wakes the stage's thread: a chunk was queued or the stage was closed.
    private let queued: Wakeup
    /// Wakes the submitter: a chunk was done (room in the queue) or failed.
    private let drained: Wakeup
    private let depth: Int
    private let work: Work
    private let thread = Mutex<NamedThread?>(nil)

    /// Starts the stage's thread; `work` runs on it, one chunk at a time.
    init(name: String = "update-stage", depth: Int = 2, work: @escaping Work) throws(UpdateError) {
        self.depth = max(1, depth)
        self.work = work
        do throws(SystemError) {
            queued = try Wakeup(label: name)
            drained = try Wakeup(label: name)
            let started = try NamedThread.start(name: name) { [self] in drain() }
            thread.withLock { $0 = started }
        } catch {
            throw .deviceOther(phase: "starting a pipeline thread", offset: 0, reason: error.description)
        }
    }

    /// Queues one chunk, waiting while `depth` chunks are in flight. Throws
    /// the stage's failure as soon as there is one.
    func submit(lba: UInt64, bytes: [UInt8]) throws(UpdateError) {
        while true {
            let accepted: Result<Bool, UpdateError> = state.withLock { state in
                if let failure = state.failure { return .failure(failure) }
                guard state.queue.count < depth else { return .success(false) }
                state.queue.append((lba, bytes))
                return .success(true)
            }
            switch accepted {
            case .failure(let failure): throw failure
            case .success(true):
                queued.signal()
                return
            case .success(false):
                drained.wait()
            }
        }
    }

    /// Waits until every queued chunk is done (or the first failure) and
    /// joins the stage's thread.
    func finish() throws(UpdateError) {
        state.withLock { $0.closed = true }
        queued.signal()
        thread.withLock { $0 }?.join()
        if let failure = state.withLock({ $0.failure }) { throw failure }
    }

    private func drain() {
        while true {
            let step: Step = state.withLock { state in
                if state.failure != nil { return .stop }
                if let next = state.queue.first { return .work(lba: next.lba, bytes: next.bytes) }
                return state.closed ? .stop : .wait
            }
            switch step {
            case .stop: return
            case .wait: queued.wait()
            case let .work(lba, bytes):
                var error: UpdateError?
                do throws(UpdateError) { try work(lba, bytes) } catch let e { error = e }
                state.withLock { state in
                    state.queue.removeFirst()
                    if let error {
                        state.failure = error
                        state.queue.removeAll()
                    }
                }
                drained.signal()
                if error != nil { return }
            }
        }
    }
}
