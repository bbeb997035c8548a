import Foundation
import Testing
import OutpostDisk
import OutpostTestSupport

/// Every QEMU test, one at a time within one test process. Each guest runs under TCG;
/// more guests than cores starve one another's virtual CPUs while their virtual clocks (and
/// the watchdogs driven by them) keep running, which turns timing into chance. `build.sh
/// test` runs two such processes side by side (two lanes, two guests, two cores), so every
/// assertion here is about order and content, never about how soon something happened.
@Suite(.serialized) enum QEMU {}

/// Drives the real image in QEMU (TCG, OVMF, swtpm) through `outpost run
/// --headless`, on a private sparse copy of `out/outpost.img` so tests never
/// touch the build output and never share a disk.
struct Harness {
    static let root: String = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().path
    static var out: String { ProcessInfo.processInfo.environment["OUTPOST_OUT"] ?? root + "/out" }
    static var outpost: String { out + "/bin/outpost" }

    struct Missing: Error, CustomStringConvertible {
        var path: String
        var description: String { "\(path) is missing: run ./build.sh first (./build.sh test does)" }
    }

    let dir: String
    let image: String

    init(_ tag: String) throws {
        for p in [Harness.outpost, Harness.out + "/outpost.img", Harness.out + "/measurements.json", Harness.out + "/slot.json"]
        where !FileManager.default.fileExists(atPath: p) { throw Missing(path: p) }
        dir = try TemporaryDirectory.create("sys-\(tag)")
        image = dir + "/disk.img"
        try Harness.sh(["cp", "--sparse=always", Harness.out + "/outpost.img", image])
    }

    func cleanup() { try? FileManager.default.removeItem(atPath: dir) }

    struct Boot {
        var exitCode: Int32
        var console: String
        /// The slot GRUB said it booted ("IMGA"), from its console line.
        var grubSlot: String? {
            guard let r = console.range(of: "outpost-grub: booting ") ?? console.range(of: "rescue booting ") else { return nil }
            return String(console[r.upperBound...].prefix { $0 != " " && $0 != "\n" && $0 != "\r" })
        }
        var ready: Bool { console.contains("outpost: ready ") }
        func line(containing s: String) -> String? {
            // "\r\n" is a single Character; isNewline covers it, "\n" and "\r".
            console.split(whereSeparator: { $0.isNewline }).map(String.init).first { $0.contains(s) }
        }
    }

    /// Boots until one of `until` appears on the console or `timeout` passes.
    func boot(until: [String] = ["outpost: ready", "outpost: error:", "outpost: rescue"], timeout: Int = 240,
              disks: [String] = [], powerOff: Bool = false) throws -> Boot {
        let log = dir + "/console-\(UInt32.random(in: 0...UInt32.max)).log"
        var args = [Harness.outpost, "run", "--headless", "--timeout", String(timeout), "--console-log", log]
        for u in until { args += ["--until", u] }
        for d in disks { args += ["--disk", d] }
        if powerOff { args.append("--power-off") }
        let r = try Harness.sh(args + [image], check: false, timeout: .seconds(timeout + 120))
        let console = (try? String(contentsOfFile: log, encoding: .utf8)) ?? r.stdout
        return Boot(exitCode: r.status, console: console)
    }

    func gpt() throws -> GPT { try GPTDisk.read(FileBlockDevice(path: image, writable: false)).gpt }

