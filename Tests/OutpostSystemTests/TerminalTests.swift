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
            var bootLines: [String]
            var bootTimes: String?
            var helpReply: Bool
            var kernelLogReply: Bool
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

        @Test("Outpost's lines, not the kernel's; help + Enter answers, kernel log shows the kernel's; Ctrl-A X quits, QEMU/swtpm/temp files are gone and the terminal is sane",
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
            // The boot a person watches: GRUB's and Outpost's lines, not the kernel's boot log
            // (quiet on the command line) nor tune2fs's or resize2fs's banners at the first boot.
            let kernelLines = report.bootLines.filter {
                $0.contains("Linux version") || $0.contains("Command line:") || $0.contains("Freeing unused kernel")
            }
            #expect(kernelLines.isEmpty, "the kernel's boot log reached the console: \(kernelLines.prefix(5))\(console)")
            let banners = report.bootLines.filter { $0.hasPrefix("tune2fs ") || $0.hasPrefix("resize2fs ") || $0.contains("Resizing the filesystem") }
            #expect(banners.isEmpty, "helpers' banners reached the console: \(banners)")
            #expect(report.bootLines.contains { $0.contains("outpost-grub: booting IMGA") }, "\(report.bootLines.suffix(20))")
            // outpost-init did early boot and exec'd the root's outpostd, which says where the time went.
            #expect(report.bootTimes?.contains(", exec ") == true && report.bootTimes?.contains("after the kernel started") == true,
                    "\(report.bootTimes ?? "no boot: line after the ready line")")
            #expect(report.kernelLogReply, "typing kernel log + Enter did not show the kernel's messages\(console)")
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
