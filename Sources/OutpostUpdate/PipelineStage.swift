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

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

final class PipelineStage: @unchecked Sendable {
    typealias Work = (UInt64, [UInt8]) throws(UpdateError) -> Void

    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let changed = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    // Guarded by `mutex`.
    private var queue: [(lba: UInt64, bytes: [UInt8])] = []
    private var closed = false
    private var failure: UpdateError?
    private let depth: Int
    private let work: Work
    private var thread: pthread_t?

    /// Starts the stage's thread; `work` runs on it, one chunk at a time.
    init(depth: Int = 2, work: @escaping Work) throws(UpdateError) {
        self.depth = max(1, depth)
        self.work = work
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(changed, nil)
        var t = pthread_t()
        let rc = pthread_create(&t, nil, { raw in
            guard let raw else { return nil }
            Unmanaged<PipelineStage>.fromOpaque(raw).takeRetainedValue().drain()
            return nil
        }, Unmanaged.passRetained(self).toOpaque())
        guard rc == 0 else {
            Unmanaged.passUnretained(self).release()
            throw .deviceOther(phase: "starting a pipeline thread", offset: 0, reason: String(cString: strerror(rc)))
        }
        thread = t
    }

    deinit {
        pthread_cond_destroy(changed)
        pthread_mutex_destroy(mutex)
        changed.deallocate()
        mutex.deallocate()
    }

    /// Queues one chunk, waiting while `depth` chunks are in flight. Throws
    /// the stage's failure as soon as there is one.
    func submit(lba: UInt64, bytes: [UInt8]) throws(UpdateError) {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        while queue.count >= depth && failure == nil { pthread_cond_wait(changed, mutex) }
        if let failure { throw failure }
        queue.append((lba, bytes))
        pthread_cond_broadcast(changed)
    }

    /// Waits until every queued chunk is done (or the first failure) and
    /// joins the stage's thread.
    func finish() throws(UpdateError) {
        pthread_mutex_lock(mutex)
        closed = true
        pthread_cond_broadcast(changed)
        pthread_mutex_unlock(mutex)
        if let thread { pthread_join(thread, nil) }
        thread = nil
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        if let failure { throw failure }
    }

    private func drain() {
        while true {
            pthread_mutex_lock(mutex)
            while queue.isEmpty && !closed { pthread_cond_wait(changed, mutex) }
            guard !queue.isEmpty, failure == nil else {
                pthread_mutex_unlock(mutex)
                return
            }
            let next = queue[0]
            pthread_mutex_unlock(mutex)

            var error: UpdateError?
            do { try work(next.lba, next.bytes) } catch let e { error = e }

            pthread_mutex_lock(mutex)
            queue.removeFirst()
            if let error {
                failure = error
                queue.removeAll()
            }
            pthread_cond_broadcast(changed)
            pthread_mutex_unlock(mutex)
            if error != nil { return }
        }
    }
}
