import Foundation
import OutpostTestSupport
import Testing
@testable import OutpostApps

/// A raw base image of `size` bytes, every byte `fill`, read-only as the store keeps it.
func rawBase(_ dir: String, _ name: String = "base.raw", size: Int, fill: UInt8) throws -> BaseImage {
    let path = dir + "/" + name
    try Data(repeating: fill, count: size).write(to: URL(fileURLWithPath: path))
    chmod(path, 0o444)
    return try BaseImage.inspect(path)
}

/// Runs qemu-io commands on an overlay; a failed command (a pattern mismatch too) throws.
@discardableResult
func qemuIO(_ path: String, _ commands: String...) throws -> String {
    try sh(["qemu-io", "-f", "qcow2"] + commands.flatMap { ["-c", $0] } + [path], timeout: .seconds(60))
}

func qemuInfo(_ path: String) throws -> [String: Any] {
    let json = try sh("qemu-img", "info", "--output=json", path, timeout: .seconds(60))
    return try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
}

@Suite("qcow2 overlays written in Swift, checked by qemu-img and qemu-io")
struct QCOW2OverlayTests {
    @Test func theHeaderIsTheQcow2V3LayoutByteForByte() throws {
        let base = BaseImage(path: "/persist/apps/store/verified/abc", format: .raw, virtualSize: 1 << 20)
        let (bytes, fileSize) = try QCOW2Overlay.metadata(base: base, virtualSize: 1 << 20)
        #expect(fileSize == 4 * 65536, "header, refcount table, refcount block, one L1 cluster")
        let golden: [UInt8] = [
            0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3,             // magic, version 3
            0, 0, 0, 0, 0, 0, 0, 128, 0, 0, 0, 32,           // backing file at 128, 32 bytes
            0, 0, 0, 16,                                     // cluster bits
            0, 0, 0, 0, 0, 0x10, 0, 0,                       // size 1 MiB
            0, 0, 0, 0, 0, 0, 0, 1,                          // no encryption, L1 size 1
            0, 0, 0, 0, 0, 3, 0, 0,                          // L1 at cluster 3
            0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1,              // refcount table at cluster 1, one cluster
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,              // no snapshots
        ] + [UInt8](repeating: 0, count: 24) + [              // feature bits
            0, 0, 0, 4, 0, 0, 0, 104,                        // refcount order 4, header length 104
            0xe2, 0x79, 0x2a, 0xca, 0, 0, 0, 3, 0x72, 0x61, 0x77, 0, 0, 0, 0, 0, // backing format "raw"
            0, 0, 0, 0, 0, 0, 0, 0,                          // end of extensions
        ] + Array("/persist/apps/store/verified/abc".utf8)
        #expect(Array(bytes[0..<golden.count]) == golden)
        #expect(bytes[golden.count..<65536].allSatisfy { $0 == 0 })
        #expect(Array(bytes[65536..<65544]) == [0, 0, 0, 0, 0, 2, 0, 0], "refcount table[0] → cluster 2")
        #expect(Array(bytes[131072..<131082]) == [0, 1, 0, 1, 0, 1, 0, 1, 0, 0], "clusters 0–3 counted once")
    }

    @Test(arguments: [BaseImage.Format.raw, .qcow2])
    func qemuImgAcceptsTheOverlayAndReportsItsBacking(format: BaseImage.Format) throws {
        let tmp = try TemporaryDirectory("qcow2-info")
        let basePath = tmp.path + "/base." + format.rawValue
        if format == .raw {
            try Data(repeating: 7, count: 3 << 20).write(to: URL(fileURLWithPath: basePath))
        } else {
            try sh("qemu-img", "create", "-q", "-f", "qcow2", basePath, "3M")
        }
        let base = try BaseImage.inspect(basePath)
        #expect(base == BaseImage(path: basePath, format: format, virtualSize: 3 << 20))
        let overlay = tmp.path + "/disk.qcow2"
        let info = try QCOW2Overlay.create(at: overlay, base: base, minimumSize: 10_000_000)
        #expect(info.virtualSize == 10_000_384, "grown to maxsize, rounded up to a sector")

        let check = try sh("qemu-img", "check", overlay)
        #expect(check.contains("No errors were found"), "\(check)")
        let json = try qemuInfo(overlay)
        #expect(json["format"] as? String == "qcow2")
        #expect(json["virtual-size"] as? Int == 10_000_384)
        #expect(json["cluster-size"] as? Int == 65536)
        #expect(json["backing-filename"] as? String == basePath)
        #expect(json["backing-filename-format"] as? String == format.rawValue)
        #expect((json["format-specific"] as? [String: Any]).flatMap { $0["data"] as? [String: Any] }?["compat"] as? String == "1.1")
        #expect(try QCOW2Overlay.info(overlay) == info)
    }

