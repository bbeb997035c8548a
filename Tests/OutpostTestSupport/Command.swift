import Foundation

/// Why a test helper could not do its job, in one line.
public enum TestSupportError: Error, CustomStringConvertible {
    case spawn(command: String, reason: String)
    case failed(command: String, status: Int32, output: String)
    case timedOut(what: String, after: Duration)
    case pki(step: String, output: String)

    public var description: String {
        switch self {
        case let .spawn(command, reason): "cannot start \(command): \(reason)"
        case let .failed(command, status, output):
            "\(command) exited \(status): \(output.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: "\n").suffix(3).joined(separator: " | "))"
        case let .timedOut(what, after): "\(what): not within \(after)"
        case let .pki(step, output): "test PKI: \(step): \(output)"
        }
    }
}

/// What a finished command left behind.
public struct CommandResult: Sendable {
    /// The exit code, or 128 + the signal that ended the command.
    public var status: Int32
    public var stdout: String
    public var stderr: String
    /// Both streams, stdout first: for checks that do not care which one a tool used.
    public var output: String { stdout + stderr }
}

/// Runs `argv` to the end and captures stdout, stderr and the exit status. argv[0] is found on
/// PATH (plus /usr/sbin:/sbin); `environment` adds to or overrides the test's environment.
/// Past `timeout` the command is killed by its PID and this throws, so a hung tool fails the
/// test in one line instead of hanging the suite.
public func runCommand(_ argv: [String], environment: [String: String] = [:],
                       timeout: Duration = .seconds(600)) throws -> CommandResult {
    let command = argv.joined(separator: " ")
    let child = try ChildProcess(argv, environment: environment, withInput: false, captureOutput: true)
    var captured: [Int32: [UInt8]] = [:]
    var open = [child.output, child.errors].compactMap { $0 }
    defer { open.forEach { _ = close($0) } }
    let deadline = ContinuousClock.now + timeout
    var exitedAt: ContinuousClock.Instant?
    var buffer = [UInt8](repeating: 0, count: 65536)
    while !open.isEmpty {
        let now = ContinuousClock.now
        if now > deadline {
            child.kill()
            throw TestSupportError.timedOut(what: command, after: timeout)
        }
        // A daemon the command started may keep the pipes open after the command itself has
        // exited; read on briefly for what the command wrote, then stop.
        if exitedAt == nil, !child.isRunning { exitedAt = now }
        if let exitedAt, exitedAt.duration(to: now) > .seconds(2) { break }
        var fds = open.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        let ready = poll(&fds, nfds_t(fds.count), 50)
        if ready < 0 && errno != EINTR { break }
        for entry in fds where entry.revents != 0 {
            let n = read(entry.fd, &buffer, buffer.count)
            if n > 0 {
                captured[entry.fd, default: []] += buffer[0..<n]
            } else if n == 0 || (errno != EINTR && errno != EAGAIN) {
                close(entry.fd)
                open.removeAll { $0 == entry.fd }
            }
        }
    }
    guard let status = child.wait(max(.milliseconds(100), ContinuousClock.now.duration(to: deadline))) else {
        child.kill()
        throw TestSupportError.timedOut(what: command, after: timeout)
    }
    return CommandResult(status: status,
                         stdout: String(decoding: child.output.flatMap { captured[$0] } ?? [], as: UTF8.self),
                         stderr: String(decoding: child.errors.flatMap { captured[$0] } ?? [], as: UTF8.self))
}

/// Runs a command that must succeed and returns what it printed (stdout, then stderr);
/// a non-zero exit throws with the command and the end of its output.
@discardableResult
public func sh(_ argv: String..., timeout: Duration = .seconds(600)) throws -> String {
    try sh(argv, timeout: timeout)
}

/// `sh` with the arguments as an array, for argv built up in code.
@discardableResult
public func sh(_ argv: [String], timeout: Duration = .seconds(600)) throws -> String {
    let result = try runCommand(argv, timeout: timeout)
    guard result.status == 0 else {
        throw TestSupportError.failed(command: argv.joined(separator: " "), status: result.status, output: result.output)
    }
    return result.output
}
