// The hardware watchdog: the last line of defence when outpostd itself, or the
// kernel, stops making progress. Opening /dev/watchdogN starts it; from then on
// the machine resets unless it is fed every `timeout` seconds. Feeding is the
// supervisor's decision (Supervisor.feedVerdict); this type only talks to the
// device. An orderly shutdown writes the magic 'V' before closing, which is
// the only way the driver disarms (without it, closing leaves it running).

#if canImport(Glibc)
import Glibc
#endif
import OutpostShims
import OutpostPlatform
import OutpostEarlyBoot
import Synchronization

/// One opened watchdog device.
public final class Watchdog: Sendable {
    /// What `outpostd status` says about the device.
    public struct Info: Sendable, Equatable {
        public var device: String
        public var identity: String
        public var timeoutSeconds: Int
        /// True for softdog: a kernel timer, useless when the kernel hangs.
        public var isSoftware: Bool
        public var bootStatusFlags: Int32?
        public var cardReset: Bool { (bootStatusFlags ?? 0) & Int32(OutpostShims_WDIOF_CARDRESET) != 0 }
    }

    public static let softwareIdentity = "Software Watchdog"
    public let info: Info
    private let fd: Mutex<Int32>

    private init(fd: Int32, info: Info) {
        self.fd = Mutex(fd)
        self.info = info
    }

    /// Candidate devices from sysfs, hardware first: softdog only as a last resort.
    static func candidates(sysfs: String = "/sys/class/watchdog") -> [(device: String, identity: String)] {
        let names = (try? Sys.listDirectory(sysfs)) ?? []
        let found = names.filter { $0.hasPrefix("watchdog") }.map { name in
            (device: "/dev/" + name,
             identity: ((try? Sys.readText("\(sysfs)/\(name)/identity")) ?? "").replacingNewlines().trimmingSpaces())
        }
        return found.filter { $0.identity != softwareIdentity } + found.filter { $0.identity == softwareIdentity }
    }

    /// Opens the best device and sets its timeout. Throws when there is no
    /// watchdog at all; the caller reports that in status and runs without one.
    public static func open(timeoutSeconds: Int) throws(SystemError) -> Watchdog {
        var lastError = SystemError(call: "open", object: "/dev/watchdog*", code: ENOENT)
        for candidate in candidates() {
            do {
                return try open(device: candidate.device, identityHint: candidate.identity, timeoutSeconds: timeoutSeconds)
            } catch {
                lastError = error
            }
        }
        throw lastError
    }

    static func open(device: String, identityHint: String, timeoutSeconds: Int) throws(SystemError) -> Watchdog {
        let fd = try Sys.open(device, O_WRONLY)
        var identityBuffer = [CChar](repeating: 0, count: 33)
        var options: UInt32 = 0
        var identity = identityHint
        if (try? systemCall("ioctl(WDIOC_GETSUPPORT)", device, {
            OutpostShims_watchdog_getsupport(fd, &identityBuffer, &options)
        })) != nil {
            identity = String(decoding: identityBuffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        var timeout = Int32(timeoutSeconds)
        do {
            try systemCall("ioctl(WDIOC_SETTIMEOUT)", device) { OutpostShims_watchdog_settimeout(fd, &timeout) }
        } catch {
            // Leave the device running on its default timeout rather than unfed.
            var current: Int32 = 0
            if (try? systemCall("ioctl(WDIOC_GETTIMEOUT)", device, { OutpostShims_watchdog_gettimeout(fd, &current) })) != nil {
                timeout = current
            }
        }
        var flags: Int32 = 0
        let bootStatus: Int32? = (try? systemCall("ioctl(WDIOC_GETBOOTSTATUS)", device, {
            OutpostShims_watchdog_getbootstatus(fd, &flags)
        })) != nil ? flags : nil
        let watchdog = Watchdog(fd: fd, info: Info(device: device, identity: identity, timeoutSeconds: Int(timeout),
                                                   isSoftware: identity == softwareIdentity,
                                                   bootStatusFlags: bootStatus))
        try watchdog.feed()
        return watchdog
    }

    /// One keepalive. A closed device (after `disarm`) is left alone.
    public func feed() throws(SystemError) {
        let device = info.device
        try fd.withLock { (fd: inout Int32) throws(SystemError) in
            guard fd >= 0 else { return }
            try systemCall("ioctl(WDIOC_KEEPALIVE)", device) { OutpostShims_watchdog_keepalive(fd) }
        }
    }

    /// Magic close: 'V' then close(2) disarms the timer. Only for an orderly
    /// shutdown, right before reboot(2).
    public func disarm() throws(SystemError) {
        let device = info.device
        try fd.withLock { (fd: inout Int32) throws(SystemError) in
            guard fd >= 0 else { return }
            defer { Sys.close(fd); fd = -1 }
            try Sys.writeAll(fd, [UInt8(ascii: "V")], target: device)
        }
    }
}
