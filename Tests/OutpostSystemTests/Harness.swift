import Foundation
import OutpostDisk

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
        dir = NSTemporaryDirectory() + "outpost-sys-\(tag)-\(getpid())"
        try? FileManager.default.removeItem(atPath: dir)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
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
            console.split(whereSeparator: { $0 == "\n" || $0 == "\r" }).map(String.init).first { $0.contains(s) }
        }
    }

    /// Boots until one of `until` appears on the console or `timeout` passes.
    func boot(until: [String] = ["outpost: ready", "outpost: error:", "outpost: rescue"], timeout: Int = 240) throws -> Boot {
        let log = dir + "/console-\(UInt32.random(in: 0...UInt32.max)).log"
        var args = [Harness.outpost, "run", "--headless", "--timeout", String(timeout), "--console-log", log]
        for u in until { args += ["--until", u] }
        let r = try Harness.sh(args + [image], check: false)
        let console = (try? String(contentsOfFile: log, encoding: .utf8)) ?? r.out
        return Boot(exitCode: r.status, console: console)
    }

    func gpt() throws -> GPT { try GPTDisk.read(FileBlockDevice(path: image, writable: false)).gpt }

    func cgptAttr(_ index: Int) throws -> String {
        try Harness.sh(["cgpt", "show", "-i", String(index), "-A", image]).out.trimmingCharacters(in: .whitespacesAndNewlines)
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
        return try Harness.sh(["debugfs", "-R", "cat \(path)", fs]).out
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

    struct Result { var status: Int32; var out: String }

    @discardableResult
    static func sh(_ argv: [String], check: Bool = true) throws -> Result {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = argv
        var env = ProcessInfo.processInfo.environment
        env["PATH"] = (env["PATH"] ?? "/usr/bin:/bin") + ":/usr/sbin:/sbin"
        p.environment = env
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = FileHandle.nullDevice
        try p.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        let r = Result(status: p.terminationStatus, out: String(decoding: data, as: UTF8.self))
        if check && r.status != 0 {
            throw NSError(domain: "\(argv.joined(separator: " ")) exited \(r.status)", code: Int(r.status))
        }
        return r
    }
}
