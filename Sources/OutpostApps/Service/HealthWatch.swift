// The guest health check of one instance (AppHealthCheck): once its QEMU has been
// running for the grace period, a console line containing the marker must appear
// at least every `timeout`. The check judges only a running instance, and starts
// over with each QEMU (a restart, a crash), so a slow boot is never counted.

import OutpostPlatform

struct HealthWatch: Sendable {
    private var spawn = -1
    private var since: MonotonicClock.Instant?
    private var lastMarker: MonotonicClock.Instant?

    /// One look after a console drain. Returns how long the guest has been silent when the
    /// check fails now (the caller kills its QEMU), nil while it passes or cannot judge.
    mutating func observe(_ check: AppHealthCheck, running: Bool, spawn: Int, lines: [String],
                          now: MonotonicClock.Instant = MonotonicClock.now()) -> Duration? {
        guard running else { return nil }
        if spawn != self.spawn {
            self.spawn = spawn
            since = now
            lastMarker = nil
        }
        if lines.contains(where: { $0.contains(check.consoleMarker) }) {
            lastMarker = now
            return nil
        }
        guard let since else { return nil }
        // The clock runs from the end of the grace period or the last marker, whichever is later.
        let graceEnd = since.advanced(by: .seconds(check.graceSeconds))
        let reference = max(graceEnd, lastMarker ?? graceEnd)
        guard now >= reference else { return nil }
        let silent = now - reference
        return silent >= .seconds(check.timeoutSeconds) ? now - (lastMarker ?? since) : nil
    }
}
