// Every line the device prints, kept on PERSIST until the controller has it.
//
//   PERSIST/fleet/logs/00000000000000000001.seg   segments, named by their
//   PERSIST/fleet/logs/00000000000000004097.seg   first sequence number
//   PERSIST/fleet/logs/acked                      highest acknowledged sequence
//
//   segment := record*        record := length (u32 LE) ‖ LogEntry (protobuf)
//
// Sequences start at 1 and continue across restarts: the newest segment is
// never deleted, so the next sequence is always one past its last record (or
// its name when it is empty). A torn record at the end of the newest segment
// (power cut mid-write) is cut off when the store opens.
//
// Over quota the oldest segment goes, sent or not. Unsent entries dropped that
// way are counted and one entry saying how many is appended; the batch's
// dropped_before tells the controller the gap is deliberate.

#if canImport(Glibc)
import Glibc
#endif
import OutpostPlatform
import OutpostProto
import Synchronization

public final class LogStore: Sendable {
    /// A batch ready to upload: entries after the acknowledged mark, oldest first.
    public struct Batch: Sendable {
        public var entries: [Outpost_Api_V1_LogEntry]
        /// Entries below this sequence are gone for good (0: none).
        public var droppedBefore: UInt64
        public var lastSequence: UInt64 { entries.last?.sequence ?? 0 }
    }

    private struct Segment {
        var first: UInt64
        var bytes: Int
        var path: String
    }

    private struct State {
        var segments: [Segment] = []
        var fd: Int32 = -1
        var next: UInt64 = 1
        var acked: UInt64 = 0
        var lastSync = MonotonicClock.now()
        var unsynced = false
        var droppedUnsent: UInt64 = 0
    }

    private let directory: String
    private let quota: Int
    private let segmentLimit: Int
    private let state = Mutex(State())

