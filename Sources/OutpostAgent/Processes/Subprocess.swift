// Runs a helper program (mke2fs, resize2fs, tune2fs) to completion from
// PID 1. Starting and waiting go through the one Reaper (Reaper.swift
// beside this file), like every other child of outpostd; this side only turns
// the exit into a typed error a console line can show.

#if canImport(Glibc)
import Glibc
#endif
import OutpostPlatform

/// A helper program that could not run or did not succeed.
public enum SubprocessError: Error, Equatable, CustomStringConvertible {
    case notFound(path: String)
    case spawnFailed(path: String, SystemError)
    case exited(path: String, status: Int32)
    case killed(path: String, signal: Int32)
    case timedOut(path: String, seconds: Int64)

    public var description: String {
        switch self {
        case .notFound(let path): return "\(path) is missing from the root filesystem"
        case .spawnFailed(let path, let error): return "cannot start \(path): \(error)"
        case .exited(let path, let status): return "\(path) exited with status \(status)"
        case .killed(let path, let signal): return "\(path) was killed by signal \(signal)"
        case .timedOut(let path, let seconds): return "\(path) did not finish within \(seconds) s and was killed"
        }
    }
}

public enum Subprocess {
    /// The bound on one helper run. Early boot has no watchdog yet, so this is
    /// what stops a wedged mke2fs from hanging the boot forever; formatting or
    /// growing PERSIST on the largest supported disk takes well under it.
    public static let defaultTimeout = Duration.seconds(30 * 60)

    /// The path of a root-filesystem tool: /usr/sbin (merged-/usr Debian)
    /// or /sbin (bookworm packages unpacked without usrmerge).
    public static func tool(_ name: String) -> String {
        let merged = "/usr/sbin/\(name)"
        return Sys.exists(merged) ? merged : "/sbin/\(name)"
    }

    /// Runs `path` with `arguments` (argv[1...]), optionally feeding `input`
    /// on standard input, and waits for it through `reaper`.
    public static func run(_ path: String, _ arguments: [String], input: String? = nil,
                           timeout: Duration = defaultTimeout, reaper: Reaper = .shared) throws(SubprocessError) {
        guard Sys.exists(path) else { throw .notFound(path: path) }
        var stdinFD: Int32 = -1
        if let input {
            // A pipe holds 64 KiB; the scripts fed here are a few bytes.
            var fds: [Int32] = [-1, -1]
            // Early boot is single-threaded, so pipe + FD_CLOEXEC cannot race an exec.
            do {
                try systemCall("pipe", path) { pipe(&fds) }
            } catch {
                throw .spawnFailed(path: path, error)
            }
            _ = fcntl(fds[0], F_SETFD, FD_CLOEXEC)
            _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
            do {
                try FileIO.writeAll(fds[1], Array(input.utf8), object: "pipe to \(path)")
            } catch {
                _ = close(fds[0])
                _ = close(fds[1])
                throw .spawnFailed(path: path, error)
            }
            _ = close(fds[1])
            stdinFD = fds[0]
        }
        defer { if stdinFD >= 0 { _ = close(stdinFD) } }

        let exit: ChildExit?
        do {
            exit = try reaper.run(path, arguments, standardInput: stdinFD, timeout: timeout)
        } catch {
            throw .spawnFailed(path: path, error)
        }
        switch exit {
        case nil: throw .timedOut(path: path, seconds: timeout.components.seconds)
        case .exited(0)?: return
        case .exited(let code)?: throw .exited(path: path, status: code)
        case .signaled(let signal)?: throw .killed(path: path, signal: signal)
        }
    }
}
