import Foundation

/// A child started with posix_spawn and reaped with waitpid by its own PID. Tests use this
/// rather than Foundation's Process: Process notices a long-lived child's exit late (its
/// run-loop monitor), which made every teardown wait out its timeouts, and it cannot say
/// which PID it will kill.
public final class ChildProcess: @unchecked Sendable {
    // @unchecked: `reaped` is only touched by the test that owns the child, one thread at a time.
    public let pid: pid_t
    /// The write end of the child's stdin, when it was asked for.
    public let input: Int32?
    /// The read ends of the child's stdout and stderr, when they were asked for (`runCommand`).
    let output: Int32?
    let errors: Int32?
    /// The exit status, once reaped; whoever reaps first (isRunning, wait, kill) records it.
    private var exitStatus: Int32?
    private var reaped: Bool { exitStatus != nil }
    private var inputClosed = false

    /// Starts `arguments` (argv[0] found on PATH plus /usr/sbin:/sbin) with a clean signal
    /// state; stdout and stderr go to /dev/null unless `captureOutput`.
    public convenience init(_ arguments: [String], withInput: Bool = false) throws {
        try self.init(arguments, environment: [:], withInput: withInput, captureOutput: false)
    }

    init(_ arguments: [String], environment: [String: String], withInput: Bool, captureOutput: Bool) throws {
        guard let program = arguments.first else { throw TestSupportError.spawn(command: "", reason: "no program") }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        var opened: [Int32] = []
        func makePipe() throws -> (read: Int32, write: Int32) {
            var fds: [Int32] = [-1, -1]
            // Close-on-exec, so no child (this one or a parallel test's) inherits the parent's ends.
            guard pipe(&fds) == 0, fcntl(fds[0], F_SETFD, FD_CLOEXEC) == 0, fcntl(fds[1], F_SETFD, FD_CLOEXEC) == 0 else {
                let e = errno
                opened.forEach { _ = close($0) }
                throw TestSupportError.spawn(command: program, reason: "pipe: \(String(cString: strerror(e)))")
            }
            opened += fds
            return (fds[0], fds[1])
        }
        let stdinPipe = withInput ? try makePipe() : nil
        let stdoutPipe = captureOutput ? try makePipe() : nil
        let stderrPipe = captureOutput ? try makePipe() : nil
        if let stdinPipe { posix_spawn_file_actions_adddup2(&actions, stdinPipe.read, 0) } else {
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        }
        if let stdoutPipe { posix_spawn_file_actions_adddup2(&actions, stdoutPipe.write, 1) } else {
            posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        }
        if let stderrPipe { posix_spawn_file_actions_adddup2(&actions, stderrPipe.write, 2) } else {
            posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        }
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

        var variables = ProcessInfo.processInfo.environment
        variables["PATH"] = Self.searchPath(variables["PATH"])
        for (key, value) in environment { variables[key] = value }
        let executable = Self.resolve(program, path: variables["PATH"] ?? "")
        let argv = arguments.map { strdup($0) } + [nil]
        let envp = variables.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for p in argv + envp { free(p) } }
        var child: pid_t = 0
        let rc = posix_spawn(&child, executable, &actions, &attributes, argv, envp)
        // The child holds its own copies now; keep only the parent's ends.
        for end in [stdinPipe?.read, stdoutPipe?.write, stderrPipe?.write].compactMap({ $0 }) { close(end) }
        guard rc == 0 else {
            for end in [stdinPipe?.write, stdoutPipe?.read, stderrPipe?.read].compactMap({ $0 }) { close(end) }
            throw TestSupportError.spawn(command: program, reason: String(cString: strerror(rc)))
        }
        pid = child
        input = stdinPipe?.write
        output = stdoutPipe?.read
        errors = stderrPipe?.read
    }

    /// PATH with /usr/sbin and /sbin added: the tools tests drive (ip, sgdisk, veritysetup,
    /// mkfs) live there, and a non-root PATH often leaves them out.
    static func searchPath(_ path: String?) -> String {
        var parts = (path ?? "/usr/local/bin:/usr/bin:/bin").split(separator: ":").map(String.init)
        for extra in ["/usr/sbin", "/sbin"] where !parts.contains(extra) { parts.append(extra) }
        return parts.joined(separator: ":")
    }

    static func resolve(_ program: String, path: String) -> String {
        guard !program.contains("/") else { return program }
        for dir in path.split(separator: ":") where access("\(dir)/\(program)", X_OK) == 0 { return "\(dir)/\(program)" }
        return program
    }

    /// The exit status as a shell reports it: the exit code, or 128 + the signal that ended it.
    static func exitCode(_ status: Int32) -> Int32 {
        status & 0x7F == 0 ? (status >> 8) & 0xFF : 128 + (status & 0x7F)
    }

    public var isRunning: Bool {
        guard !reaped else { return false }
        var status: Int32 = 0
        let r = waitpid(pid, &status, WNOHANG)
        if r == pid { exitStatus = Self.exitCode(status) }
        // ECHILD: someone else in this process reaped it already; its status is lost.
        if r < 0 && errno == ECHILD { exitStatus = -1 }
        return !reaped
    }

    /// Writes `text` to the child's stdin (needs `withInput`).
    public func write(_ text: String) throws {
        guard let input, !inputClosed else { throw TestSupportError.spawn(command: "pid \(pid)", reason: "no stdin to write to") }
        let bytes = Array(text.utf8)
        var done = 0
        while done < bytes.count {
            let n = bytes[done...].withUnsafeBytes { Glibc.write(input, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw TestSupportError.spawn(command: "pid \(pid)", reason: "write to stdin: \(String(cString: strerror(errno)))") }
            done += n
        }
    }

    /// Waits (bounded) for the child to exit and returns its exit status, or nil on timeout.
    public func wait(_ limit: Duration) -> Int32? {
        let deadline = ContinuousClock.now + limit
        repeat {
            if !isRunning { return exitStatus }
            usleep(5_000)
        } while ContinuousClock.now < deadline
        return isRunning ? nil : exitStatus
    }

    /// SIGTERM, a bounded wait, then SIGKILL; always reaps.
    public func terminate(grace: Duration = .seconds(3)) {
        if let input, !inputClosed { close(input); inputClosed = true }
        guard isRunning else { return }
        _ = Glibc.kill(pid, SIGTERM)
        let deadline = ContinuousClock.now + grace
        while isRunning && ContinuousClock.now < deadline { usleep(10_000) }
        if isRunning { kill() }
    }

    /// SIGKILL by PID and reap.
    public func kill() {
        guard isRunning else { return }
        _ = Glibc.kill(pid, SIGKILL)
        var status: Int32 = 0
        var r: pid_t
        repeat { r = waitpid(pid, &status, 0) } while r < 0 && errno == EINTR
        exitStatus = r == pid ? Self.exitCode(status) : -1
    }
}

/// True while `pid` exists and is not a zombie; for daemons that are not our children.
public func processAlive(_ pid: pid_t) -> Bool {
    guard kill(pid, 0) == 0 else { return false }
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = stat.lastIndex(of: ")") else { return false }
    return !stat[stat.index(after: close)...].hasPrefix(" Z")
}