    /// Opens (or makes) the store in `directory`, limited to `quotaBytes` on disk.
    public init(directory: String, quotaBytes: Int) throws(FleetError) {
        self.directory = directory
        self.quota = max(quotaBytes, 16 << 10)
        self.segmentLimit = max(4 << 10, min(256 << 10, quota / 8))
        try FleetFiles.makeDirectory(directory)
        var s = State()
        s.acked = UInt64((try FleetFiles.readText(directory + "/acked")?.trimmingWhitespace) ?? "") ?? 0
        for name in try FleetFiles.list(directory) where name.hasSuffix(".seg") && !name.hasPrefix(".") {
            guard let first = UInt64(name.dropLast(4)) else { continue }
            s.segments.append(Segment(first: first, bytes: 0, path: directory + "/" + name))
        }
        s.segments.sort { $0.first < $1.first }
        for i in s.segments.indices {
            var st = stat()
            if stat(s.segments[i].path, &st) == 0 { s.segments[i].bytes = Int(st.st_size) }
        }
        if let newest = s.segments.last {
            // Find the newest segment's last whole record; cut a torn tail.
            let bytes = try FleetFiles.read(newest.path, limit: 64 << 20) ?? []
            let (entries, validLength) = Self.decode(bytes)
            if validLength < bytes.count {
                if truncate(newest.path, off_t(validLength)) != 0 { throw .system(.current("truncate", newest.path)) }
                s.segments[s.segments.count - 1].bytes = validLength
            }
            s.next = (entries.last?.sequence).map { $0 + 1 } ?? newest.first
        }
        // An acknowledged mark beyond what is stored (a lost segment) still
        // moves the sequence on: numbers never repeat.
        s.next = max(s.next, s.acked + 1)
        if s.segments.isEmpty || s.segments[s.segments.count - 1].bytes >= segmentLimit {
            try Self.startSegment(&s, directory: directory)
        } else {
            let path = s.segments[s.segments.count - 1].path
            s.fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC)
            if s.fd < 0 { throw .system(.current("open", path)) }
        }
        state.withLock { $0 = s }
    }

    deinit {
        state.withLock { s in
            if s.fd >= 0 { _ = fsync(s.fd); _ = close(s.fd) }
        }
    }

    /// Appends one line. Never blocks on the network; a full PERSIST loses
    /// the line (and returns the error) instead of stopping the caller.
    @discardableResult
    public func append(source: String, severity: Outpost_Api_V1_Severity, message: String,
                       timeUnixMs: UInt64 = Wallclock.unixMilliseconds()) throws(FleetError) -> UInt64 {
        try state.withLock { (s: inout State) throws(FleetError) -> UInt64 in
            let sequence = try appendLocked(&s, source: source, severity: severity, message: message, time: timeUnixMs)
            let dropped = try enforceQuota(&s)
            if dropped > 0 {
                s.droppedUnsent += dropped
                _ = try appendLocked(&s, source: "fleet", severity: .warning,
                                     message: "log store over its quota of \(quota) bytes: dropped \(dropped) unsent entries",
                                     time: timeUnixMs)
            }
            return sequence
        }
    }

    private func appendLocked(_ s: inout State, source: String, severity: Outpost_Api_V1_Severity, message: String,
                              time: UInt64) throws(FleetError) -> UInt64 {
        var entry = Outpost_Api_V1_LogEntry()
        entry.sequence = s.next
        entry.timeUnixMs = time
        entry.source = String(source.utf8.prefix(64)) ?? source
        entry.severity = severity
        // One entry stays well under a batch; very long lines are cut.
        entry.message = message.utf8.count > 8192 ? String(decoding: message.utf8.prefix(8192), as: UTF8.self) : message
        let body: [UInt8]
        do { body = try entry.serializedBytes() } catch { throw .malformed(what: "log entry", detail: "\(error)") }
        var record = withUnsafeBytes(of: UInt32(body.count).littleEndian) { Array($0) }
        record += body
        if s.segments[s.segments.count - 1].bytes >= segmentLimit { try Self.startSegment(&s, directory: directory) }
        let path = s.segments[s.segments.count - 1].path
        do { try FileIO.writeAll(s.fd, record, object: path) } catch { throw .system(error) }
        s.segments[s.segments.count - 1].bytes += record.count
        s.next += 1
        s.unsynced = true
        // At most one fsync a second: a power cut loses at most the last second.
        if s.lastSync.elapsed >= .seconds(1) {
            _ = fsync(s.fd)
            s.lastSync = MonotonicClock.now()
            s.unsynced = false
        }
        return entry.sequence
    }

    /// Drops whole oldest segments until the store fits its quota; returns how
    /// many unacknowledged entries went with them.
    private func enforceQuota(_ s: inout State) throws(FleetError) -> UInt64 {
        var dropped: UInt64 = 0
        while s.segments.count > 1 && s.segments.reduce(0, { $0 + $1.bytes }) > quota {
            let oldest = s.segments.removeFirst()
            let end = s.segments[0].first  // one past the oldest's last sequence
            if end > s.acked + 1 { dropped += end - max(oldest.first, s.acked + 1) }
            try FleetFiles.remove(oldest.path)
        }
        return dropped
    }

    private static func startSegment(_ s: inout State, directory: String) throws(FleetError) {
        if s.fd >= 0 { _ = fsync(s.fd); _ = close(s.fd) }
        var digits = String(s.next)
        digits = String(repeating: "0", count: max(0, 20 - digits.count)) + digits
        let path = directory + "/" + digits + ".seg"
        s.fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
        if s.fd < 0 { throw .system(.current("open", path)) }
        s.segments.append(Segment(first: s.next, bytes: 0, path: path))
    }

    /// The next sequence number to be given out.
    public var nextSequence: UInt64 { state.withLock { $0.next } }
    /// Everything up to here is at the controller.
    public var ackedSequence: UInt64 { state.withLock { $0.acked } }
    /// Entries written and not yet acknowledged (dropped ones included until acked past).
    public var backlog: UInt64 { state.withLock { $0.next - 1 - min($0.acked, $0.next - 1) } }
    /// Unsent entries dropped over quota since this store was opened.
    public var droppedUnsent: UInt64 { state.withLock { $0.droppedUnsent } }
    public var diskBytes: Int { state.withLock { $0.segments.reduce(0) { $0 + $1.bytes } } }

    /// Unacknowledged entries, oldest first, until their encoding would pass `maxBytes`.
    public func pendingBatch(maxBytes: Int = 48 << 10) throws(FleetError) -> Batch? {
        let (segments, acked, oldestFirst) = state.withLock { s in
            (s.segments, s.acked, s.segments.first?.first ?? s.next)
        }
        var batch = Batch(entries: [], droppedBefore: oldestFirst > acked + 1 ? oldestFirst : 0)
        var size = 0
        for (index, segment) in segments.enumerated() {
            let end = index + 1 < segments.count ? segments[index + 1].first : UInt64.max
            guard end > acked + 1 else { continue }
            guard let bytes = try FleetFiles.read(segment.path, limit: 64 << 20) else { continue }
            for entry in Self.decode(bytes).entries where entry.sequence > acked {
                let cost = entry.message.utf8.count + entry.source.utf8.count + 32
                if size + cost > maxBytes && !batch.entries.isEmpty { return batch }
                batch.entries.append(entry)
                size += cost
            }
        }
        return batch.entries.isEmpty && batch.droppedBefore == 0 ? nil : batch
    }

    /// The controller holds every entry up to `sequence`: remember it and
    /// delete segments that hold nothing newer (never the one being written).
    public func acknowledge(_ sequence: UInt64) throws(FleetError) {
        try state.withLock { (s: inout State) throws(FleetError) in
            let mark = min(sequence, s.next - 1)
            guard mark > s.acked else { return }
            s.acked = mark
            try FleetFiles.write(Array("\(mark)\n".utf8), to: directory + "/acked")
            while s.segments.count > 1 && s.segments[1].first <= mark + 1 {
                try FleetFiles.remove(s.segments.removeFirst().path)
            }
        }
    }

    /// Forces written entries to disk (at shutdown).
    public func sync() {
        state.withLock { s in
            if s.unsynced && s.fd >= 0 { _ = fsync(s.fd); s.unsynced = false; s.lastSync = MonotonicClock.now() }
        }
    }

    /// The whole records in `bytes` and the length they cover; decoding stops
    /// at the first torn or undecodable record.
    static func decode(_ bytes: [UInt8]) -> (entries: [Outpost_Api_V1_LogEntry], validLength: Int) {
        var entries: [Outpost_Api_V1_LogEntry] = []
        var offset = 0
        while offset + 4 <= bytes.count {
            let length = Int(UInt32(bytes[offset]) | UInt32(bytes[offset + 1]) << 8 | UInt32(bytes[offset + 2]) << 16 | UInt32(bytes[offset + 3]) << 24)
            guard length <= 1 << 20, offset + 4 + length <= bytes.count,
                  let entry = try? Outpost_Api_V1_LogEntry(serializedBytes: Array(bytes[(offset + 4)..<(offset + 4 + length)])),
                  entry.sequence > (entries.last?.sequence ?? 0) else { break }
            entries.append(entry)
            offset += 4 + length
        }
        return (entries, offset)
    }
}