    @Test func theOverlayReadsTheBaseThroughAndKeepsItsOwnWrites() throws {
        let tmp = try TemporaryDirectory("qcow2-io")
        let base = try rawBase(tmp.path, size: 4 << 20, fill: 0x5a)
        let baseDigest = try sh("sha256sum", base.path)
        let overlay = tmp.path + "/disk.qcow2"
        try QCOW2Overlay.create(at: overlay, base: base, minimumSize: 8 << 20)

        try qemuIO(overlay, "write -P 0xab 1M 64k", "write -P 0xcd 6M 4k")
        try qemuIO(overlay, "read -P 0xab 1M 64k", "read -P 0x5a 0 1M", "read -P 0x5a 1088k 2944k",
                   "read -P 0 4M 2M", "read -P 0xcd 6M 4k")
        #expect(throws: (any Error).self, "a wrong pattern fails qemu-io") { try qemuIO(overlay, "read -P 0x5a 1M 4k") }
        #expect(try sh("sha256sum", base.path) == baseDigest, "the base is untouched")
        #expect(try sh("qemu-img", "check", overlay).contains("No errors were found"))

        // The whole disk as qemu-img convert sees it.
        try sh("qemu-img", "convert", "-O", "raw", overlay, tmp.path + "/flat.raw")
        let flat = try Data(contentsOf: URL(fileURLWithPath: tmp.path + "/flat.raw"))
        #expect(flat.count == 8 << 20)
        #expect(flat[0] == 0x5a && flat[(1 << 20) - 1] == 0x5a)
        #expect(flat[1 << 20] == 0xab && flat[(1 << 20) + 65535] == 0xab && flat[(1 << 20) + 65536] == 0x5a)
        #expect(flat[(4 << 20) - 1] == 0x5a && flat[4 << 20] == 0)
        #expect(flat[6 << 20] == 0xcd)
    }

    @Test func aQcow2BaseIsReadThrough() throws {
        let tmp = try TemporaryDirectory("qcow2-on-qcow2")
        let basePath = tmp.path + "/base.qcow2"
        try sh("qemu-img", "create", "-q", "-f", "qcow2", basePath, "2M")
        try qemuIO(basePath, "write -P 0x11 0 64k")
        let overlay = tmp.path + "/disk.qcow2"
        try QCOW2Overlay.create(at: overlay, base: try BaseImage.inspect(basePath), minimumSize: 0)
        try qemuIO(overlay, "read -P 0x11 0 64k", "read -P 0 64k 64k", "write -P 0x22 0 4k", "read -P 0x22 0 4k", "read -P 0x11 4k 60k")
        try qemuIO(basePath, "read -P 0x11 0 64k")
    }

    @Test func aQcow2BaseThatNamesAnotherFileIsRefused() throws {
        let tmp = try TemporaryDirectory("qcow2-evil")
        _ = try rawBase(tmp.path, size: 1 << 20, fill: 0)
        let evil = tmp.path + "/evil.qcow2"
        try sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", tmp.path + "/base.raw", "-F", "raw", evil)
        #expect(refusal { _ = try BaseImage.inspect(evil) } == "\(evil): qcow2 image has a backing file of its own")
        let data = tmp.path + "/data.qcow2"
        try sh("qemu-img", "create", "-q", "-f", "qcow2", "-o", "data_file=\(tmp.path)/data.bin", data, "1M")
        #expect(refusal { _ = try BaseImage.inspect(data) } == "\(data): qcow2 image keeps its data in an external file")
        FileManager.default.createFile(atPath: tmp.path + "/empty", contents: Data())
        #expect(refusal { _ = try BaseImage.inspect(tmp.path + "/empty") } == "\(tmp.path)/empty: is empty")
    }

