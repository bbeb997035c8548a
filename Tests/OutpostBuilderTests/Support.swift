import Foundation

/// Helpers shared by the builder tests: run a command, make a scratch
/// directory, find the `outpost` binary built from this package.
enum Support {
    static let packageRoot: String = {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    }()

    static var outpost: String {
        ProcessInfo.processInfo.environment["OUTPOST_BIN"] ?? packageRoot + "/.build/debug/outpost"
    }

    struct Result { var status: Int32; var stdout: String; var stderr: String }

    @discardableResult
    static func run(_ argv: [String], env: [String: String] = [:], cwd: String? = nil) throws -> Result {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: argv[0].hasPrefix("/") ? argv[0] : "/usr/bin/env")
        p.arguments = argv[0].hasPrefix("/") ? Array(argv.dropFirst()) : argv
        var e = ProcessInfo.processInfo.environment
        e["PATH"] = (e["PATH"] ?? "/usr/bin:/bin") + ":/usr/sbin:/sbin"
        for (k, v) in env { e[k] = v }
        p.environment = e
        if let cwd { p.currentDirectoryURL = URL(fileURLWithPath: cwd) }
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        nonisolated(unsafe) var errData = Data()
        let t = Thread { errData = err.fileHandleForReading.readDataToEndOfFile() }
        t.start()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        while !t.isFinished { usleep(1000) }
        return Result(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: errData, as: UTF8.self))
    }

    static func tempDir(_ tag: String) throws -> String {
        let d = NSTemporaryDirectory() + "outpost-test-\(tag)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }

    /// A small layout so each image builds in about a second.
    static let smallLayout = """
    {
      "disk": { "size": "96MiB", "seed": "test-seed" },
      "partitions": [
        { "name": "EFI",     "type": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "size": "40MiB", "filesystem": "fat32", "label": "EFI" },
        { "name": "IMGA",    "type": "5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6", "size": "8MiB",  "filesystem": "slot",  "label": "IMGA", "slotState": "active" },
        { "name": "IMGB",    "type": "5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6", "size": "8MiB",  "filesystem": "slot",  "label": "IMGB", "slotState": "unused" },
        { "name": "CONFIG",  "type": "13307E62-CD9C-4920-8F9B-91B45828B798", "size": "4MiB",  "filesystem": "fat12", "label": "CONFIG" },
        { "name": "PERSIST", "type": "5F24425A-2DFA-11E8-A270-7B663FACCC2C", "size": "16MiB", "filesystem": "ext4",  "label": "PERSIST" }
      ]
    }
    """

    /// A scratch directory with a layout, a CONFIG directory and a slot payload.
    static func fixture(_ tag: String) throws -> String {
        let d = try tempDir(tag)
        try smallLayout.write(toFile: d + "/layout.json", atomically: true, encoding: .utf8)
        let r = try run([packageRoot + "/scripts/dev-config.sh", d + "/config"])
        guard r.status == 0 else { throw NSError(domain: "dev-config", code: Int(r.status)) }
        var payload = [UInt8](repeating: 0, count: 3 << 20)
        for i in stride(from: 0, to: payload.count, by: 4096) { payload[i] = UInt8(truncatingIfNeeded: i / 4096 + 1) }
        _ = FileManager.default.createFile(atPath: d + "/slot.img", contents: Data(payload))
        try FileManager.default.createDirectory(atPath: d + "/efi/EFI/BOOT", withIntermediateDirectories: true)
        try "# stage 1\n".write(toFile: d + "/efi/EFI/BOOT/grub.cfg", atomically: true, encoding: .utf8)
        return d
    }

    static func build(_ d: String, output: String? = nil, extra: [String] = []) throws -> Result {
        try run([outpost, "image", "build", "--quiet", "--layout", d + "/layout.json", "--config", d + "/config",
                 "--slot", d + "/slot.img", "--efi", d + "/efi", "--output", output ?? d + "/disk.img"] + extra,
                env: ["SOURCE_DATE_EPOCH": "1700000000"])
    }

    static func sha256(_ path: String) throws -> String {
        String(try run(["sha256sum", path]).stdout.prefix(64))
    }

    /// Extracts byte range [start, start+size) of `image` into its own file for fsck.
    static func extract(_ image: String, startLBA: UInt64, sectors: UInt64, to out: String) throws {
        try run(["dd", "if=\(image)", "of=\(out)", "bs=512", "skip=\(startLBA)", "count=\(sectors)", "status=none"])
    }
}
