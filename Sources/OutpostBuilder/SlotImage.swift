import Crypto
import Foundation
import OutpostDisk

// Composes a slot image (docs/boot.md): boot squashfs at 0, root squashfs at
// R, dm-verity tree at H. The root hash is known only after the root is
// hashed, and it goes into the stage-2 grub.cfg inside the boot squashfs, so
// the root is built first and the boot squashfs last.
//
//   0                R (1 MiB aligned)          H = R + D*4096
//   | boot squashfs  | root squashfs (D blocks) | verity tree |

/// What the builder knows about a slot image: where each part is and what
/// will be measured. Written next to the image as JSON; update bundles carry it.
public struct SlotManifest: Codable, Sendable, Equatable {
    public var version: String
    public var size: UInt64
    public var sha256: String
    public var rootOffset: UInt64
    public var rootDataBlocks: UInt64
    public var hashOffset: UInt64
    public var rootHash: String
    public var salt: String
    public var kernelSHA256: String
    public var initrdSHA256: String
    /// The kernel command line with the slot PARTUUID left as GRUB's variable.
    public var cmdline: String
    /// The stage-2 grub.cfg exactly as stored in the boot squashfs.
    public var grubCfg: String
}

/// The inputs of one slot image.
public struct SlotImageInputs: Sendable {
    public var rootDirectory: String
    public var kernel: String
    public var initramfs: String
    /// The stage-2 template; `@CMDLINE@` and `@VERSION@` are substituted.
    public var stage2Template: String
    public var version: String
    public var seed: String
    public var epoch: Int

    public init(rootDirectory: String, kernel: String, initramfs: String, stage2Template: String,
                version: String, seed: String, epoch: Int) {
        self.rootDirectory = rootDirectory
        self.kernel = kernel
        self.initramfs = initramfs
        self.stage2Template = stage2Template
        self.version = version
        self.seed = seed
        self.epoch = epoch
    }
}

public enum SlotImageBuilder {
    public static func build(_ inputs: SlotImageInputs, output: String, progress: Progress) throws -> SlotManifest {
        let fm = FileManager.default
        for (path, what) in [(inputs.rootDirectory, "root directory"), (inputs.kernel, "kernel"), (inputs.initramfs, "initramfs")] {
            guard fm.fileExists(atPath: path) else { throw BuilderError.missingInput(path: path, what: what) }
        }
        return try AtomicOutput.produce(output) { partial, work in
            try fm.createDirectory(atPath: work + "/boot", withIntermediateDirectories: true)
            return try compose(inputs, work: work, image: partial, progress: progress)
        }
    }

    private static func compose(_ inputs: SlotImageInputs, work: String, image: String, progress: Progress) throws -> SlotManifest {
        let epoch = String(inputs.epoch)
        progress.step(1, of: 4, "root squashfs from \(inputs.rootDirectory)")
        let rootSqfs = work + "/root.sqfs"
        try Tool.run(["mksquashfs", inputs.rootDirectory, rootSqfs, "-noappend", "-quiet", "-no-progress",
                      "-comp", "zstd", "-b", "131072", "-all-root", "-no-xattrs",
                      "-mkfs-time", epoch, "-all-time", epoch, "-processors", "2"], environment: ["SOURCE_DATE_EPOCH": ""])
        let root = try FileBlockDevice(path: rootSqfs, writable: false, sectorSize: 1)
        let blockSize = UInt64(VerityTree.blockSize)
        let dataBlocks = (root.sectorCount + blockSize - 1) / blockSize

        progress.step(2, of: 4, "dm-verity tree over \(dataBlocks) blocks")
        let salt = Array(SHA256.hash(data: Array(("verity-salt\u{0}" + inputs.seed + "\u{0}" + inputs.version).utf8)))
        let tree = try VerityTree.compute(dataBlocks: dataBlocks, salt: salt) { i in
            let off = i * blockSize
            var b = try root.readBytes(offset: off, count: Int(min(blockSize, root.sectorCount - off)))
            if b.count < Int(blockSize) { b += repeatElement(0, count: Int(blockSize) - b.count) }
            return b
        }

        progress.step(3, of: 4, "boot squashfs: stage-2 grub.cfg, kernel, initramfs")
        // The boot squashfs is sized before R is known; build it once with a
        // provisional R, then rebuild if the real R differs (it rarely does).
        var rootOffset = Layout.mib
        var grubCfg = ""
        var bootSqfs = ""
        for _ in 0..<3 {
            grubCfg = renderStage2(inputs, rootOffset: rootOffset, tree: tree)
            bootSqfs = try makeBoot(inputs, grubCfg: grubCfg, work: work, epoch: epoch)
            let bootSize = try FileBlockDevice(path: bootSqfs, writable: false, sectorSize: 1).sectorCount
            let needed = (bootSize + Layout.mib - 1) / Layout.mib * Layout.mib
            if needed == rootOffset { break }
            rootOffset = needed
        }
        let hashOffset = rootOffset + dataBlocks * blockSize

        progress.step(4, of: 4, "writing slot image \(image)")
        try Filesystems.createSparse(image, size: hashOffset + UInt64(tree.tree.count))
        let out = try FileBlockDevice(path: image, writable: true, sectorSize: 1)
        _ = try sparseCopy(from: bootSqfs, into: out, at: 0, limit: rootOffset, progress: progress, label: "boot")
        _ = try sparseCopy(from: rootSqfs, into: out, at: rootOffset, limit: dataBlocks * blockSize, progress: progress, label: "root")
        try out.writeBytes(offset: hashOffset, bytes: tree.tree)
        try out.flush()

        return SlotManifest(
            version: inputs.version, size: out.sectorCount, sha256: try sha256File(image),
            rootOffset: rootOffset, rootDataBlocks: dataBlocks, hashOffset: hashOffset,
            rootHash: tree.rootHashHex, salt: tree.saltHex,
            kernelSHA256: try sha256File(inputs.kernel), initrdSHA256: try sha256File(inputs.initramfs),
            cmdline: cmdline(rootOffset: rootOffset, tree: tree), grubCfg: grubCfg)
    }

