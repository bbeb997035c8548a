// outpostd's command line when it is not PID 1: `outpostd status [--json]`
// asks the running PID 1 over the control socket. Debug images also have
// `outpostd debug ...`, the helper programs fault injection runs.

#if canImport(Glibc)
import Glibc
#endif
import OutpostPlatform

public enum AgentCommand {
    static let usage = """
        usage: outpostd status [--json]
          Ask the running outpostd (PID 1) for uptime, slot, version, the last boot's
          reason, component states and restart counts, and the watchdog in use.
          --json   machine-readable output

        usage: outpostd update apply FILE|URL [--ca PEM]... [--force] [--no-reboot]
          Verify a signed bundle (before anything is written), write it to the
          inactive slot, read it back, mark the slot `updating` and restart into it.
          URL is http:// or https://; an interrupted download resumes where it
          stopped. HTTPS trusts the --ca files, else /config/root-ca.pem,
          and the system store.
          --force  install a version that failed before

        usage: outpostd update status [--json]
          Slots and their states, the committed version, the security floor, the
          version in flight, failed versions and the last result with its reason.

        outpostd runs early boot and supervision only as PID 1 (/init).

        """

    /// Runs a command and returns the exit code: 0 ok, 1 failure, 2 usage.
    public static func main(_ arguments: [String]) -> Int32 {
        switch Array(arguments.dropFirst()) {
        case ["status"]: return status(json: false)
        case ["status", "--json"]: return status(json: true)
        case let words where words.first == "update": return UpdateCommand.main(Array(words.dropFirst()))
        case ["-h"], ["--help"], ["help"], ["status", "--help"]:
            write(1, usage)
            return 0
        #if DEBUG || OUTPOST_FAULT_INJECTION
        case let words where words.first == "debug": return debug(Array(words.dropFirst()))
        #endif
        default:
            write(2, "outpostd: unknown command '\(arguments.dropFirst().joined(separator: " "))'\n" + usage)
            return 2
        }
    }

    static func status(json: Bool) -> Int32 {
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

    static func write(_ fd: Int32, _ text: String) {
        try? Sys.writeAll(fd, Array(text.utf8), target: fd == 1 ? "stdout" : "stderr")
    }

    #if DEBUG || OUTPOST_FAULT_INJECTION
    /// Helpers for fault scripts: `sleep S`, `exit CODE`, `orphans N` (starts
    /// N children that outlive this process, so PID 1 inherits them).
    static func debug(_ words: [String]) -> Int32 {
        switch (words.first, words.dropFirst().first.flatMap { Int($0) }) {
        case ("sleep", let seconds?):
            MonotonicClock.sleep(for: .milliseconds(seconds * 1000))
            return 0
        case ("exit", let code?):
            return Int32(truncatingIfNeeded: code)
        case ("orphans", let count?):
            var pids: [String] = []
            for _ in 0..<count {
                let words: [String] = ["/sbin/outpostd", "debug", "sleep", "2"]
                let argv = words.map { strdup($0) } + [nil]
                defer { argv.forEach { free($0) } }
                var pid: pid_t = 0
                let envp: [UnsafeMutablePointer<CChar>?] = [nil]
                if OutpostShims_spawn("/sbin/outpostd", argv, envp, -1, &pid) == 0 { pids.append(String(pid)) }
            }
            Console.line("debug: orphans: started \(pids.count) pids=\(pids.joined(separator: ","))")
            return pids.count == count ? 0 : 1
        default:
            write(2, "outpostd: debug: expected sleep S | exit CODE | orphans N\n")
            return 2
        }
    }
    #endif
}

import OutpostShims
