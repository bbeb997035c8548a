import CNetlink
#if canImport(Glibc)
import Glibc
#endif

/// Runs work inside a named network namespace (`/run/netns/NAME`, as `ip netns add` makes).
/// setns(CLONE_NEWNET) changes only the calling thread, so each call gets its own thread and
/// the caller's namespace is never touched. Sockets opened there stay in that namespace.
public enum NetworkNamespace {
    /// Moves the calling thread into `name`; for threads that live their whole life there.
    public static func enter(_ name: String) throws(NetlinkError) {
        let path = "/run/netns/" + name
        let fd = retryingEINTR { open(path, O_RDONLY | O_CLOEXEC) }
        guard fd >= 0 else { throw .system(call: "open", target: path, errno: errno) }
        defer { close(fd) }
        guard setns(fd, OutpostNetlink_CLONE_NEWNET) == 0 else { throw .system(call: "setns", target: path, errno: errno) }
    }

    /// Runs `body` on a fresh thread inside `name` (or here, when `name` is nil) and returns its result.
    public static func run<T>(_ name: String?, _ body: @escaping @Sendable () throws -> T) throws -> T {
        guard let name else { return try body() }
        let box = ResultBox<T>()
        let thread = try WorkerThread(name: "netns \(name)") {
            do {
                try enter(name)
                box.result = .success(try body())
            } catch {
                box.result = .failure(error)
            }
        }
        thread.join()
        guard let result = box.result else { throw NetlinkError.system(call: "thread", target: name, errno: EINVAL) }
        return try result.get()
    }
}

/// Hands a value from a worker thread to the joining thread; pthread_join orders the accesses.
final class ResultBox<T>: @unchecked Sendable {
    var result: Result<T, any Error>?
}
