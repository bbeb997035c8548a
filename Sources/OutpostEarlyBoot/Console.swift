// The console is the only user interface early boot has: every outcome is
// exactly one line starting with "outpost: ". Every line also goes to the
// controller's log store once the fleet client exists; lines printed before
// that (early boot, the ready line) wait in a bounded buffer.

#if canImport(Glibc)
import Glibc
#endif
import OutpostPlatform
import Synchronization

/// Writes whole lines to the console with one write(2) each, so kernel
/// messages cannot split a line that a test or an operator looks for.
public enum Console {
    /// One printed line and when (Unix milliseconds), as the log store wants it.
    public struct Line: Codable, Sendable {
        public var message: String
        public var timeUnixMs: UInt64
    }

    public typealias Sink = @Sendable (Line) -> Void

    /// Where lines go besides the console: nowhere yet (buffering), a sink
    /// (the fleet client), or nowhere for good (an unmanaged device).
    struct Tap {
        var sink: Sink?
        var buffering = true
        var buffer: [Line] = []
        var dropped = 0
        /// Early boot and the first seconds print a few dozen lines; a device whose
        /// client cannot start keeps at most this many, then counts what it dropped.
        var limit = 2000

        /// The sink to hand `line` to, or nil once it is buffered (or discarded).
        mutating func route(_ line: Line) -> Sink? {
            if let sink { return sink }
            if buffering {
                if buffer.count < limit { buffer.append(line) } else { dropped += 1 }
            }
            return nil
        }

        /// Installs `sink`; returns what it must get first, in order: the
        /// buffered lines and one line counting those the buffer dropped.
        mutating func attach(_ sink: @escaping Sink, now: UInt64) -> [Line] {
            var replay = buffer
            if dropped > 0 {
                replay.append(Line(message: "warning: \(dropped) console lines printed before the controller client started were dropped",
                                   timeUnixMs: now))
            }
            buffer = []
            dropped = 0
            self.sink = sink
            return replay
        }

        mutating func discard() {
            buffering = false
            buffer = []
            dropped = 0
        }
    }

    static let tap = Mutex(Tap())

    /// Makes sure fds 0–2 exist. The kernel opens /dev/console for init only
    /// when the initramfs has that node; if it had none, devtmpfs provides it.
    public static func attachIfNeeded() {
        guard fcntl(1, F_GETFD) == -1 else { return }
        let fd = Glibc.open("/dev/console", O_RDWR | O_NOCTTY)
        guard fd >= 0 else { return }
        for target: Int32 in 0...2 where fcntl(target, F_GETFD) == -1 {
            dup2(fd, target)
        }
        if fd > 2 { Glibc.close(fd) }
    }

    /// Prints `outpost: <message>` as one line, and hands it to the sink (or the buffer).
    public static func line(_ message: String) {
        // Console output is best effort: there is nobody to report a failure to.
        show(message)
        forward(message)
    }

    /// Prints `outpost: <message>` as one line on the console only: the sink never gets it.
    public static func show(_ message: String) {
        try? Sys.writeAll(1, Array("outpost: \(message)\n".utf8), target: "console")
    }

    /// Hands `message` to the sink (or the buffer) without printing it: an app's own serial
    /// console goes to the controller's logs, not onto the device's console.
    public static func forward(_ message: String) {
        let line = Line(message: message, timeUnixMs: Wallclock.unixMilliseconds())
        tap.withLock { $0.route(line) }?(line)
    }

    /// From now on every line also goes to `sink`; the buffered lines go
    /// first, in order, followed by one line counting any the buffer dropped.
    public static func attach(_ sink: @escaping Sink) {
        tap.withLock { t in
            // Inside the lock: no line printed meanwhile can overtake the buffer.
            for line in t.attach(sink, now: Wallclock.unixMilliseconds()) { sink(line) }
        }
    }

    /// The lines buffered for a sink that does not exist yet, and how many were dropped
    /// (early boot hands them to the PID 1 it execs: StageHandoff.swift).
    static func buffered() -> (lines: [Line], dropped: Int) {
        tap.withLock { ($0.buffer, $0.dropped) }
    }

    /// Puts back lines an earlier process of this boot buffered, before any printed here.
    static func restoreBuffered(lines: [Line], dropped: Int) {
        tap.withLock { t in
            t.buffer = Array(lines.prefix(t.limit)) + t.buffer
            t.dropped += dropped + max(0, lines.count - t.limit)
        }
    }

    /// Nobody will collect the lines (no controller): stop buffering them.
    public static func discardBuffer() {
        tap.withLock { $0.discard() }
    }
}