    func cgptAttr(_ index: Int) throws -> String {
        try Harness.sh(["cgpt", "show", "-i", String(index), "-A", image]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    func cgptSet(_ index: Int, _ raw: String) throws {
        try Harness.sh(["cgpt", "add", "-i", String(index), "-A", raw, image])
    }

    /// Copies the slot payload of IMGA into IMGB, as an update would.
    func copyIMGAtoIMGB() throws {
        let g = try gpt()
        guard let a = g.number(named: "IMGA"), let b = g.number(named: "IMGB") else { throw Missing(path: "IMGA/IMGB") }
        let dev = try FileBlockDevice(path: image, writable: true)
        let size = try Harness.slotManifest().size
        let chunk: UInt64 = 1 << 20
        var off: UInt64 = 0
        while off < size {
            let n = Int(min(chunk, size - off))
            let bytes = try dev.readBytes(offset: g.entries[a - 1].firstLBA * 512 + off, count: n)
            try dev.writeBytes(offset: g.entries[b - 1].firstLBA * 512 + off, bytes: bytes)
            off += UInt64(n)
        }
        try dev.flush()
    }

    /// Reads a file from PERSIST after the guest stopped: extract the
    /// partition, replay its journal on the copy (e2fsck), then debugfs.
    func persistFile(_ path: String) throws -> String {
        let g = try gpt()
        guard let n = g.number(named: "PERSIST") else { throw Missing(path: "PERSIST partition") }
        let p = g.entries[n - 1]
        let fs = dir + "/persist.fs"
        try Harness.sh(["dd", "if=\(image)", "of=\(fs)", "bs=512", "skip=\(p.firstLBA)", "count=\(p.sectorCount)",
                        "conv=sparse", "status=none"])
        _ = try Harness.sh(["e2fsck", "-fy", fs], check: false)
        return try Harness.sh(["debugfs", "-R", "cat \(path)", fs]).stdout
    }

    struct Manifest: Decodable { var size: UInt64; var rootOffset: UInt64; var rootDataBlocks: UInt64; var version: String }
    static func slotManifest() throws -> Manifest {
        try JSONDecoder().decode(Manifest.self, from: Data(contentsOf: URL(fileURLWithPath: out + "/slot.json")))
    }

    struct Measurements: Decodable {
        struct Slot: Decodable { var pcr8: String; var pcr9: String }
        var slots: [String: Slot]
        var rescue: Slot?
    }
    static func measurements() throws -> Measurements {
        try JSONDecoder().decode(Measurements.self, from: Data(contentsOf: URL(fileURLWithPath: out + "/measurements.json")))
    }

    /// Runs a command (OutpostTestSupport's runner); with `check`, a non-zero exit throws.
    @discardableResult
    static func sh(_ argv: [String], check: Bool = true, timeout: Duration = .seconds(900)) throws -> CommandResult {
        let r = try runCommand(argv, timeout: timeout)
        if check && r.status != 0 {
            throw TestSupportError.failed(command: argv.joined(separator: " "), status: r.status, output: r.output)
        }
        return r
    }
}

// MARK: - Supervisor tests: live boots, the QEMU monitor, writing PERSIST

extension Harness {
    /// A private copy of another image of the build (e.g. the fault-injection image).
    init(_ tag: String, imageNamed name: String) throws {
        let source = Harness.out + "/" + name
        guard FileManager.default.fileExists(atPath: source) else { throw Missing(path: source) }
        dir = try TemporaryDirectory.create("sys-\(tag)")
        image = dir + "/disk.img"
        try Harness.sh(["cp", "--sparse=always", source, image])
    }

    /// Writes `text` to `path` inside PERSIST (the guest must be stopped):
    /// extract the partition, debugfs -w, write it back in place.
    func writePersistFile(_ path: String, _ text: String) throws {
        let g = try gpt()
        guard let n = g.number(named: "PERSIST") else { throw Missing(path: "PERSIST partition") }
        let p = g.entries[n - 1]
        let fs = dir + "/persist-w.fs", local = dir + "/persist-w.txt"
        try text.write(toFile: local, atomically: true, encoding: .utf8)
        try Harness.sh(["dd", "if=\(image)", "of=\(fs)", "bs=512", "skip=\(p.firstLBA)", "count=\(p.sectorCount)",
                        "conv=sparse", "status=none"])
        _ = try Harness.sh(["e2fsck", "-fy", fs], check: false)
        let parent = (path as NSString).deletingLastPathComponent
        _ = try Harness.sh(["debugfs", "-w", "-R", "mkdir \(parent)", fs], check: false)
        _ = try Harness.sh(["debugfs", "-w", "-R", "rm \(path)", fs], check: false)
        try Harness.sh(["debugfs", "-w", "-R", "write \(local) \(path)", fs])
        try Harness.sh(["dd", "if=\(fs)", "of=\(image)", "bs=512", "seek=\(p.firstLBA)", "conv=notrunc,sparse",
                        "status=none"])
        try? FileManager.default.removeItem(atPath: fs)
    }

    /// A QEMU boot running in the background: console lines with the host
    /// time they appeared, and the monitor for system_powerdown.
    final class LiveBoot {
        let process: ChildProcess
        let log: String
        let monitor: String
        private var offset = 0
        private var partial = ""
        private(set) var lines: [(at: Date, text: String)] = []

        /// `arguments` go to `outpost run` (e.g. "--disk", "--nics"); with
        /// `consoleInput`, `type(_:)` sends text to the serial console.
        init(_ h: Harness, timeout: Int, arguments: [String] = [], consoleInput: Bool = false) throws {
            log = h.dir + "/live-\(UInt32.random(in: 0...UInt32.max)).log"
            monitor = h.dir + "/mon-\(UInt32.random(in: 0...UInt32.max)).sock"
            // A marker that never appears: the boot ends when the guest powers off or at the timeout.
            process = try ChildProcess([Harness.outpost, "run", "--headless", "--timeout", String(timeout), "--console-log", log,
                                        "--monitor", monitor, "--until", "never-printed-marker"]
                                       + arguments + (consoleInput ? ["--console-input"] : []) + [h.image],
                                       withInput: consoleInput)
        }

        /// Reads new console lines; returns the first line containing `text`
        /// seen at or after line index `from`, waiting up to `timeout` seconds.
        @discardableResult
        func wait(for text: String, after from: Int = 0, timeout: Double) -> (index: Int, at: Date, text: String)? {
            let deadline = Date().addingTimeInterval(timeout)
            while true {
                poll()
                if let i = lines.indices.first(where: { $0 >= from && lines[$0].text.contains(text) }) {
                    return (i, lines[i].at, lines[i].text)
                }
                if Date() > deadline || (!process.isRunning && lines.count == lineCountAtExit()) { return nil }
                usleep(100_000)
            }
        }

        private var exitLines: Int?
        private func lineCountAtExit() -> Int {
            if exitLines == nil { poll(); exitLines = lines.count }
            return exitLines ?? lines.count
        }

        func poll() {
            guard let handle = FileHandle(forReadingAtPath: log) else { return }
            defer { try? handle.close() }
            try? handle.seek(toOffset: UInt64(offset))
            let data = handle.readDataToEndOfFile()
            offset += data.count
            partial += String(decoding: data, as: UTF8.self)
            let now = Date()
            while let nl = partial.firstIndex(where: { $0 == "\n" || $0 == "\r\n" }) {
                lines.append((now, String(partial[..<nl])))
                partial.removeSubrange(...nl)
            }
        }

        /// Types `text` on the serial console (needs `consoleInput`).
        func type(_ text: String) throws {
            try process.write(text)
        }

        /// Sends one command to the QEMU monitor (human monitor protocol).
        func monitorCommand(_ command: String) throws {
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(fd) }
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &address.sun_path) { raw in
                let bytes = Array(monitor.utf8)
                raw.copyBytes(from: bytes)
                raw[bytes.count] = 0
            }
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
            guard connected == 0 else { throw NSError(domain: "monitor connect \(monitor): errno \(errno)", code: 1) }
            let line = Array((command + "\n").utf8)
            _ = line.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            usleep(500_000)
        }

        /// Waits for QEMU (and `outpost run`) to end; stops it at the deadline.
        func waitForExit(timeout: Double) -> Bool {
            let deadline = Date().addingTimeInterval(timeout)
            while process.isRunning && Date() < deadline { usleep(200_000) }
            let exited = !process.isRunning
            if !exited {
                // quit through the monitor so `outpost run` stops its own QEMU and swtpm.
                try? monitorCommand("quit")
                let grace = Date().addingTimeInterval(15)
                while process.isRunning && Date() < grace { usleep(200_000) }
                if process.isRunning { process.terminate() }
            }
            poll()
            return exited
        }

        var console: String { lines.map(\.text).joined(separator: "\n") }

        /// The console lines with index in `from..<to`.
        func lines(from: Int, to: Int) -> [String] {
            guard from < to, from >= 0, to <= lines.count else { return [] }
            return lines[from..<to].map(\.text)
        }
    }
}
