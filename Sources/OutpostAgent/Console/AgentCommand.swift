// What outpostd's client commands do when it is not PID 1. The command line
// itself (words, options, --help, usage errors) is parsed in the outpostd
// target with swift-argument-parser; each function here does one command's
// work, prints its output or one error line, and returns the exit code
// (0 ok, 1 failure), so the parser never has to know how PID 1 is reached.

#if canImport(Glibc)
import Glibc
#endif
import OutpostPlatform
import OutpostEarlyBoot

/// The client commands' work, callable from the argument parser in outpostd.
public enum AgentCommand {
    /// `outpostd status [--json]`: asks the running PID 1 over the control socket.
    public static func status(json: Bool) -> Int32 {
        do {
            let reply = try ControlSocket.request(json ? "status --json" : "status")
            guard !reply.isEmpty, !reply.hasPrefix("error:") else {
                write(2, "outpostd: status: PID 1 did not answer on \(ControlSocket.path) \(reply)\n")
                return 1
            }
            write(1, reply)
            return 0
        } catch {
            write(2, "outpostd: status: cannot reach PID 1: \(error)\n")
            return 1
        }
    }

    /// `outpostd update apply`: see `UpdateCommand.apply`.
    public static func updateApply(_ source: String, caFiles: [String], force: Bool, reboot: Bool) -> Int32 {
        UpdateCommand.apply(source, caFiles: caFiles, force: force, reboot: reboot)
    }

    /// `outpostd update status [--json]`: see `UpdateCommand.status`.
    public static func updateStatus(json: Bool) -> Int32 {
        UpdateCommand.status(json: json)
    }

    /// Best effort: a client whose stdout is gone has nobody to tell.
    public static func write(_ fd: Int32, _ text: String) {
        try? Sys.writeAll(fd, Array(text.utf8), target: fd == 1 ? "stdout" : "stderr")
    }

    #if DEBUG || OUTPOST_FAULT_INJECTION
    /// The helper programs fault scripts run (`outpostd debug ...`); compiled
    /// only into debug images, like FaultInjection.
    public enum Debug {
        /// `debug sleep S`: a helper that stays up for S seconds.
        public static func sleep(seconds: Int) -> Int32 {
            MonotonicClock.sleep(for: .seconds(seconds))
            return 0
        }

        /// `debug orphans N`: starts N children that outlive this process, so
        /// PID 1 inherits them and must reap them as orphans.
        public static func orphans(count: Int) -> Int32 {
            var pids: [String] = []
            for _ in 0..<count {
                // Subscribed like every child, but nobody waits: this process
                // exits at once, and PID 1 inherits the children as orphans.
                if let pid = try? Reaper.shared.spawn("/sbin/outpostd", ["debug", "sleep", "2"], onExit: { _ in }) {
                    pids.append(String(pid))
                }
            }
            Console.line("debug: orphans: started \(pids.count) pids=\(pids.joined(separator: ","))")
            return pids.count == count ? 0 : 1
        }
    }
    #endif
}
