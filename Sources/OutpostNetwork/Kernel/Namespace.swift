import CNetlink
#if canImport(Glibc)
import Glibc
#endif
import OutpostPlatform
import Synchronization

/// Runs work inside a named network namespace (`/run/netns/NAME`, as `ip netns add` makes).
/// setns(CLONE_NEWNET) changes only the calling thread, so each call gets its own thread and
/// the caller's namespace is never touched. Sockets opened there stay in that namespace.
public enum NetworkNamespace {
    /// Moves the calling thread into `name`; for threads that live their whole life there.
    public static func enter(_ name: String) throws(NetlinkError) {
        let path = "/run/netns/" + name
        do throws(SystemError) {
            let fd = try systemCall("open", path) { open(path, O_RDONLY | O_CLOEXEC) }
            defer { close(fd) }
            try systemCall("setns", path) { setns(fd, OutpostNetlink_CLONE_NEWNET) }
        } catch {
            throw .system(error)
        }
    }

    /// Runs `body` on a fresh thread inside `name` (or here, when `name` is nil) and returns its result.
    public static func run<T: Sendable>(_ name: String?, _ body: @escaping @Sendable () throws -> T) throws -> T {
        guard let name else { return try body() }
        let box = ResultBox<T>()
        let thread: NamedThread
        do throws(SystemError) {
            thread = try NamedThread.start(name: "netns \(name)") {
                let result = Result { () throws -> T in
                    try enter(name)
                    return try body()
                }
                box.result.withLock { $0 = result }
            }
        } catch {
            throw NetlinkError.system(error)
        }
        thread.join()
        guard let result = box.result.withLock({ $0 }) else {
            throw NetlinkError.system(SystemError(call: "thread", object: name, errno: .invalidArgument))
        }
        return try result.get()
    }
}

/// Hands a value from a worker thread to the joining thread.
final class ResultBox<T: Sendable>: Sendable {
    let result = Mutex<Result<T, any Error>?>(nil)
}
