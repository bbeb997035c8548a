// PID 1's one and only wait(2) loop. Every child outpostd starts is
// subscribed to *before* it can exit: `spawn` holds the lock from before
// fork until the pid is registered, and `reapAll` looks a reaped pid up
// under the same lock, so even a child that exits at once is matched.
// Anything reaped without a subscription is an orphan the kernel re-parented
// to PID 1 (a grandchild whose parent died); it is collected and counted so
// no zombie stays behind. SIGCHLD is blocked and waited for, never SIG_IGN:
// ignoring it would make the kernel discard exit statuses.

#if canImport(Glibc)
import Glibc
#endif
import OutpostShims
import OutpostPlatform
import Synchronization

/// How a child ended, decoded from the wait status.
public enum ChildExit: Sendable, Equatable, CustomStringConvertible {
    case exited(Int32)
    case signaled(Int32)

    init(waitStatus status: Int32) {
        let signal = status & 0x7f
        self = signal == 0 ? .exited((status >> 8) & 0xff) : .signaled(signal)
    }

    public var succeeded: Bool { self == .exited(0) }

    public var description: String {
        switch self {
        case .exited(let code): return "exited with status \(code)"
        case .signaled(let signal): return "killed by signal \(signal)"
        }
    }
}

public final class Reaper: Sendable {
    private struct State {
        var subscribers: [pid_t: @Sendable (ChildExit) -> Void] = [:]
        var orphansReaped = 0
    }
    private let state = Mutex(State())
    static let environment = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"]

    public init() {}

    /// Orphans collected so far (for status and the zombie test).
    public var orphansReaped: Int { state.withLock { $0.orphansReaped } }

    /// The pids with a live subscription (the supervisor's helper processes).
    public var subscribedPIDs: [pid_t] { state.withLock { Array($0.subscribers.keys) } }

    /// Starts `path` with its output on PID 1's console and calls `onExit`
    /// (on the reaping thread) when it ends.
    @discardableResult
    public func spawn(_ path: String, _ arguments: [String],
                      onExit: @escaping @Sendable (ChildExit) -> Void) throws(SystemError) -> pid_t {
        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        let envp = Reaper.environment.map { strdup($0) } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        return try state.withLock { (state: inout State) throws(SystemError) -> pid_t in
            var pid: pid_t = 0
            let result = argv.withUnsafeBufferPointer { argvBuffer in
                envp.withUnsafeBufferPointer { envpBuffer in
                    OutpostShims_spawn(path, argvBuffer.baseAddress, envpBuffer.baseAddress, -1, &pid)
                }
            }
            guard result == 0 else { throw SystemError(call: "fork", object: path, code: errno) }
            state.subscribers[pid] = onExit
            return pid
        }
    }

    /// Collects every child that has ended, without blocking. Call on SIGCHLD.
    public func reapAll() {
        while true {
            var status: Int32 = 0
            // ECHILD (no children left) and any other error end the round like "none ended".
            guard let pid = try? systemCall("waitpid", "any child", { waitpid(-1, &status, WNOHANG) }), pid > 0 else { return }
            let subscriber = state.withLock { (state: inout State) -> (@Sendable (ChildExit) -> Void)? in
                guard let subscriber = state.subscribers.removeValue(forKey: pid) else {
                    state.orphansReaped += 1
                    return nil
                }
                return subscriber
            }
            subscriber?(ChildExit(waitStatus: status))
        }
    }
}
