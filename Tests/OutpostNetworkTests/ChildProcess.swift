import Foundation

/// A child started with posix_spawn and reaped with waitpid by its own PID. The harness uses
/// this rather than Foundation's Process for long-lived children, whose exit Process notices
/// late (its run-loop monitor), which made every teardown wait out its timeouts.
final class ChildProcess: @unchecked Sendable {
    let pid: pid_t
    /// The write end of the child's stdin, when it was asked for.
    let input: Int32?
    private var reaped = false

    init(_ arguments: [String], withInput: Bool = false) throws {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        var fds: [Int32] = [-1, -1]
        if withInput {
            guard pipe(&fds) == 0 else { throw HarnessError.command("pipe: \(errno)") }
            posix_spawn_file_actions_adddup2(&actions, fds[0], 0)
            posix_spawn_file_actions_addclose(&actions, fds[1])
        } else {
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        }
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        // The test runner blocks some signals; a child must start with none blocked and default
        // handlers, or SIGTERM at teardown would be ignored.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        let argv = arguments.map { strdup($0) } + [nil]
        defer { for p in argv { free(p) } }
        var child: pid_t = 0
        let rc = posix_spawnp(&child, arguments[0], &actions, &attributes, argv, environ)
        if withInput { close(fds[0]) }
        guard rc == 0 else {
            if withInput { close(fds[1]) }
            throw HarnessError.command("posix_spawn \(arguments[0]): \(String(cString: strerror(rc)))")
        }
        pid = child
        input = withInput ? fds[1] : nil
    }

    var isRunning: Bool {
        guard !reaped else { return false }
        var status: Int32 = 0
        let r = waitpid(pid, &status, WNOHANG)
        // ECHILD: someone else in this process (Foundation's own monitor) reaped it already.
        if r == pid || (r < 0 && errno == ECHILD) { reaped = true }
        return !reaped
    }

    func write(_ text: String) throws {
        guard let input else { throw HarnessError.command("no stdin for \(pid)") }
        let bytes = Array(text.utf8)
        guard Glibc.write(input, bytes, bytes.count) == bytes.count else { throw HarnessError.command("write to \(pid): \(errno)") }
    }

    /// Waits (bounded) for the child to exit and returns its exit status, or nil on timeout.
    func wait(_ limit: Duration) -> Int32? {
        let deadline = ContinuousClock.now + limit
        while ContinuousClock.now < deadline {
            var status: Int32 = 0
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid { reaped = true; return (status >> 8) & 0xFF }
            if r < 0 { reaped = true; return errno == ECHILD ? 0 : -1 }
            usleep(5_000)
        }
        return nil
    }

    /// SIGTERM, a bounded wait, then SIGKILL; always reaps.
    func terminate() {
        if let input { close(input) }
        guard isRunning else { return }
        kill(pid, SIGTERM)
        let deadline = ContinuousClock.now + .seconds(3)
        while isRunning && ContinuousClock.now < deadline { usleep(10_000) }
        if isRunning {
            kill(pid, SIGKILL)
            var status: Int32 = 0
            _ = waitpid(pid, &status, 0)
            reaped = true
        }
    }
}

/// True while `pid` exists and is not a zombie; for daemons that are not our children.
func processAlive(_ pid: pid_t) -> Bool {
    guard kill(pid, 0) == 0 else { return false }
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = stat.lastIndex(of: ")") else { return false }
    return !stat[stat.index(after: close)...].hasPrefix(" Z")
}
