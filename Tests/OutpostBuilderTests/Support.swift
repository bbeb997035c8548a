import Foundation
import OutpostTestSupport

/// Helpers shared by the builder tests: find the `outpost` binary built from this package,
/// build a small image from a fixture (commands and directories come from OutpostTestSupport).
enum Support {
    static let packageRoot: String = {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    }()

    static var outpost: String {
        ProcessInfo.processInfo.environment["OUTPOST_BIN"] ?? packageRoot + "/.build/debug/outpost"
    }

    typealias Result = CommandResult

    @discardableResult
    static func run(_ argv: [String], env: [String: String] = [:]) throws -> Result {
        try runCommand(argv, environment: env)
    }

    static func tempDir(_ tag: String) throws -> String { try TemporaryDirectory.create(tag) }

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
        // A managed device's CONFIG (as `outpost-controller init` writes it) names its controller;
        // the development CONFIG does not, and the image tests check that the file is carried.
        try "https://10.0.2.2:8443\n".write(toFile: d + "/config/controller-url", atomically: true, encoding: .utf8)
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