    /// The kernel command line of docs/boot.md. GRUB expands the slot variable.
    public static func cmdline(rootOffset: UInt64, tree: VerityTree) -> String {
        let hashOffset = rootOffset + tree.dataBlocks * UInt64(VerityTree.blockSize)
        return "console=ttyS0,115200 quiet panic=10 rdinit=/init outpost.slot=${outpost_slot_uuid} "
            + "outpost.root=\(rootOffset):\(tree.dataBlocks) outpost.verity=\(hashOffset):\(tree.rootHashHex):\(tree.saltHex)"
    }

    static func renderStage2(_ inputs: SlotImageInputs, rootOffset: UInt64, tree: VerityTree) -> String {
        inputs.stage2Template
            .replacingOccurrences(of: "@CMDLINE@", with: cmdline(rootOffset: rootOffset, tree: tree))
            .replacingOccurrences(of: "@VERSION@", with: inputs.version)
    }

    private static func makeBoot(_ inputs: SlotImageInputs, grubCfg: String, work: String, epoch: String) throws -> String {
        let dir = work + "/boot"
        let fm = FileManager.default
        for name in ["grub.cfg", "vmlinuz", "initrd.img"] { try? fm.removeItem(atPath: dir + "/" + name) }
        try grubCfg.write(toFile: dir + "/grub.cfg", atomically: false, encoding: .utf8)
        try fm.copyItem(atPath: inputs.kernel, toPath: dir + "/vmlinuz")
        try fm.copyItem(atPath: inputs.initramfs, toPath: dir + "/initrd.img")
        let out = work + "/boot.sqfs"
        // Uncompressed: the kernel and initramfs are compressed already, and
        // GRUB's squash4 reader then needs no decompressor.
        try Tool.run(["mksquashfs", dir, out, "-noappend", "-quiet", "-no-progress", "-noI", "-noId", "-noD", "-noF", "-noX",
                      "-all-root", "-no-xattrs", "-mkfs-time", epoch, "-all-time", epoch], environment: ["SOURCE_DATE_EPOCH": ""])
        return out
    }
}

/// SHA-256 of a file, streamed in 1 MiB chunks.
public func sha256File(_ path: String) throws -> String {
    let dev = try FileBlockDevice(path: path, writable: false, sectorSize: 1)
    var h = SHA256()
    var off: UInt64 = 0
    while off < dev.sectorCount {
        let n = Int(min(1 << 20, dev.sectorCount - off))
        h.update(data: try dev.readBytes(offset: off, count: n))
        off += UInt64(n)
    }
    return hexString(Array(h.finalize()))
}
