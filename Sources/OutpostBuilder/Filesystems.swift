import Foundation
import OutpostDisk

/// Creates each partition's filesystem as a standalone file with Debian's mkfs
/// tools, pinning every value they would otherwise take from the clock or a
/// random source (volume IDs, UUIDs, hash seeds, timestamps).
enum Filesystems {
    /// A FAT filesystem holding `files` (source path → name in the root, or
    /// a path with '/' to create directories first).
    static func makeFAT(at path: String, size: UInt64, bits: Int, label: String, volumeID: UInt32,
                        files: [(source: String, dest: String)], epoch: Int) throws {
        try createSparse(path, size: size)
        // --invariant pins mkfs.fat's clock-derived fields but also forces the
        // volume ID to 1234-ABCD; patch in our seeded ID afterwards so two FAT
        // partitions on one disk still have distinct IDs.
        try Tool.run(["mkfs.fat", "-F", String(bits), "-n", label, "--invariant", path])
        try patchVolumeID(path, bits: bits, volumeID: volumeID)
        let env = ["SOURCE_DATE_EPOCH": String(epoch), "MTOOLS_SKIP_CHECK": "1"]
        var made = Set<String>()
        for (source, dest) in files.sorted(by: { $0.dest < $1.dest }) {
            let parts = dest.split(separator: "/").map(String.init)
            var dir = ""
            for p in parts.dropLast() {
                dir += "/" + p
                if made.insert(dir).inserted { try Tool.run(["mmd", "-i", path, "::" + dir], environment: env) }
            }
            // Copy through a staged file whose timestamps are pinned, so the
            // FAT dates do not depend on when the input was checked out.
            let staged = path + ".stage"
            try? FileManager.default.removeItem(atPath: staged)
            try FileManager.default.copyItem(atPath: source, toPath: staged)
            try FileManager.default.setAttributes([.modificationDate: Date(timeIntervalSince1970: TimeInterval(epoch))], ofItemAtPath: staged)
            defer { try? FileManager.default.removeItem(atPath: staged) }
            try Tool.run(["mcopy", "-m", "-o", "-i", path, staged, "::/" + dest], environment: env)
        }
    }

    /// Writes the volume serial number into the FAT boot sector: offset 0x43 on
    /// FAT32 (extended BPB after the 32-bit fields), 0x27 on FAT12/16.
    static func patchVolumeID(_ path: String, bits: Int, volumeID: UInt32) throws {
        let dev = try FileBlockDevice(path: path, writable: true)
        var sector = try dev.read(lba: 0, count: 1)
        let offset = bits == 32 ? 0x43 : 0x27
        for i in 0..<4 { sector[offset + i] = UInt8(truncatingIfNeeded: volumeID >> (8 * UInt32(i))) }
        try dev.write(lba: 0, bytes: sector)
        if bits == 32 {
            // FAT32 keeps a backup boot sector at sector 6; keep it identical.
            var backup = try dev.read(lba: 6, count: 1)
            for i in 0..<4 { backup[offset + i] = sector[offset + i] }
            try dev.write(lba: 6, bytes: backup)
        }
        try dev.flush()
    }

    /// An empty ext4 filesystem with a pinned UUID and hash seed.
    static func makeExt4(at path: String, size: UInt64, label: String, uuid: GUID, epoch: Int) throws {
        try createSparse(path, size: size)
        let u = uuid.description.lowercased()
        try Tool.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-L", label, "-U", u,
                      "-E", "hash_seed=\(u),root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0", path],
                     environment: ["E2FSPROGS_FAKE_TIME": String(epoch)])
    }

    static func createSparse(_ path: String, size: UInt64) throws {
        guard FileManager.default.createFile(atPath: path, contents: nil),
              let h = FileHandle(forWritingAtPath: path) else {
            throw BuilderError.io(path: path, message: "cannot create file")
        }
        defer { try? h.close() }
        try h.truncate(atOffset: size)
    }

    static func hex(_ v: UInt32) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: 8 - s.count) + s
    }
}

/// Copies `source` into `device` at a byte offset, skipping all-zero chunks so
/// the (pre-zeroed, sparse) image stays sparse and the copy stays fast.
func sparseCopy(from source: String, into device: FileBlockDevice, at offset: UInt64, limit: UInt64,
                progress: Progress, label: String) throws -> UInt64 {
    let src = try FileBlockDevice(path: source, writable: false, sectorSize: 1)
    let total = src.sectorCount
    guard total <= limit else {
        throw BuilderError.invalidInput(path: source, message: "\(total) bytes do not fit in \(label) (\(limit) bytes)")
    }
    let chunk: UInt64 = 1 << 20
    var done: UInt64 = 0
    var lastReport: UInt64 = 0
    while done < total {
        let n = Int(min(chunk, total - done))
        let bytes = try src.readBytes(offset: done, count: n)
        if bytes.contains(where: { $0 != 0 }) {
            try device.writeBytes(offset: offset + done, bytes: bytes)
        }
        done += UInt64(n)
        if total > 32 * chunk, done - lastReport >= 16 * chunk || done == total {
            progress.percent(label, done: done, total: total)
            lastReport = done
        }
    }
    return total
}
