// What PID 1 does once the system is up (until the supervisor lands): reap
// orphans, and turn SIGTERM/SIGINT/SIGPWR into an orderly power-off.
//
// Signals are blocked and taken synchronously with sigwaitinfo(2): no signal
// handler ever runs, so nothing async-signal-unsafe can happen in one.

#if canImport(Glibc)
import Glibc
#endif
import OutpostShims

public enum InitProcess {
    /// The signals PID 1 waits for. SIGCHLD keeps its default disposition
    /// (never SIG_IGN, which would lose exit statuses) but is blocked.
    static let handled: [Int32] = [SIGCHLD, SIGTERM, SIGINT, SIGPWR, SIGHUP]

    /// Blocks the handled signals. Call first thing in main, before any child
    /// exists, so that no SIGCHLD or SIGTERM can be lost.
    public static func blockSignals() {
        var set = signalSet()
        sigprocmask(SIG_BLOCK, &set, nil)
        // Ctrl-Alt-Del then sends SIGINT to PID 1 instead of an instant reboot.
        _ = OutpostShims_reboot(Int32(OutpostShims_RebootDisableCAD))
    }

    /// The PID 1 loop. Returns never: it ends in power-off.
    public static func run(persistMount: String?) -> Never {
        var set = signalSet()
        while true {
            let signal = sigwaitinfo(&set, nil)
            switch signal {
            case SIGCHLD:
                reapAll()
            case SIGTERM, SIGINT, SIGPWR:
                Console.line("stopping: signal \(signal), powering off")
                shutdown(persistMount: persistMount, powerOff: true)
            default:
                continue // EINTR, SIGHUP: nothing to do yet
            }
        }
    }

    /// Collects every exited child without blocking.
    static func reapAll() {
        var status: Int32 = 0
        while waitpid(-1, &status, WNOHANG) > 0 {}
    }

    /// Stops all other processes, flushes and unmounts PERSIST, then powers
    /// off or reboots. Unmount failures fall back to a read-only remount so
    /// the ext4 journal is clean either way.
    public static func shutdown(persistMount: String?, powerOff: Bool) -> Never {
        _ = kill(-1, SIGTERM)
        let deadline = Sys.monotonicMilliseconds() + 3000
        while Sys.monotonicMilliseconds() < deadline {
            reapAll()
            if kill(-1, 0) != 0 && errno == ESRCH { break }
            Sys.sleep(milliseconds: 100)
        }
        _ = kill(-1, SIGKILL)
        reapAll()
        sync()
        if let persistMount {
            do {
                try Sys.unmount(persistMount)
            } catch {
                _ = mount(nil, persistMount, nil, UInt(MS_REMOUNT | MS_RDONLY), nil)
            }
        }
        sync()
        _ = OutpostShims_reboot(Int32(powerOff ? OutpostShims_RebootPowerOff : OutpostShims_RebootRestart))
        // Only reached when not PID 1 or without CAP_SYS_BOOT (tests).
        exit(1)
    }

    private static func signalSet() -> sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        for signal in handled { sigaddset(&set, signal) }
        return set
    }
}
