// The host's one way to start another program: the builder's tools (mkfs.*,
// mksquashfs, apt-get, qemu-img...), swtpm and QEMU for `outpost run`. Built on
// swift-subprocess. The device (outpostd) never links this: it has its own
// spawn and reaper in OutpostShims/OutpostAgent.

import Dispatch
import Subprocess
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// How a program ended.
public enum Termination: Sendable, Equatable, CustomStringConvertible {
    case exited(Int32)
    case signaled(Int32)

    public var succeeded: Bool { self == .exited(0) }

    /// What a shell would report: the exit code, or 128 + the signal number.
    public var shellStatus: Int32 {
        switch self {
        case .exited(let code): return code
        case .signaled(let signal): return 128 + signal
        }
    }

    public var description: String {
        switch self {
        case .exited(let code): return "exited with status \(code)"
        case .signaled(let signal): return "was killed by signal \(signal)"
        }
    }

    init(_ status: TerminationStatus) {
        switch status {
        case .exited(let code): self = .exited(code)
        case .signaled(let signal): self = .signaled(signal)
        }
    }
}

/// Why a program could not be run, or how it failed: always one line naming it.
public enum HostProcessError: Error, CustomStringConvertible, Equatable {
    case notFound(String)
    case launch(command: String, message: String)
    case failed(command: String, termination: Termination, stderr: String)

    public var description: String {
        switch self {
        case .notFound(let tool):
            return "required tool '\(tool)' not found in PATH (run ./build.sh to install it)"
        case .launch(let command, let message):
            return "cannot start \(command): \(message)"
        case .failed(let command, let termination, let stderr):
            let last = stderr.split(whereSeparator: \.isNewline).last { !$0.allSatisfy(\.isWhitespace) }
            return "\(command) \(termination)" + (last.map { ": \($0)" } ?? "")
        }
    }
}

/// Where a program's standard input comes from.
public enum StandardInput: Sendable {
    /// `/dev/null`.
    case null
    /// This process's own standard input (the terminal, or a script's pipe).
    case inherit
}

/// Where a program's standard output and error go.
public enum OutputMode: Sendable {
    /// `/dev/null`.
    case null
    /// This process's own standard output and error (the terminal).
    case inherit
    /// Both streams through one pipe (like `2>&1`), handed over chunk by chunk
    /// until the program closes them.
    case stream(@Sendable ([UInt8]) -> Void)
}

/// A program that `HostProcess.run` started, for signalling it from elsewhere
/// (a timeout, a signal handler) while `run` waits for it.
public final class RunningProcess: Sendable {
    public let pid: pid_t
    private let reaped = Atomic<Bool>(false)

    init(pid: pid_t) { self.pid = pid }

    /// False once `run` has collected the exit status; from then on the PID may
    /// belong to another process and is never signalled again.
    public var isRunning: Bool { !reaped.load(ordering: .acquiring) }

    func markReaped() { reaped.store(true, ordering: .releasing) }

    public func signal(_ signal: Int32) {
        guard isRunning else { return }
        kill(pid, signal)
    }

    /// SIGTERM now, SIGKILL after `grace` if it is still running. Never blocks:
    /// it may be called from the output handler, whose thread also collects
    /// the exit status.
    public func stop(grace: Duration = .seconds(2)) {
        signal(SIGTERM)
        let (seconds, attoseconds) = grace.components
        let delay = Double(seconds) + Double(attoseconds) / 1e18
        DispatchQueue.global().asyncAfter(deadline: .now() + delay) { [self] in signal(SIGKILL) }
    }
}

public enum HostProcess {
    /// Resolves a program name through PATH, also looking in the sbin
    /// directories that a non-root PATH often lacks.
    public static func which(_ name: String) -> String? {
        if name.contains("/") { return access(name, X_OK) == 0 ? name : nil }
        let path = getenv("PATH").map { String(cString: $0) } ?? ""
        let dirs = path.split(separator: ":").map(String.init) + ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        return dirs.map { $0 + "/" + name }.first { access($0, X_OK) == 0 }
    }

    /// Runs `argv` to completion with standard input from /dev/null and returns
    /// its standard output. A failure throws one line: the command, its exit
    /// status and the last line of its standard error. Blocks the calling
    /// thread (see `blockingCall` for which threads may call it).
    ///
    /// - Parameter environment: changes to the inherited environment; nil removes a variable.
    @discardableResult
    public static func output(_ argv: [String], environment: [String: String?] = [:],
                              directory: String? = nil) throws -> String {
        try blockingCall { try await output(argv, environment: environment, directory: directory) }
    }

    /// `output(_:environment:directory:)` for async callers.
    @discardableResult
    public static func output(_ argv: [String], environment: [String: String?] = [:],
                              directory: String? = nil) async throws -> String {
        let (executable, arguments) = try resolve(argv)
        let label = commandLabel(argv)
        let config = Configuration(executable: .path(FilePath(executable)), arguments: Arguments(arguments),
                                   environment: environmentChanges(environment),
                                   workingDirectory: directory.map { FilePath($0) })
        let result = try await launching(label) {
            try await Subprocess.run(config, input: .none, output: .sequence, error: .sequence) { execution in
                // Both pipes are drained at once so a chatty tool never blocks on a full one.
                async let stderrTail = tail(of: execution.standardError, keeping: 64 * 1024)
                var stdout: [UInt8] = []
                for try await chunk in execution.standardOutput {
                    chunk.withUnsafeBytes { stdout.append(contentsOf: $0) }
                }
                return (stdout, try await stderrTail)
            }
        }
        let (stdout, stderr) = result.closureResult
        let termination = Termination(result.terminationStatus)
        guard termination.succeeded else {
            throw HostProcessError.failed(command: label, termination: termination,
                                          stderr: String(decoding: stderr, as: UTF8.self))
        }
        return String(decoding: stdout, as: UTF8.self)
    }

