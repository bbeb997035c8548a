// An instance's serial console on PERSIST, bounded: QEMU appends to console.log
// (chardev file, append=on); once it passes the quota its bytes move to
// console.log.1 and console.log is truncated in place. QEMU's O_APPEND writes then
// continue at the new end, so QEMU keeps its descriptor and nothing restarts. On
// disk an instance's console never takes more than about twice the quota.
//
// The same reader hands the new complete lines to the agent, which sends them to
// the controller with the device's logs: at most `maxLinesPerDrain` per call, the
// rest counted as dropped so a guest that floods its console cannot flood the fleet.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import OutpostPlatform
import Synchronization

public final class ConsoleLog: Sendable {
    /// New console lines since the last drain.
    public struct Drain: Equatable, Sendable {
        public var lines: [String]
        /// Lines over the per-drain cap (skipped, not sent).
        public var dropped: Int
        /// The log was moved to `.1` and truncated during this drain.
        public var rotated: Bool
    }

    public let path: String
    public let quota: Int
    public let maxLinesPerDrain: Int
    /// A line longer than this is cut (a guest writing binary to its serial port has no newlines).
    static let maxLineBytes = 1024

    private struct State {
        /// The offset in `path` up to which lines were handed out.
        var offset = 0
        /// Bytes of an unfinished last line, held back until its newline arrives.
        var pending: [UInt8] = []
    }
    private let state = Mutex(State())

    public init(path: String, quota: Int = 1 << 20, maxLinesPerDrain: Int = 200) {
        self.path = path
        self.quota = max(quota, 4096)
        self.maxLinesPerDrain = maxLinesPerDrain
    }

    public var previousPath: String { path + ".1" }

    /// The complete lines written since the last call (printable text only), then the
    /// rotation when the file is over its quota.
    public func drain() -> Drain {
        state.withLock { state in
            var size = Self.size(path)
            if size < state.offset {
                // Truncated behind our back (or recreated): start over from its beginning.
                state.offset = 0
                state.pending = []
            }
            var lines: [String] = []
            var dropped = 0
            while state.offset < size {
                let chunk = AppInstance.read(path, from: state.offset, limit: min(size - state.offset, 256 << 10))
                guard !chunk.isEmpty else { break }
                state.offset += chunk.count
                for byte in chunk {
                    if byte == 0x0a {
                        if lines.count < maxLinesPerDrain { lines.append(Self.printable(state.pending)) } else { dropped += 1 }
                        state.pending = []
                    } else if state.pending.count < Self.maxLineBytes {
                        state.pending.append(byte)
                    }
                }
            }
            var rotated = false
            if size > quota {
                rotated = rotate(size: &size)
                if rotated { state.offset = 0 }
            }
            return Drain(lines: lines, dropped: dropped, rotated: rotated)
        }
    }

    /// Copies the log to `.1` (FileIO.writeAtomically: a temporary file and a rename) and
    /// truncates it. Lines QEMU writes between the copy and the truncation are lost; the window
    /// is one read and one write of at most a little over the quota.
    private func rotate(size: inout Int) -> Bool {
        let bytes = AppInstance.read(path, from: 0, limit: size + (64 << 10))
        guard (try? FileIO.writeAtomically(bytes, to: previousPath, mode: 0o640)) != nil, truncate(path, 0) == 0 else { return false }
        size = 0
        return true
    }

    /// The last `count` lines, from `.1` as well when the current file has fewer.
    public func tail(_ count: Int) -> [String] {
        func lines(_ file: String) -> [String] {
            let size = Self.size(file)
            let bytes = AppInstance.read(file, from: max(0, size - 8192), limit: 8192)
            return bytes.split(separator: 0x0a, omittingEmptySubsequences: true).map { Self.printable(Array($0)) }
        }
        var result = lines(path)
        if result.count < count { result = lines(previousPath) + result }
        return Array(result.suffix(count))
    }

    /// Printable text only: a guest writes what it likes (escape sequences, "\r").
    static func printable(_ bytes: [UInt8]) -> String {
        let text = String(decoding: bytes, as: UTF8.self)
        return String(String.UnicodeScalarView(text.unicodeScalars.filter { $0.value >= 32 && $0.value != 127 }))
    }

    static func size(_ path: String) -> Int {
        var info = stat()
        return stat(path, &info) == 0 ? Int(info.st_size) : 0
    }
}
