import Foundation
import Testing
import OutpostDisk

/// `outpost bundle install` stages a bundle in a disk image the way a device installs it,
/// and never writes the committed slot: not on the first run, not when run again while the
/// other slot is already staged (and would boot first), not ever.
@Suite("outpost bundle install")
struct BundleInstallTests {
    @Test func stagingTwiceReplacesTheStagedSlotAndNeverTouchesTheCommittedOne() throws {
        let dir = try Support.tempDir("stage")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let slotBytes = (0..<(4 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 2_654_435_761 >> 11) }
        _ = FileManager.default.createFile(atPath: dir + "/slot.img", contents: Data(slotBytes))
        let sha = try Support.run(["sha256sum", dir + "/slot.img"]).stdout.prefix(64)
        try """
        {"version":"2.0.0","size":\(slotBytes.count),"sha256":"\(sha)","rootOffset":0,"rootDataBlocks":1,"hashOffset":4096,
         "rootHash":"\(String(repeating: "0", count: 64))","salt":"00","kernelSHA256":"","initrdSHA256":"","cmdline":"","grubCfg":""}
        """.write(toFile: dir + "/slot.json", atomically: true, encoding: .utf8)
        try Support.run([Support.outpost, "keys", "generate", "--out", dir + "/keys", "--name", "t"])
        let created = try Support.run([Support.outpost, "bundle", "create", "--quiet", "--key", dir + "/keys/t.key.pem",
                                       "--image-version", "2.0.0", "--slot", dir + "/slot.img", "--output", dir + "/u.bundle"])
        #expect(created.status == 0, "\(created.stderr)")

        let disk = dir + "/disk.img"
        try Support.run(["truncate", "-s", "40M", disk])
        try Support.run(["sgdisk", "-o", "-n", "1:2048:+16M", "-t", "1:5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6", "-c", "1:IMGA",
                         "-n", "2:0:+16M", "-t", "2:5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6", "-c", "2:IMGB", disk])
        try Support.run([Support.outpost, "image", "set-slot", disk, "--slot", "IMGA", "--state", "active"])
        // The committed slot holds "version 1": recognisable bytes that must survive.
        let device = try FileBlockDevice(path: disk, writable: true)
        let gpt = try GPTDisk.read(device).gpt
        let imga = try #require(gpt.number(named: "IMGA"))
        let committed = [UInt8](repeating: 0xA1, count: 16 << 20)
        try device.write(lba: gpt.entries[imga - 1].firstLBA, bytes: committed)
        try device.flush()

        for run in 1...2 {
            let r = try Support.run([Support.outpost, "bundle", "install", "--quiet", "--disk", disk, "--trust", dir + "/keys",
                                     "--state", dir + "/state", dir + "/u.bundle"])
            #expect(r.status == 0, "run \(run): \(r.stderr)")
            #expect(r.stdout.contains("into IMGB"), "run \(run): \(r.stdout)")
            let after = try GPTDisk.read(device).gpt
            #expect(after.entries[imga - 1].slotAttributes.state == .active)
            #expect(after.partitions.first { $0.number != imga && $0.partition.isSlot }?.partition.slotAttributes.state == .updating)
            #expect(try device.read(lba: gpt.entries[imga - 1].firstLBA, count: (16 << 20) / 512) == committed, "run \(run)")
        }

        // No committed slot: refused in one line, nothing written.
        try Support.run([Support.outpost, "image", "set-slot", disk, "--slot", "IMGA", "--state", "unused"])
        let refused = try Support.run([Support.outpost, "bundle", "install", "--disk", disk, "--trust", dir + "/keys",
                                       "--state", dir + "/state", dir + "/u.bundle"])
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("needs exactly one committed (active) slot") && refused.stderr.split(separator: "\n").count == 1,
                "\(refused.stderr)")
    }
}
