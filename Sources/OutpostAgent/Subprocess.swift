// Runs a helper program (mke2fs, sfdisk) to completion from PID 1.
//
// fork+exec happens in the C shim (only async-signal-safe calls in the
// child); this side only prepares argv and waits for that one child.

#if canImport(Glibc)
import Glibc
#endif
import OutpostShims
import OutpostPlatform

/// A helper program that could not run or did not succeed.
public enum SubprocessError: Error, Equatable, CustomStringConvertible {
    case notFound(path: String)
    case spawnFailed(path: String, SystemError)
    case exited(path: String, status: Int32)
    case killed(path: String, signal: Int32)

    public var description: String {
        switch self {
        case .notFound(let path): return "\(path) is missing from the root filesystem"
        case .spawnFailed(let path, let error): return "cannot start \(path): \(error)"
        case .exited(let path, let status): return "\(path) exited with status \(status)"
        case .killed(let path, let signal): return "\(path) was killed by signal \(signal)"
        }
    }
}

public enum Subprocess {
    static let environment = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"]

    /// The path of a root-filesystem tool: /usr/sbin (merged-/usr Debian)
    /// or /sbin (bookworm packages unpacked without usrmerge).
    public static func tool(_ name: String) -> String {
        let merged = "/usr/sbin/\(name)"
        return Sys.exists(merged) ? merged : "/sbin/\(name)"
    }

    /// Runs `path` with `arguments` (argv[1...]), optionally feeding `input`
    /// on standard input, and waits for it.
    public static func run(_ path: String, _ arguments: [String], input: String? = nil) throws(SubprocessError) {
        guard Sys.exists(path) else { throw .notFound(path: path) }
        var stdinFD: Int32 = -1
        if let input {
            // A pipe holds 64 KiB; the scripts fed here are a few bytes.
            var fds: [Int32] = [-1, -1]
            // Early boot is single-threaded, so pipe + FD_CLOEXEC cannot race an exec.
            guard pipe(&fds) == 0 else {
                throw .spawnFailed(path: path, SystemError(call: "pipe", object: path, code: errno))
            }
            _ = fcntl(fds[0], F_SETFD, FD_CLOEXEC)
            _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
            do {
                try Sys.writeAll(fds[1], Array(input.utf8), target: "pipe to \(path)")
            } catch {
                Sys.close(fds[0]); Sys.close(fds[1])
                throw .spawnFailed(path: path, error)
            }
            Sys.close(fds[1])
            stdinFD = fds[0]
        }
        defer { if stdinFD >= 0 { Sys.close(stdinFD) } }

        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup($0) } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid: pid_t = 0
        let spawned = argv.withUnsafeBufferPointer { argvBuffer in
            envp.withUnsafeBufferPointer { envpBuffer in
                OutpostShims_spawn(path, argvBuffer.baseAddress, envpBuffer.baseAddress, stdinFD, &pid)
            }
        }
        guard spawned == 0 else {
            throw .spawnFailed(path: path, SystemError(call: "fork", object: path, code: errno))
        }
        var status: Int32 = 0
        do throws(SystemError) { try systemCall("waitpid", path) { waitpid(pid, &status, 0) } } catch {
            throw .spawnFailed(path: path, error)
        }
        let signal = status & 0x7f
        if signal != 0 { throw .killed(path: path, signal: signal) }
        let code = (status >> 8) & 0xff
        if code != 0 { throw .exited(path: path, status: code) }
    }
}
