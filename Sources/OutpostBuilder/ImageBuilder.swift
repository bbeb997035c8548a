import Foundation
import OutpostDisk

/// What goes into a factory image, besides the layout itself.
public struct ImageInputs: Sendable {
    public var layout: Layout
    public var config: ConfigInputs
    /// The slot image written into every slot whose initial state is not `unused`.
    public var slotPayload: String?
    /// A directory tree copied onto the EFI partition (stage-1 GRUB and its config).
    public var efiDirectory: String?
    /// SOURCE_DATE_EPOCH: every timestamp in the image.
    public var epoch: Int
    /// Files the builder made itself (the vault's approvals, `vault.json`), by
    /// name, written onto CONFIG beside the config directory's files.
    public var generatedConfigFiles: [String: [UInt8]]

    public init(layout: Layout, config: ConfigInputs, slotPayload: String?, efiDirectory: String?, epoch: Int,
                generatedConfigFiles: [String: [UInt8]] = [:]) {
        self.layout = layout
        self.config = config
        self.slotPayload = slotPayload
        self.efiDirectory = efiDirectory
        self.epoch = epoch
        self.generatedConfigFiles = generatedConfigFiles
    }
}

/// Assembles a GPT disk image: layout → filesystems → slot payload → GPT.
/// The image is built under a temporary name and renamed into place only
/// when complete, so a failed build never leaves a partial image behind.
public enum ImageBuilder {
    public static func build(_ inputs: ImageInputs, output: String, progress: Progress) throws -> GPT {
        let layout = inputs.layout
        let fm = FileManager.default
        if let payload = inputs.slotPayload {
            guard let attrs = try? fm.attributesOfItem(atPath: payload), let size = attrs[.size] as? UInt64 else {
                throw BuilderError.missingInput(path: payload, what: "slot payload")
            }
            if let slot = layout.partitions.first(where: { $0.filesystem == .slot }), size > slot.size {
                throw BuilderError.invalidInput(path: payload, message: "slot payload of \(size) bytes is larger than slot \(slot.name) (\(slot.size) bytes)")
            }
        }
        let efiFiles = try inputs.efiDirectory.map { try listTree($0) } ?? []
        // A generated file never silently replaces one the operator supplied.
        for name in inputs.generatedConfigFiles.keys.sorted() where inputs.config.files.contains(name) {
            throw BuilderError.invalidInput(path: inputs.config.directory + "/" + name,
                                            message: "the builder writes \(name) onto CONFIG itself; remove it from the config directory")
        }

        return try AtomicOutput.produce(output) { partial, work in
            try assemble(inputs, efiFiles: efiFiles, image: partial, work: work, progress: progress)
        }
    }

    private static func assemble(_ inputs: ImageInputs, efiFiles: [(source: String, dest: String)],
                                 image: String, work: String, progress: Progress) throws -> GPT {
        let layout = inputs.layout
        let steps = layout.partitions.count + 2
        progress.step(1, of: steps, "creating \(layout.diskSize / Layout.mib) MiB sparse image")
        try Filesystems.createSparse(image, size: layout.diskSize)
        let disk = try FileBlockDevice(path: image, writable: true)

        for (i, p) in layout.partitions.enumerated() {
            let fsFile = work + "/" + p.name + ".fs"
            let seedPurpose = "\(p.name)"
            switch p.filesystem {
            case .fat12, .fat16, .fat32:
                let bits = p.filesystem == .fat32 ? 32 : (p.filesystem == .fat16 ? 16 : 12)
                var files: [(source: String, dest: String)] = []
                if p.type == PartitionType.config {
                    files = inputs.config.files.map { (inputs.config.directory + "/" + $0, $0) }
                    for (name, bytes) in inputs.generatedConfigFiles.sorted(by: { $0.key < $1.key }) {
                        let staged = work + "/generated-" + name
                        guard FileManager.default.createFile(atPath: staged, contents: Data(bytes)) else {
                            throw BuilderError.io(path: staged, message: "cannot write a generated CONFIG file")
                        }
                        files.append((staged, name))
                    }
                } else if p.type == PartitionType.efiSystem {
                    files = efiFiles
                }
                progress.step(i + 2, of: steps, "\(p.name): FAT\(bits) '\(p.label)', \(files.count) files")
                let vol = GUID.derived(seed: layout.seed, purpose: "fat-volume-id:" + seedPurpose).bytes
                let volumeID = UInt32(vol[0]) | UInt32(vol[1]) << 8 | UInt32(vol[2]) << 16 | UInt32(vol[3]) << 24
                try Filesystems.makeFAT(at: fsFile, size: p.size, bits: bits, label: p.label, volumeID: volumeID,
                                        files: files, epoch: inputs.epoch)
            case .ext4:
                progress.step(i + 2, of: steps, "\(p.name): ext4 '\(p.label)'")
                try Filesystems.makeExt4(at: fsFile, size: p.size, label: p.label,
                                         uuid: GUID.derived(seed: layout.seed, purpose: "ext4-uuid:" + seedPurpose),
                                         epoch: inputs.epoch)
            case .slot:
                guard let payload = inputs.slotPayload, p.slotState != .unused else {
                    progress.step(i + 2, of: steps, "\(p.name): slot left empty (\(p.slotState?.rawValue ?? "-"))")
                    continue
                }
                progress.step(i + 2, of: steps, "\(p.name): writing slot payload (\(p.slotState?.rawValue ?? "-"))")
                _ = try sparseCopy(from: payload, into: disk, at: p.start, limit: p.size, progress: progress, label: p.name)
                continue
            case .none:
                progress.step(i + 2, of: steps, "\(p.name): left empty")
                continue
            }
            _ = try sparseCopy(from: fsFile, into: disk, at: p.start, limit: p.size, progress: progress, label: p.name)
            try? FileManager.default.removeItem(atPath: fsFile)
        }

        progress.step(steps, of: steps, "writing protective MBR and GPT (backup first, then primary)")
        let gpt = try table(for: layout)
        try GPTDisk.write(gpt, to: disk, writeMBR: true)
        return gpt
    }

    /// The GPT a layout describes, with GUIDs derived from the layout's seed.
    public static func table(for layout: Layout) throws -> GPT {
        var gpt = try GPT.empty(sectorCount: layout.diskSize / UInt64(Layout.sectorSize),
                                diskGUID: GUID.derived(seed: layout.seed, purpose: "disk"))
        for (i, p) in layout.partitions.enumerated() {
            gpt.entries[i] = GPTPartition(
                typeGUID: p.type, uniqueGUID: GUID.derived(seed: layout.seed, purpose: "partition:" + p.name),
                firstLBA: p.firstLBA, lastLBA: p.lastLBA,
                attributes: p.slotState.map { $0.attributes.applied(to: 0) } ?? 0, name: p.name)
        }
        return gpt
    }

    /// Every regular file under `root`, as (source path, path relative to root), sorted.
    static func listTree(_ root: String) throws -> [(source: String, dest: String)] {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: root, isDirectory: &isDir), isDir.boolValue else {
            throw BuilderError.missingInput(path: root, what: "EFI directory")
        }
        guard let walker = FileManager.default.enumerator(atPath: root) else { return [] }
        var out: [(String, String)] = []
        while let rel = walker.nextObject() as? String {
            var d: ObjCBool = false
            if FileManager.default.fileExists(atPath: root + "/" + rel, isDirectory: &d), !d.boolValue {
                out.append((root + "/" + rel, rel))
            }
        }
        return out.sorted { $0.1 < $1.1 }
    }
}