    /// No copy: the overlay's allocated bytes stay a few clusters whatever the base's size. The time
    /// is printed (a figure, not an assertion: timing belongs to bench/).
    @Test func creatingAnOverlayOnAOneGiBImageCopiesNothing() throws {
        let tmp = try TemporaryDirectory("qcow2-fast")
        let basePath = tmp.path + "/big.raw"
        try sh("truncate", "-s", "1G", basePath)
        let base = try BaseImage.inspect(basePath)
        let overlay = tmp.path + "/disk.qcow2"
        let clock = ContinuousClock()
        let elapsed = try clock.measure { try QCOW2Overlay.create(at: overlay, base: base, minimumSize: 1 << 40) }
        print("qcow2 overlay over a 1 GiB base (1 TiB virtual) created in \(elapsed)")
        var st = stat()
        stat(overlay, &st)
        #expect(st.st_blocks * 512 <= 256 << 10, "allocated \(st.st_blocks * 512) bytes")
        let json = try qemuInfo(overlay)
        #expect(json["virtual-size"] as? Int == 1 << 40)
        #expect(try sh("qemu-img", "check", overlay).contains("No errors were found"))
    }

    @Test func restartKeepsTheOverlayPurgeRecreatesItFromTheBase() throws {
        let tmp = try TemporaryDirectory("qcow2-lifecycle")
        let first = try rawBase(tmp.path, "first.raw", size: 1 << 20, fill: 0x01)
        let second = try rawBase(tmp.path, "second.raw", size: 1 << 20, fill: 0x02)
        let path = tmp.path + "/disk.qcow2"
        let disk = InstanceDisk(path: path, base: first, minimumSize: 2 << 20)
        #expect(try disk.prepare(purge: false) == .created)
        try qemuIO(path, "write -P 0x77 0 4k")
        #expect(try disk.prepare(purge: false) == .kept, "restart")
        try qemuIO(path, "read -P 0x77 0 4k")
        #expect(try disk.prepare(purge: true) == .created, "purge")
        try qemuIO(path, "read -P 0x01 0 4k")

        // A new image: preserve keeps the old overlay (and its base), otherwise a fresh one.
        try qemuIO(path, "write -P 0x77 0 4k")
        let changed = InstanceDisk(path: path, base: second, minimumSize: 2 << 20)
        #expect(try changed.prepare(purge: false, preserve: true) == .kept)
        try qemuIO(path, "read -P 0x77 0 4k", "read -P 0x01 4k 4k")
        #expect(try changed.prepare(purge: false, preserve: false) == .created)
        try qemuIO(path, "read -P 0x02 0 4k")
        #expect(try QCOW2Overlay.info(path).backingFile == second.path)
        #expect(!FileManager.default.fileExists(atPath: path + ".new"))
    }

    @Test func randomHeadersAreRefusedNeverACrash() throws {
        var rng = SplitMix64.forTest()
        let tmp = try TemporaryDirectory("qcow2-fuzz")
        let base = BaseImage(path: tmp.path + "/b", format: .raw, virtualSize: 1 << 20)
        let (good, _) = try QCOW2Overlay.metadata(base: base, virtualSize: 1 << 20)
        let path = tmp.path + "/fuzz.qcow2"
        for round in 0..<400 {
            var bytes = Array(good[0..<(round % 2 == 0 ? 65536 : Int.random(in: 0...300, using: &rng))])
            for _ in 0..<Int.random(in: 1...12, using: &rng) where !bytes.isEmpty {
                bytes[Int.random(in: 0..<min(bytes.count, 200), using: &rng)] = UInt8.random(in: 0...255, using: &rng)
            }
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            do { _ = try QCOW2Overlay.info(path) } catch { #expect(!error.description.contains("\n")) }
            do { _ = try BaseImage.inspect(path) } catch { #expect(!error.description.contains("\n")) }
        }
    }

    @Test func sizesBeyondWhatQemuOpensAreRefused() throws {
        let base = BaseImage(path: "/b", format: .raw, virtualSize: 1)
        #expect(refusal { _ = try QCOW2Overlay.metadata(base: base, virtualSize: 1 << 62) }
            == "/b: a virtual size of \(UInt64(1) << 62) bytes is not within 1 byte...2 PiB")
        #expect(refusal { _ = try QCOW2Overlay.metadata(base: BaseImage(path: "relative", format: .raw, virtualSize: 1), virtualSize: 512) }
            == "relative: a backing file must be an absolute path of at most 1023 bytes")
    }
}
