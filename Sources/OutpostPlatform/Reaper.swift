// The device's one child/exit model: every child outpostd starts is started
// here (fork/exec in the C shim, so the child makes only async-signal-safe
// calls), and this file holds the only waitpid(2) in the agent. It lives in
// OutpostPlatform so the app runner (OutpostApps) starts and reaps its QEMU
// processes through the same reaper as the supervisor's children.
//
// A child is subscribed to *before* it can exit: `spawn` holds the lock from
// before fork until the pid is registered, and `reapAll` looks a reaped pid
// up under the same lock, so even a child that exits at once is matched.
// As PID 1 the reaper collects every child (waitpid(-1)); anything reaped
// without a subscription is an orphan the kernel re-parented to PID 1 (a
// grandchild whose parent died), collected and counted so no zombie stays.
// In any other process (a client command, a test) it waits only for the
// children it started, so it never steals another runner's exit status.
// SIGCHLD is blocked and waited for by PID 1, never SIG_IGN: ignoring it
// would make the kernel discard exit statuses.

#if canImport(Glibc)
import Glibc
#endif
import OutpostShims
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

/// Starts children and hands each one's exit to whoever subscribed before it started.
public final class Reaper: Sendable {
    /// Which children `reapAll` collects.
    public enum Scope: Sendable {
        /// Every child, orphans included: PID 1, where re-parented grandchildren land.
        case everyChild
        /// Only children started through this reaper: any other process.
        case ownChildren
    }

    private struct State {
        var subscribers: [pid_t: @Sendable (ChildExit) -> Void] = [:]
        var orphansReaped = 0
    }

    /// The process's reaper. There must be one per process: two reapers
    /// calling waitpid(-1) would take each other's children.
    public static let shared = Reaper(scope: getpid() == 1 ? .everyChild : .ownChildren)

    static let environment = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"]
    /// How often a waiting `run` looks for its child's exit when no other
    /// thread reaps (early boot, client commands) or the wake-up was missed.
    static let waitSlice = Duration.milliseconds(10)
    /// How long `run` waits for a child it killed at its timeout.
    static let killGrace = Duration.seconds(5)

    public let scope: Scope
    private let state = Mutex(State())

    public init(scope: Scope = .ownChildren) {
        self.scope = scope
    }

    /// Orphans collected so far (for status and the zombie test).
    public var orphansReaped: Int { state.withLock { $0.orphansReaped } }

    /// The pids with a live subscription (the supervisor's helper processes).
    public var subscribedPIDs: [pid_t] { state.withLock { Array($0.subscribers.keys) } }

    /// Starts `path` with its output on this process's stdout/stderr (PID 1's
    /// console) and calls `onExit` on the reaping thread when it ends.
    /// `standardInput`, `standardOutput` and `standardError` (or -1 to inherit) become the
    /// child's fd 0, 1 and 2.
    @discardableResult
    public func spawn(_ path: String, _ arguments: [String], standardInput: Int32 = -1, standardOutput: Int32 = -1,
                      standardError: Int32 = -1, onExit: @escaping @Sendable (ChildExit) -> Void) throws(SystemError) -> pid_t {
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
                    OutpostShims_spawn(path, argvBuffer.baseAddress, envpBuffer.baseAddress, standardInput, standardOutput, standardError, &pid)
                }
            }
            guard result == 0 else { throw SystemError.current("fork", path) }
            state.subscribers[pid] = onExit
            return pid
        }
    }

    /// Starts `path` and waits for it to end, at most `timeout`; a child still
    /// running then is killed (SIGKILL) and reported as `nil`. The waiting
    /// thread reaps by itself, so this works before the PID 1 loop runs and
    /// in processes that have none, and equally while that loop reaps.
    public func run(_ path: String, _ arguments: [String], standardInput: Int32 = -1, standardOutput: Int32 = -1,
                    standardError: Int32 = -1, timeout: Duration) throws(SystemError) -> ChildExit? {
        let ended = Mutex<ChildExit?>(nil)
        let pid = try spawn(path, arguments, standardInput: standardInput, standardOutput: standardOutput,
                            standardError: standardError) { exit in
            ended.withLock { $0 = exit }
        }
        let deadline = Deadline(after: timeout)
        var killedAt: Deadline?
        while true {
            reapAll()
            if let exit = ended.withLock({ $0 }) { return killedAt == nil ? exit : nil }
            if let killedAt, killedAt.hasPassed {
                // Not even SIGKILL ended it (a process in uninterruptible sleep):
                // stop waiting; PID 1 still reaps it as an orphan if it ever ends.
                state.withLock { _ = $0.subscribers.removeValue(forKey: pid) }
                return nil
            }
            if killedAt == nil && deadline.hasPassed {
                // The child is subscribed and not yet reaped, so the pid is still ours.
                _ = kill(pid, SIGKILL)
                killedAt = Deadline(after: Self.killGrace)
            }
            MonotonicClock.sleep(for: Self.waitSlice)
        }
    }

    /// Collects every child that has ended, without blocking. PID 1 calls it
    /// on SIGCHLD; `run` and the shutdown path call it while they wait.
    public func reapAll() {
        switch scope {
        case .everyChild:
            while let (pid, status) = waitAny() { deliver(pid: pid, status: status) }
        case .ownChildren:
            for pid in subscribedPIDs {
                if let status = wait(for: pid) { deliver(pid: pid, status: status) }
            }
        }
    }

    /// waitpid(-1, WNOHANG): the next ended child, or nil when none has ended
    /// (0) or there are no children at all (ECHILD).
    private func waitAny() -> (pid_t, Int32)? {
        var status: Int32 = 0
        guard let result = try? systemCall("waitpid", "any child", { waitpid(-1, &status, WNOHANG) }),
              result > 0 else { return nil }
        return (result, status)
    }

    /// waitpid(pid, WNOHANG) for one of this reaper's own children.
    private func wait(for pid: pid_t) -> Int32? {
        var status: Int32 = 0
        guard let result = try? systemCall("waitpid", "pid \(pid)", { waitpid(pid, &status, WNOHANG) }),
              result == pid else { return nil }
        return status
    }

    private func deliver(pid: pid_t, status: Int32) {
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
