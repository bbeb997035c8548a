// The concurrency the network manager needs, over pthreads and FoundationEssentials only:
// every component here blocks in poll(2) on a socket, so each gets a dedicated thread
// rather than a task on the cooperative pool, and a hung probe cannot starve the others.
#if canImport(Glibc)
import Glibc
#endif

/// A value guarded by a pthread mutex; the mutex has its own allocation so it never moves.
final class Guarded<State>: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private var state: State

    init(_ state: State) {
        self.state = state
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    func withLock<T, E: Error>(_ body: (inout State) throws(E) -> T) throws(E) -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&state)
    }
}

/// A joinable pthread running one closure; `join()` waits for it to return.
final class WorkerThread: @unchecked Sendable {
    private var thread = pthread_t()
    private var joined = false
    let name: String

    /// Starts `body` at once; throws when the system refuses another thread.
    init(name: String, _ body: @escaping @Sendable () -> Void) throws(NetlinkError) {
        self.name = name
        let box = Unmanaged.passRetained(ClosureBox(body)).toOpaque()
        let rc = pthread_create(&thread, nil, { raw in
            guard let raw else { return nil }
            let work = Unmanaged<ClosureBox>.fromOpaque(raw).takeRetainedValue()
            work.body()
            return nil
        }, box)
        guard rc == 0 else {
            Unmanaged<ClosureBox>.fromOpaque(box).release()
            throw .system(call: "pthread_create", target: name, errno: rc)
        }
    }

    func join() {
        guard !joined else { return }
        joined = true
        pthread_join(thread, nil)
    }

    private final class ClosureBox {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }
}

/// Sleeps the calling thread; `nanosleep` restarts after a signal with the time left.
func sleepThread(_ duration: Duration) {
    guard duration > .zero else { return }
    var request = timespec(tv_sec: Int(duration.components.seconds),
                           tv_nsec: Int(duration.components.attoseconds / 1_000_000_000))
    var remaining = timespec()
    while nanosleep(&request, &remaining) != 0 && errno == EINTR { request = remaining }
}

/// Milliseconds for poll(2), rounded up so a wait never ends early; at least 1 ms, at most a day.
func pollMilliseconds(_ duration: Duration) -> Int32 {
    let ms = duration.components.seconds * 1000 + (duration.components.attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000
    return Int32(clamping: max(1, min(ms, 86_400_000)))
}

/// Repeats a system call interrupted by a signal; the agent installs handlers, so EINTR is routine.
@inline(__always)
func retryingEINTR<T: BinaryInteger>(_ call: () -> T) -> T {
    while true {
        let r = call()
        if r < 0 && errno == EINTR { continue }
        return r
    }
}

/// The text of an errno value, for one-line errors.
func errnoText(_ code: Int32) -> String { String(cString: strerror(code)) }

/// A non-blocking, close-on-exec pipe that wakes a thread sleeping in poll(2).
/// (pipe2 is declared only under _GNU_SOURCE, which Swift's Glibc module lacks.)
func makeWakePipe(for owner: String) throws(NetlinkError) -> [Int32] {
    var fds: [Int32] = [-1, -1]
    guard pipe(&fds) == 0 else { throw .system(call: "pipe", target: owner, errno: errno) }
    for fd in fds {
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
    }
    return fds
}
