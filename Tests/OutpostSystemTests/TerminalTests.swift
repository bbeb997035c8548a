import Foundation
import Testing

/// `outpost run` at a real terminal: QEMU must be in the terminal's foreground
/// process group (or the kernel stops it with SIGTTOU and nothing appears),
/// typed console commands must answer, Ctrl-A X must quit, and nothing may be
/// left behind: no QEMU, no swtpm, no temporary files, no raw terminal.
private func imageBuilt() -> Bool { FileManager.default.fileExists(atPath: Harness.out + "/outpost.img") }

extension QEMU {
    @Suite("outpost run in a pseudo-terminal", .serialized)
    struct TerminalTests {
        struct Report: Decodable {
            struct Child: Decodable { var pid: Int; var name: String }
            var ready: Bool
            var helpReply: Bool
            var exited: Bool
            var status: Int?
            var children: [Child]
            var childrenGone: Bool?
            var tempDuringRun: [String]
            var tempAfter: [String]?
            var termiosBefore: String?
            var termiosAfter: String?
            var echoAndCanonicalAfter: Bool?
            var transcriptTail: String
            var error: String?
        }

        @Test("help + Enter answers, Ctrl-A X quits, QEMU/swtpm/temp files are gone and the terminal is sane",
              .enabled(if: imageBuilt(), "out/outpost.img is absent: run ./build.sh first (./build.sh test does)"),
              .timeLimit(.minutes(8)))
        func interactiveRunInAPseudoTerminal() throws {
            let h = try Harness("pty")
            defer { h.cleanup() }
            let tmp = h.dir + "/tmp"
            try FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: true)
            let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("pty-run.py").path

            // The script bounds each of its own waits; this bounds the whole.
            let result = try Harness.sh(["python3", script, Harness.outpost, h.image, tmp, "300"],
                                        check: false, timeout: .seconds(420))
            #expect(result.status == 0, "pty-run.py exited \(result.status): \(result.output.suffix(2000))")
            let report = try JSONDecoder().decode(Report.self, from: Data(result.stdout.utf8))
            let console = "\n--- terminal ---\n\(report.transcriptTail)"
            #expect(report.error == nil, "\(report.error ?? "")\(console)")
            #expect(report.ready, "no 'outpost: ready' on the terminal\(console)")
            #expect(report.helpReply, "typing help + Enter got no answer\(console)")
            #expect(report.exited, "outpost did not exit after Ctrl-A X\(console)")
            #expect(report.status == 0, "outpost exited with \(report.status.map(String.init) ?? "-")\(console)")
            // It really started QEMU and swtpm, and they are gone afterwards.
            let names = report.children.map(\.name)
            #expect(names.contains { $0.hasPrefix("qemu-system") }, "children: \(names)")
            #expect(names.contains("swtpm"), "children: \(names)")
            #expect(report.childrenGone == true, "still running after outpost exited: \(report.children)")
            // Its temporary directory existed while it ran and is gone now.
            #expect(report.tempDuringRun.contains { $0.hasPrefix("outpost-run-") }, "during the run: \(report.tempDuringRun)")
            #expect(report.tempAfter == [], "left behind: \(report.tempAfter ?? [])")
            // The terminal is exactly as it was: cooked, echoing.
            #expect(report.termiosBefore != nil && report.termiosAfter == report.termiosBefore,
                    "termios before \(report.termiosBefore ?? "-"), after \(report.termiosAfter ?? "-")")
            #expect(report.echoAndCanonicalAfter == true)
        }
    }
}
