import ArgumentParser
import Foundation
import OutpostBuilder
import OutpostBundle
import OutpostDisk

struct ImageBuild: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "build",
        abstract: "Assemble a GPT disk image from a declarative layout.",
        discussion: """
            Lays out the partitions of LAYOUT, creates their filesystems, fills CONFIG from \
            --config, writes the slot payload into every slot whose initial state is not \
            'unused', and writes the protective MBR and both GPT copies. With --vault-key, CONFIG \
            also gets vault.json: the vault's approved policies for every slot, signed by that \
            release key (docs/vault.md). The result is bit-identical for the same inputs and \
            SOURCE_DATE_EPOCH (the ECDSA signatures are deterministic, RFC 6979). On any error no \
            output file is left behind.
            """)

    @Option(help: "The layout file (JSON).") var layout: String = "partitions/layout.json"
    @Option(help: "Directory with the CONFIG files: controller-url, root-ca.pem, onboard.cert.pem, onboard.key.pem, network.json.")
    var config: String
    @Option(help: "Slot image to write into the initial slot(s).") var slot: String?
    @Option(help: "Directory tree to copy onto the EFI partition.") var efi: String?
    @Option(name: .shortAndLong, help: "The raw image to write.") var output: String = "out/outpost.img"
    @Option(help: "Also write a qcow2 copy here.") var qcow2: String?
    @Option(help: "The slot manifest (from 'outpost slot build'); default: the slot image's .json.")
    var slotManifest: String?
    @Option(help: "Write the predicted PCR 8/9 of each slot here (needs the slot manifest and --efi).")
    var measurements: String?
    @Option(help: "Release key (PEM) that signs the vault's approved policies into CONFIG's vault.json (needs --slot and --efi).")
    var vaultKey: String?
    @Option(help: "The security version the vault's approved policies allow (as in 'outpost bundle create').")
    var securityVersion: UInt64 = 1
    @Flag(help: "Print a JSON summary on stdout.") var json = false
    @Flag(name: .shortAndLong, help: "No progress lines.") var quiet = false

    func run() throws {
        let epoch = try sourceDateEpoch()
        let layoutValue = try Layout.load(path: layout)
        // The predictions need only the GPT (from the layout), the slot manifest and
        // stage 1: GRUB measures neither CONFIG nor its files, so vault.json can be
        // signed before CONFIG is written.
        let predicted = try (measurements != nil || vaultKey != nil) ? predictMeasurements(gpt: ImageBuilder.table(for: layoutValue)) : nil
        var generated: [String: [UInt8]] = [:]
        if let vaultKey, let predicted {
            let key = try SigningKey.load(path: vaultKey)
            let pcrs = predicted.slots.mapValues { BundleManifest.SlotPCRs(pcr8: $0.pcr8.lowercased(), pcr9: $0.pcr9.lowercased()) }
            generated[VaultApprovals.configFileName] = try VaultApprovals.sign(
                pcrs: pcrs, securityVersion: securityVersion, osVersion: predicted.version, key: key).encoded()
        }
        let inputs = ImageInputs(layout: layoutValue, config: try ConfigInputs.load(directory: config),
                                 slotPayload: slot, efiDirectory: efi, epoch: epoch, generatedConfigFiles: generated)
        let progress = Progress(enabled: !quiet)
        // ImageBuilder writes exactly ImageBuilder.table(for:), the table the predictions came from.
        _ = try ImageBuilder.build(inputs, output: output, progress: progress)
        if let qcow2 {
            progress.step(1, of: 1, "converting to qcow2: \(qcow2)")
            try convertToQcow2(output, output: qcow2)
        }
        if let measurements, let predicted {
            try predicted.write(to: measurements)
            progress.step(1, of: 1, "predicted PCR 8/9 written to \(measurements)")
        }
        // The summary re-reads what was written, so it shows the disk as tools will see it.
        guard json || !quiet else { return }
        let device = try FileBlockDevice(path: output, writable: false)
        let report = DiskReport(image: output, device: device, result: try GPTDisk.read(device))
        print(json ? try report.json() : report.text())
    }
}

extension ImageBuild {
    /// Every slot's predicted PCR 8/9 for the slot manifest and the stage-1 grub.cfg on --efi.
    func predictMeasurements(gpt: GPT) throws -> MeasurementsFile {
        guard let slot else { throw ValidationError("--measurements and --vault-key need --slot") }
        let manifestPath = slotManifest ?? (slot.hasSuffix(".img") ? String(slot.dropLast(4)) : slot) + ".json"
        guard let data = FileManager.default.contents(atPath: manifestPath) else {
            throw BuilderError.missingInput(path: manifestPath, what: "slot manifest")
        }
        let manifest: SlotManifest
        do { manifest = try JSONDecoder().decode(SlotManifest.self, from: data) } catch {
            throw BuilderError.invalidInput(path: manifestPath, message: "not a slot manifest: \(error)")
        }
        guard let efi, let stage1 = FileManager.default.contents(atPath: efi + "/EFI/BOOT/grub.cfg") else {
            throw BuilderError.missingInput(path: (efi ?? "--efi") + "/EFI/BOOT/grub.cfg", what: "stage-1 grub.cfg")
        }
        return try MeasurementsFile.predict(gpt: gpt, manifest: manifest, stage1: Array(stage1))
    }
}

struct ImageInspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "Print an image's GPT: partitions, slot attributes and states.",
        discussion: "Reads through a corrupt primary GPT by using the backup copy, and says so.")

    @Argument(help: "A raw disk image or block device.") var image: String
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        let device = try FileBlockDevice(path: image, writable: false)
        let report = DiskReport(image: image, device: device, result: try GPTDisk.read(device))
        for w in report.warnings { FileHandle.standardError.write(Data("outpost: warning: \(w)\n".utf8)) }
        print(json ? try report.json() : report.text())
    }
}

struct ImageSetSlot: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "set-slot",
        abstract: "Set a slot's state (maintenance: tests and recovery).",
        discussion: "Writes the backup GPT first, then the primary. A damaged copy is rewritten from the valid one.")

    @Argument(help: "A raw disk image or block device.") var image: String
    @Option(help: "The slot partition name, e.g. IMGB.") var slot: String
    @Option(help: "active, updating, inprogress or unused.") var state: SlotState
    @Flag(help: "Print the resulting table as JSON.") var json = false

    func run() throws {
        let device = try FileBlockDevice(path: image, writable: true)
        let found = try GPTDisk.read(device)
        var gpt = found.gpt
        try gpt.setSlot(slot, to: state)
        try GPTDisk.write(gpt, to: device, backupLBA: found.backupLBA)
        let report = DiskReport(image: image, device: device, result: try GPTDisk.read(device))
        print(json ? try report.json() : "\(slot): \(state.rawValue) (0x\(String(state.raw16, radix: 16)))")
    }
}

extension SlotState: ExpressibleByArgument {}

func sourceDateEpoch() throws -> Int {
    guard let s = ProcessInfo.processInfo.environment["SOURCE_DATE_EPOCH"], !s.isEmpty else {
        return 315_532_800  // 1980-01-01, the earliest time FAT can store
    }
    guard let v = Int(s), v >= 315_532_800 else {
        throw ValidationError("SOURCE_DATE_EPOCH='\(s)' must be seconds since 1970, not before 1980")
    }
    return v
}
