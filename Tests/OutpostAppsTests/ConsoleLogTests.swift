import Foundation
import OutpostTestSupport
import Testing
@testable import OutpostApps

/// The instance console on PERSIST: new lines handed out once, a cap per drain, the quota kept
/// by copy-and-truncate while a writer (standing in for QEMU's chardev, O_APPEND like it) keeps
/// its descriptor.
@Suite("App console log: lines for the controller, quota, rotation")
struct ConsoleLogTests {
    /// A writer like QEMU's `-chardev file,append=on`: one O_APPEND descriptor kept open.
    final class AppendingWriter {
        let fd: Int32
        init(_ path: String) throws {
            fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640)
            guard fd >= 0 else { throw TestSupportError.spawn(command: "open \(path)", reason: "errno \(errno)") }
        }
        func write(_ text: String) {
            let bytes = Array(text.utf8)
            _ = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        }
        deinit { close(fd) }
    }

    @Test func newLinesComeOnceAndAnUnfinishedLineWaitsForItsNewline() throws {
        let dir = try TemporaryDirectory("console")
        let log = ConsoleLog(path: dir.path + "/console.log", quota: 1 << 20, maxLinesPerDrain: 5)
        #expect(log.drain() == ConsoleLog.Drain(lines: [], dropped: 0, rotated: false), "no file yet")
        let qemu = try AppendingWriter(log.path)
        qemu.write("SeaBIOS\r\n\u{1b}[2Jboot 1\npart")
        #expect(log.drain().lines == ["SeaBIOS", "[2Jboot 1"], "printable text only; the unfinished line waits")
        #expect(log.drain().lines == [])
        qemu.write("ial\n")
        #expect(log.drain().lines == ["partial"])
        qemu.write((1...8).map { "line \($0)\n" }.joined())
        let capped = log.drain()
        #expect(capped.lines == (1...5).map { "line \($0)" } && capped.dropped == 3, "at most 5 per drain, the rest counted")
        qemu.write(String(repeating: "x", count: 5000) + "\n")
        #expect(log.drain().lines.first?.count == ConsoleLog.maxLineBytes, "a line with no newline for 5000 bytes is cut")
    }

    @Test func overItsQuotaTheLogMovesToDotOneAndTheWriterCarriesOnAtTheStart() throws {
        let dir = try TemporaryDirectory("console")
        let log = ConsoleLog(path: dir.path + "/console.log", quota: 4096, maxLinesPerDrain: 1000)
        let qemu = try AppendingWriter(log.path)
        var sent: [String] = []
        for round in 0..<20 {
            for n in 0..<10 { qemu.write("round \(round) line \(n) " + String(repeating: "=", count: 40) + "\n") }
            let drain = log.drain()
            sent += drain.lines
            #expect(ConsoleLog.size(log.path) <= 4096 + 1000, "console.log stays near its quota")
            #expect(ConsoleLog.size(log.previousPath) <= 4096 + 1000, "and so does console.log.1")
        }
        #expect(sent == (0..<20).flatMap { r in (0..<10).map { "round \(r) line \($0) " + String(repeating: "=", count: 40) } },
                "every line went out once, in order, across the rotations")
        #expect(FileManager.default.fileExists(atPath: log.previousPath))
        qemu.write("after\n")
        let text = try String(contentsOfFile: log.path, encoding: .utf8)
        #expect(text.hasSuffix("after\n") && !text.contains("\0"), "the O_APPEND writer continues at the new end, no hole: \(text.prefix(80))")
        #expect(log.drain().lines == ["after"])
        let tail = log.tail(5)
        #expect(tail.count == 5 && tail.last == "after" && tail.first?.hasPrefix("round 19") == true, "the tail reaches into .1: \(tail)")
    }
}