    /// Runs `argv` until it exits and returns how it ended; `started` receives
    /// the running program at once (to stop it from a timer or signal handler).
    ///
    /// The program stays in this process's process group. That is what lets an
    /// interactive QEMU own the terminal: started from a shell, `outpost` is the
    /// terminal's foreground group, so the child is too, and the kernel lets it
    /// configure the terminal and read typed keys instead of stopping it with
    /// SIGTTOU/SIGTTIN (Foundation's `Process` moved children to a group of
    /// their own). Signal dispositions and the mask are reset to defaults in the
    /// child, so an ignored SIGINT here does not make QEMU ignore it.
    ///
    /// Blocks the calling thread (see `blockingCall` for which threads may call it).
    public static func run(_ argv: [String], environment: [String: String?] = [:], stdin: StandardInput = .null,
                           output: OutputMode, started: @escaping @Sendable (RunningProcess) -> Void = { _ in })
        throws -> Termination {
        try blockingCall { try await run(argv, environment: environment, stdin: stdin, output: output, started: started) }
    }

    /// `run(_:environment:stdin:output:started:)` for async callers.
    public static func run(_ argv: [String], environment: [String: String?] = [:], stdin: StandardInput = .null,
                           output: OutputMode, started: @escaping @Sendable (RunningProcess) -> Void = { _ in })
        async throws -> Termination {
        let (executable, arguments) = try resolve(argv)
        let label = commandLabel(argv)
        let config = Configuration(executable: .path(FilePath(executable)), arguments: Arguments(arguments),
                                   environment: environmentChanges(environment))
        switch stdin {
        case .null: return try await run(config, label, input: .none, output, started)
        case .inherit: return try await run(config, label, input: .currentStandardInput, output, started)
        }
    }

    private static func run<Input: InputProtocol>(
        _ config: Configuration, _ label: String, input: Input, _ output: OutputMode,
        _ started: @escaping @Sendable (RunningProcess) -> Void
    ) async throws -> Termination {
        let box = Mutex<RunningProcess?>(nil)
        func start(_ pid: ProcessIdentifier) {
            let process = RunningProcess(pid: pid.value)
            box.withLock { $0 = process }
            started(process)
        }
        defer { box.withLock { $0?.markReaped() } }
        switch output {
        case .null:
            let r = try await launching(label) {
                try await Subprocess.run(config, input: input, output: .discarded, error: .discarded) { start($0.processIdentifier) }
            }
            return Termination(r.terminationStatus)
        case .inherit:
            let r = try await launching(label) {
                try await Subprocess.run(config, input: input, output: .currentStandardOutput, error: .currentStandardError) {
                    start($0.processIdentifier)
                }
            }
            return Termination(r.terminationStatus)
        case .stream(let handler):
            let r = try await launching(label) {
                try await Subprocess.run(config, input: input, output: .sequence, error: .combinedWithOutput) { execution in
                    start(execution.processIdentifier)
                    for try await chunk in execution.standardOutput {
                        handler(chunk.withUnsafeBytes { Array($0) })
                    }
                }
            }
            return Termination(r.terminationStatus)
        }
    }

    /// Turns swift-subprocess's launch errors into one line naming the command.
    private static func launching<T>(_ label: String, _ body: () async throws -> T) async throws -> T {
        do { return try await body() } catch let error as SubprocessError {
            throw HostProcessError.launch(command: label, message: "\(error)")
        }
    }

    private static func tail(of sequence: SubprocessOutputSequence, keeping limit: Int) async throws -> [UInt8] {
        var kept: [UInt8] = []
        for try await chunk in sequence {
            chunk.withUnsafeBytes { kept.append(contentsOf: $0) }
            if kept.count > 2 * limit { kept.removeFirst(kept.count - limit) }
        }
        return kept.count > limit ? Array(kept.suffix(limit)) : kept
    }

    private static func resolve(_ argv: [String]) throws -> (String, [String]) {
        guard let name = argv.first else { throw HostProcessError.launch(command: "(nothing)", message: "empty command line") }
        guard let path = which(name) else { throw HostProcessError.notFound(name) }
        return (path, Array(argv.dropFirst()))
    }

    private static func environmentChanges(_ changes: [String: String?]) -> Environment {
        var updates: [Environment.Key: String?] = [:]
        for (name, value) in changes {
            if let key = Environment.Key(rawValue: name) { updates[key] = value }
        }
        return .inherit.updating(updates)
    }

    /// The command as an error names it: the full command line, shortened if long.
    static func commandLabel(_ argv: [String]) -> String {
        let line = argv.joined(separator: " ")
        return line.count <= 160 ? line : String(line.prefix(157)) + "..."
    }
}
