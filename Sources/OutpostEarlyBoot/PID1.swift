// What makes a process PID 1 on Outpost, shared by early boot's binary
// (outpost-init, the initramfs's /init) and outpostd: the signals PID 1 takes
// synchronously, and the one stop path (stop every other process, flush and
// unmount PERSIST, then power off or reboot).

#if canImport(Glibc)
import Glibc
#endif
import OutpostShims
import OutpostPlatform

public enum PID1 {
    /// The signals PID 1 waits for. SIGCHLD keeps its default disposition
    /// (never SIG_IGN, which would lose exit statuses) but is blocked.
    /// SIGUSR2 is PID 1's own threads waking its loop (`wake`).
    static let handled: [Int32] = [SIGCHLD, SIGTERM, SIGINT, SIGPWR, SIGHUP, SIGUSR2]

    /// Wakes the PID 1 loop out of its wait (the supervisor has news: a shutdown
    /// request, a restart scheduled). Only as PID 1, where every thread blocks SIGUSR2.
    public static func wake() {
        if getpid() == 1 { _ = kill(1, SIGUSR2) }
    }

    /// Blocks the handled signals. Call first thing in main, before any child
    /// or thread exists, so that no SIGCHLD or SIGTERM can be lost and every
    /// thread inherits the mask (only the PID 1 loop takes them).
    public static func blockSignals() {
        var set = signalSet()
        sigprocmask(SIG_BLOCK, &set, nil)
        // Ctrl-Alt-Del then sends SIGINT to PID 1 instead of an instant reboot.
        _ = OutpostShims_reboot(Int32(OutpostShims_RebootDisableCAD))
    }

    /// Stops all other processes, flushes and unmounts PERSIST, runs
    /// `beforeReboot` (the watchdog's magic close), then powers off or
    /// reboots. Unmount failures fall back to a read-only remount so the ext4
    /// journal is clean either way.
    public static func shutdown(persistMount: String?, powerOff: Bool, reaper: Reaper = .shared,
                                beforeUnmount: () -> Void = {}, beforeReboot: () -> Void = {}) -> Never {
        _ = kill(-1, SIGTERM)
        let deadline = MonotonicClock.now().milliseconds + 3000
        while MonotonicClock.now().milliseconds < deadline {
            reaper.reapAll()
            if kill(-1, 0) != 0 && errno == ESRCH { break }
            MonotonicClock.sleep(for: .milliseconds(100))
        }
        _ = kill(-1, SIGKILL)
        reaper.reapAll()
        sync()
        beforeUnmount()
        if let persistMount {
            do {
                try Sys.unmount(persistMount)
            } catch {
                _ = mount(nil, persistMount, nil, UInt(MS_REMOUNT | MS_RDONLY), nil)
            }
        }
        sync()
        beforeReboot()
        Console.line(powerOff ? "halt: powering off" : "halt: rebooting")
        _ = OutpostShims_reboot(Int32(powerOff ? OutpostShims_RebootPowerOff : OutpostShims_RebootRestart))
        // Only reached when not PID 1 or without CAP_SYS_BOOT (tests).
        exit(1)
    }

    public static func signalSet() -> sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        for signal in handled { sigaddset(&set, signal) }
        return set
    }
}
