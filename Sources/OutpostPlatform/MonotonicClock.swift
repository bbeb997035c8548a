// The one clock for timeouts, intervals and boot timing on the device.
//
// CLOCK_MONOTONIC, never the wall clock: the device's wall clock jumps when
// NTP or the RTC fix-up sets it, and a lease timer or watchdog interval must
// not stretch or fire early because of that.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

public enum MonotonicClock {
    /// A point on CLOCK_MONOTONIC, in nanoseconds since an unspecified start (boot).
    public struct Instant: Comparable, Hashable, Sendable {
        public var nanoseconds: Int64

        public init(nanoseconds: Int64) { self.nanoseconds = nanoseconds }

        /// Whole milliseconds since the clock's start, for logs and status documents.
        public var milliseconds: Int64 { nanoseconds / 1_000_000 }

        /// How long ago this instant was (zero if it lies in the future).
        public var elapsed: Duration { max(.zero, MonotonicClock.now() - self) }

        public func advanced(by duration: Duration) -> Instant {
            Instant(nanoseconds: nanoseconds &+ duration.nanoseconds)
        }

        public static func < (a: Instant, b: Instant) -> Bool { a.nanoseconds < b.nanoseconds }

        public static func - (a: Instant, b: Instant) -> Duration { .nanoseconds(a.nanoseconds &- b.nanoseconds) }
    }

    public static func now() -> Instant {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return Instant(nanoseconds: Int64(time.tv_sec) * 1_000_000_000 + Int64(time.tv_nsec))
    }

    /// Sleeps the calling thread for the whole `duration`: a signal handler
    /// interrupting nanosleep does not cut the sleep short, the rest is slept.
    /// A sleep that must end early on shutdown waits on a `StopSignal` instead.
    public static func sleep(for duration: Duration) {
        guard duration > .zero else { return }
        var request = timespec(duration)
        var remaining = timespec()
        while nanosleep(&request, &remaining) != 0 && errno == EINTR { request = remaining }
    }
}

/// A point in time a bounded wait must not pass: "at most five seconds for
/// the lease", however many times the wait is woken or interrupted.
public struct Deadline: Comparable, Hashable, Sendable {
    public var instant: MonotonicClock.Instant

    public init(_ instant: MonotonicClock.Instant) { self.instant = instant }

    /// The deadline `duration` from now.
    public init(after duration: Duration) { self.instant = MonotonicClock.now().advanced(by: duration) }

    /// Time left, never negative.
    public var remaining: Duration { max(.zero, instant - MonotonicClock.now()) }

    public var hasPassed: Bool { MonotonicClock.now() >= instant }

    /// The time left as a poll(2) timeout; see `Duration.pollMilliseconds`.
    public var pollMilliseconds: Int32 { remaining.pollMilliseconds }

    /// The earlier deadline comes first: `min` of two is the one that binds.
    public static func < (a: Deadline, b: Deadline) -> Bool { a.instant < b.instant }
}

extension Duration {
    /// Whole nanoseconds, saturating at the limits of Int64 (about 292 years).
    public var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        let (scaled, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return seconds < 0 ? .min : .max }
        return scaled.addingReportingOverflow(attoseconds / 1_000_000_000).overflow
            ? (seconds < 0 ? .min : .max) : scaled + attoseconds / 1_000_000_000
    }

    /// Milliseconds for poll(2), rounded up so a wait never ends early: at
    /// least 1 (a loop waiting for a deadline never spins), at most a day.
    public var pollMilliseconds: Int32 {
        guard self > .zero else { return 1 }
        let (seconds, attoseconds) = components
        let milliseconds = seconds * 1000 + (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000
        return Int32(clamping: max(1, min(milliseconds, 86_400_000)))
    }
}

extension timespec {
    /// A relative timespec, for nanosleep and timed waits.
    public init(_ duration: Duration) {
        let nanoseconds = max(0, duration.nanoseconds)
        self.init(tv_sec: Int(nanoseconds / 1_000_000_000), tv_nsec: Int(nanoseconds % 1_000_000_000))
    }
}

/// Wall-clock time for reports (the monotonic clock has no epoch).
public enum Wallclock {
    public static func unixMilliseconds() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_REALTIME, &time)
        return UInt64(max(0, Int64(time.tv_sec))) * 1000 + UInt64(time.tv_nsec / 1_000_000)
    }
}
