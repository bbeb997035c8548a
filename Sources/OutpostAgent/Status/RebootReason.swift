// Why the device last (re)booted, worked out at boot from what the previous
// boot left in PERSIST (/persist/status/):
//
//   session   written and fsynced when a boot comes up; removed by nothing —
//             it is how the next boot knows there was a previous one
//   shutdown  written at the start of every orderly stop (reason, component)
//   watchdog  written by the feeder when it decides to stop feeding (who hung)
//   heartbeat rewritten every 30 s, the last time the system was known alive
//
// plus the hardware's own word (WDIOC_GETBOOTSTATUS) and the kernel's panic
// record in pstore. Precedence, first match wins:
//
//   no session, no shutdown        → first-boot
//   shutdown record                → its reason; `update` on an unexpected slot → fallback
//   slot changed without an update → fallback (GRUB fell back; cause in detail)
//   pstore panic record            → panic
//   watchdog record or CARDRESET   → watchdog
//   otherwise                      → power-loss (time ≈ last heartbeat)

import OutpostPlatform

/// The one-word reasons of the ready line and `outpostd status`.
public enum RebootReason: String, Sendable, CaseIterable, Encodable {
    case firstBoot = "first-boot"
    case user
    case watchdog
    case panic
    case powerLoss = "power-loss"
    case update
    case fallback
    case crashLoop = "crash-loop"
    case controller
}

/// A small key=value record, one per line: easy to read with `debugfs cat`
/// on a dead device's disk, and nothing to mis-parse after a torn write
/// (records are written to a temporary name, fsynced, then renamed).
public struct StatusRecord: Sendable, Equatable {
    public var fields: [(String, String)]

    public init(_ fields: [(String, String)]) { self.fields = fields }

    public subscript(key: String) -> String? {
        fields.last { $0.0 == key }?.1
    }

    public init(text: String) {
        fields = text.split(separator: "\n").compactMap { line in
            guard let equals = line.firstIndex(of: "=") else { return nil }
            return (String(line[..<equals]), String(line[line.index(after: equals)...]))
        }
    }

    public var text: String {
        // Newlines in a value would split the record; values are single words
        // or short details, so they are flattened.
        fields.map { "\($0.0)=\($0.1.replacingNewlines())\n" }.joined()
    }

    public static func == (a: StatusRecord, b: StatusRecord) -> Bool {
        a.fields.elementsEqual(b.fields) { $0.0 == $1.0 && $0.1 == $1.1 }
    }
}

extension String {
    func replacingNewlines() -> String { flattenedToOneLine }
}

/// The reason this boot happened, with what is known about it. Encoded as
/// `lastBoot` in the status document; fields that are not known are left out.
public struct LastBoot: Sendable, Equatable, Encodable {
    public var reason: RebootReason
    /// The component that hung, crash-looped or asked for the reboot.
    public var component: String?
    /// Unix seconds of the event when known (for power-loss: the last heartbeat).
    public var time: Int64?
    public var detail: String?

    public init(reason: RebootReason, component: String? = nil, time: Int64? = nil, detail: String? = nil) {
        self.reason = reason
        self.component = component
        self.time = time
        self.detail = detail
    }

    public var record: StatusRecord {
        var fields = [("reason", reason.rawValue)]
        if let component { fields.append(("component", component)) }
        if let time { fields.append(("time", String(time))) }
        if let detail { fields.append(("detail", detail)) }
        return StatusRecord(fields)
    }
}

/// What the previous boot left behind, gathered by `BootHistory`.
public struct PreviousBootEvidence: Sendable {
    public var session: StatusRecord?
    public var shutdown: StatusRecord?
    public var watchdogRecord: StatusRecord?
    public var heartbeat: StatusRecord?
    /// WDIOC_GETBOOTSTATUS had WDIOF_CARDRESET.
    public var watchdogCardReset = false
    /// A pstore dmesg record that holds a panic, and its file's time.
    public var panicRecord: (name: String, time: Int64?)?

    public init(session: StatusRecord? = nil, shutdown: StatusRecord? = nil, watchdogRecord: StatusRecord? = nil,
                heartbeat: StatusRecord? = nil, watchdogCardReset: Bool = false,
                panicRecord: (name: String, time: Int64?)? = nil) {
        self.session = session
        self.shutdown = shutdown
        self.watchdogRecord = watchdogRecord
        self.heartbeat = heartbeat
        self.watchdogCardReset = watchdogCardReset
        self.panicRecord = panicRecord
    }
}

extension LastBoot {
    /// Applies the precedence at the top of this file. `currentSlot` is the
    /// slot this boot came up on.
    public static func determine(from evidence: PreviousBootEvidence, currentSlot: String) -> LastBoot {
        guard evidence.session != nil || evidence.shutdown != nil else {
            return LastBoot(reason: .firstBoot)
        }
        let previousSlot = evidence.session?["slot"]
        if let shutdown = evidence.shutdown, let word = shutdown["reason"], let reason = RebootReason(rawValue: word) {
            let time = shutdown["time"].flatMap { Int64($0) }
            if reason == .update, let expected = shutdown["expected-slot"], expected != currentSlot {
                return LastBoot(reason: .fallback, component: shutdown["component"], time: time,
                                detail: "update to \(expected) did not boot; running \(currentSlot)")
            }
            return LastBoot(reason: reason, component: shutdown["component"], time: time, detail: shutdown["detail"])
        }
        let unclean = uncleanCause(evidence)
        if let previousSlot, previousSlot != currentSlot {
            return LastBoot(reason: .fallback, component: unclean.component, time: unclean.time,
                            detail: "\(previousSlot) stopped (\(unclean.reason.rawValue)); GRUB booted \(currentSlot)")
        }
        return unclean
    }

    /// The cause of a stop that left no shutdown record.
    static func uncleanCause(_ evidence: PreviousBootEvidence) -> LastBoot {
        if let panic = evidence.panicRecord {
            return LastBoot(reason: .panic, time: panic.time, detail: "pstore \(panic.name)")
        }
        if let record = evidence.watchdogRecord {
            return LastBoot(reason: .watchdog, component: record["component"],
                            time: record["time"].flatMap { Int64($0) }, detail: record["detail"])
        }
        if evidence.watchdogCardReset {
            return LastBoot(reason: .watchdog, detail: "hardware watchdog reset (WDIOF_CARDRESET); no feeder record")
        }
        let last = evidence.heartbeat?["time"].flatMap { Int64($0) }
            ?? evidence.session?["time"].flatMap { Int64($0) }
        return LastBoot(reason: .powerLoss, time: last, detail: "no clean-shutdown record; time is the last heartbeat")
    }
}
