// Runs a helper program (mke2fs, resize2fs, tune2fs) to completion from
// PID 1. Starting and waiting go through the one Reaper (Reaper.swift
// beside this file), like every other child of outpostd; this side only turns
// the exit into a typed error a console line can show. A helper's own output
// (tune2fs's and resize2fs's banners) goes to a memory file and reaches the
// console only when the helper fails: a healthy boot shows Outpost's lines.

#if canImport(Glibc)
import Glibc
#endif
import OutpostPlatform
import OutpostShims

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
    /// on standard input, and waits for it through `reaper`. Its standard
    /// output and error are kept in memory and written to this process's
    /// standard error (the console) only when it does not succeed.
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

        // Without a memory file (an old kernel), the output goes to the console as before.
        let output = OutpostShims_memfd("outpostd-helper-output")
        defer { if output >= 0 { _ = close(output) } }
        let exit: ChildExit?
        do {
            exit = try reaper.run(path, arguments, standardInput: stdinFD, standardOutput: output, standardError: output,
                                  timeout: timeout)
        } catch {
            throw .spawnFailed(path: path, error)
        }
        if exit != .exited(0) { showOutput(output, of: path) }
        switch exit {
        case nil: throw .timedOut(path: path, seconds: timeout.components.seconds)
        case .exited(0)?: return
        case .exited(let code)?: throw .exited(path: path, status: code)
        case .signaled(let signal)?: throw .killed(path: path, signal: signal)
        }
    }

    /// The last 8 KiB a failed helper wrote, on standard error, each line named by the helper.
    private static func showOutput(_ fd: Int32, of path: String) {
        guard fd >= 0 else { return }
        let size = lseek(fd, 0, SEEK_END)
        guard size > 0 else { return }
        let keep = min(Int(size), 8192)
        guard lseek(fd, off_t(Int(size) - keep), SEEK_SET) >= 0 else { return }
        var bytes = [UInt8](repeating: 0, count: keep)
        let count = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, keep) }
        guard count > 0 else { return }
        let name = path.split(separator: "/").last.map(String.init) ?? path
        let text = String(decoding: bytes[0..<count], as: UTF8.self)
        for line in text.split(whereSeparator: \.isNewline) {
            try? FileIO.writeAll(2, Array("\(name): \(line)\n".utf8), object: "standard error")
        }
    }
}
