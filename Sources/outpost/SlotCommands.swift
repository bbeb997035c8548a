import ArgumentParser
import Foundation
import OutpostBuilder

struct SlotCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "slot", abstract: "Build slot images (kernel, initramfs, verity-checked root).",
        subcommands: [SlotBuild.self])
}

struct SlotBuild: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "build",
        abstract: "Assemble a slot image from rootfs/ and an outpostd binary.",
        discussion: """
            Fetches the pinned Debian kernel and the packages of rootfs/packages.txt (cached under \
            $OUTPOST_CACHE, default /var/cache/outpost), stages the root tree, builds the initramfs, \
            then writes the slot image of docs/boot.md and its manifest (JSON): offsets, dm-verity \
            root hash and salt, kernel/initramfs digests and the stage-2 grub.cfg.
            """)

    @Option(help: "The rootfs/ directory (packages.txt, modules.txt, overlay/).") var rootfs = "rootfs"
    @Option(help: "The outpostd binary (release, --static-swift-stdlib).") var outpostd: String?
    @Option(name: .customLong("init"),
            help: "The initramfs's /init: outpost-init (early boot only, then it execs the root's outpostd). Default: the outpostd binary itself.")
    var initBinary: String?
    @Option(help: "Use this kernel instead of the pinned Debian one (with --initramfs and --root-dir).") var kernel: String?
    @Option(help: "Use this initramfs instead of assembling one.") var initramfs: String?
    @Option(help: "Use this staged root directory instead of assembling one.") var rootDir: String?
    @Option(help: "The OS version this slot carries.") var imageVersion = "1.0.0"
    @Option(help: "The stage-2 grub.cfg template.") var stage2 = "grub/stage2.cfg.in"
    @Option(help: "Seed for the verity salt (reproducible builds).") var seed = "outpost-slot"
    @Option(help: "Trust anchors to bake into the root (/etc/outpost/trust): public key PEMs and revoked.txt.")
    var trust: String?
    @Option(help: "The board name updates must be built for (/etc/outpost/board).") var board = "generic-efi"
    @Option(name: .shortAndLong, help: "The slot image to write.") var output = "out/slot.img"
    @Option(help: "Where to write the slot manifest (default: OUTPUT with .json).") var manifest: String?
    @Option(help: "Scratch directory.") var work = "out/slot-work"
    @Flag(help: "Print the manifest on stdout.") var json = false
    @Flag(name: .shortAndLong, help: "No progress lines.") var quiet = false

    func run() throws {
        let epoch = try sourceDateEpoch()
        let progress = Progress(enabled: !quiet)
        guard let template = try? String(contentsOfFile: stage2, encoding: .utf8) else {
            throw BuilderError.missingInput(path: stage2, what: "stage-2 grub.cfg template")
        }
        let (kernelPath, initrdPath, rootPath) = try inputs(epoch: epoch, progress: progress)
        let m = try SlotImageBuilder.build(
            SlotImageInputs(rootDirectory: rootPath, kernel: kernelPath, initramfs: initrdPath,
                            stage2Template: template, version: imageVersion, seed: seed, epoch: epoch),
            output: output, progress: progress)
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        let data = try enc.encode(m)
        let manifestPath = manifest ?? (output.hasSuffix(".img") ? String(output.dropLast(4)) : output) + ".json"
        try data.write(to: URL(fileURLWithPath: manifestPath))
        if json {
            print(String(decoding: data, as: UTF8.self))
        } else if !quiet {
            print("slot image: \(output) (\(m.size >> 20) MiB), version \(m.version)")
            print("root hash:  \(m.rootHash)")
            print("manifest:   \(manifestPath)")
        }
    }

    /// Copies the update trust anchors (public keys only) and the board name
    /// into the root, where the agent's update engine reads them.
    func bakeIdentity(into root: String) throws {
        let fm = FileManager.default
        let etc = root + "/etc/outpost"
        try fm.createDirectory(atPath: etc + "/trust", withIntermediateDirectories: true)
        try (board + "\n").write(toFile: etc + "/board", atomically: false, encoding: .utf8)
        guard let trust else { return }
        guard let names = try? fm.contentsOfDirectory(atPath: trust) else {
            throw BuilderError.missingInput(path: trust, what: "trust anchor directory")
        }
        var keys = 0
        for name in names.sorted() {
            let path = trust + "/" + name
            guard let data = fm.contents(atPath: path) else { continue }
            let text = String(decoding: data, as: UTF8.self)
            if name.hasSuffix(".pem") {
                // Never bake a private key into an image, even by mistake.
                if text.contains("PRIVATE KEY") { continue }
                guard text.contains("BEGIN PUBLIC KEY") else {
                    throw BuilderError.invalidInput(path: path, message: "not a PEM public key")
                }
                keys += 1
            } else if name != "revoked.txt" {
                continue
            }
            try fm.copyItem(atPath: path, toPath: etc + "/trust/" + name)
        }
        guard keys > 0 else { throw BuilderError.invalidInput(path: trust, message: "no public keys (*.pem) to trust") }
    }

    /// The kernel, initramfs and root tree: given explicitly (benchmarks,
    /// tests), or assembled from rootfs/ around an outpostd binary.
    func inputs(epoch: Int, progress: OutpostBuilder.Progress) throws -> (String, String, String) {
        if let kernel, let initramfs, let rootDir { return (kernel, initramfs, rootDir) }
        guard kernel == nil, initramfs == nil, rootDir == nil else {
            throw ValidationError("--kernel, --initramfs and --root-dir go together")
        }
        guard let outpostd else { throw ValidationError("--outpostd is required to assemble a slot from rootfs/") }
        guard FileManager.default.isExecutableFile(atPath: outpostd) else {
            throw BuilderError.missingInput(path: outpostd, what: "outpostd binary")
        }
        // Both binaries are checked before minutes of root assembly, not after.
        if let initBinary, !FileManager.default.isExecutableFile(atPath: initBinary) {
            throw BuilderError.missingInput(path: initBinary, what: "outpost-init binary (--init)")
        }
        let assembly = SlotAssembly(rootfs: URL(fileURLWithPath: rootfs), work: URL(fileURLWithPath: work),
                                    sourceDateEpoch: UInt32(epoch))
        progress.step(1, of: 3, "kernel: \(SlotAssembly.defaultKernelPackage)")
        let kernel = try assembly.fetchKernel()
        progress.step(2, of: 3, "root tree: packages, modules, overlay, outpostd \(imageVersion)")
        let binary = URL(fileURLWithPath: outpostd)
        let root = try assembly.assembleRoot(kernel: kernel, outpostd: binary, version: imageVersion)
        try bakeIdentity(into: root.path)
        progress.step(3, of: 3, "initramfs")
        let initial = initBinary.map { URL(fileURLWithPath: $0) } ?? binary
        let initrd = try assembly.buildInitramfs(kernel: kernel, outpostd: initial, libraryRoot: root)
        return (kernel.vmlinuz.path, initrd.path, root.path)
    }
}
