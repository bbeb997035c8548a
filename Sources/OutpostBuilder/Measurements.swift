import Crypto

// Predicts the TPM PCR 8 and PCR 9 values (SHA-256 bank) that Debian's
// GRUB 2.06 leaves after booting an Outpost slot, so that the builder can
// publish them next to an image (for sealing and for remote attestation).
//
// Where the events come from (grub2 2.06-13 source, confirmed with swtpm):
//  - commands/tpm.c registers a verifier. Once the `tpm` module is loaded
//    (it is embedded in BOOTX64.EFI, so from the very start) it extends
//      PCR 8 with SHA-256(text) of every command the *script* parser runs
//        (script/execute.c: argv after variable expansion and quote removal,
//        joined with single spaces; measured before the command runs, so a
//        failing command is measured too). The embedded early config runs
//        under the rescue parser (kern/main.c -> grub_parser_execute), which
//        measures nothing.
//      PCR 8 with SHA-256(cmdline) of the kernel command line, from
//        lib/cmdline.c: "/vmlinuz arg1 arg2 ..." (the BOOT_IMAGE= prefix the
//        kernel sees is not part of it).
//      PCR 9 with SHA-256(file bytes) of every file GRUB opens through
//        grub_file_open: the stage-1 config, the stage-2 config, the kernel
//        and the initrd, in that order. (Modules are embedded, and nested
//        `source` does not read $prefix/*.lst, so nothing else is opened.)
//  - efi/tpm.c hands the buffer to EFI_TCG2_PROTOCOL.HashLogExtendEvent, so
//    the digest is a plain SHA-256 of the bytes; the "grub_cmd: ..." text is
//    only the event log description. OVMF/firmware never extend PCR 8 or 9.
//  - A PCR starts as 32 zero bytes; extend(p, d) = SHA-256(p || d).
//
// The measured event list for a normal boot of slot S (name N, part P,
// PARTUUID U) is therefore, in order:
//   PCR 8: set timeout=0 | serial --unit=0 --speed=115200 |
//          terminal_input serial console | terminal_output serial console |
//          outpost_select --set-root | echo outpost-grub: booting N (P) |
//          source /grub.cfg | echo outpost-stage2: Outpost VERSION from N |
//          "[ -z  ]" | linux /vmlinuz CMDLINE(U) | kernel: /vmlinuz CMDLINE(U) |
//          initrd /initrd.img | boot
//   PCR 9: stage-1 grub.cfg | stage-2 grub.cfg | vmlinuz | initrd.img
// and for the rescue boot (no slot qualified) stage 1 instead runs
//   outpost_select --set-root (fails) | set outpost_rescue=no-bootable-slot |
//   outpost_select --rescue --set-root | echo outpost-grub: no bootable slot;
//   rescue booting N (P) | source /grub.cfg
// and stage 2 tests "[ -z no-bootable-slot ]" and appends
// outpost.rescue=no-bootable-slot to the kernel command line.
//
// Why model rather than interpret: GRUB's script language is large; the
// configs (grub/stage1.cfg, grub/stage2.cfg.in) are kept deterministic per
// slot instead (no disk names: outpost_select finds the disk from $root and
// sets $root itself), and this file lists the lines they execute. As a guard
// against drift, every modelled line must be a line of the config text that
// is passed in (or its `if LINE; then`), or prediction throws; a command
// added to a config is caught only by the QEMU test. The QEMU + swtpm test
// (grub/test-measured-boot.sh) is the final check against a real TPM.

/// The slot stage 1 chose, as outpost_select reports it.
public struct GrubSlotChoice: Sendable, Equatable {
    /// Partition name, e.g. "IMGA" (`outpost_slot_name`).
    public var name: String
    /// GRUB partition name, e.g. "gpt2" (`outpost_slot_part`).
    public var part: String
    /// PARTUUID, upper case, 8-4-4-4-12 (`outpost_slot_uuid`).
    public var uuid: String

    public init(name: String, part: String, uuid: String) {
        self.name = name
        self.part = part
        self.uuid = uuid.uppercased()
    }
}

/// Everything GRUB measures on one boot, as the builder knows it.
public struct GrubBootInputs: Sendable {
    /// /EFI/BOOT/grub.cfg on the EFI partition (grub/stage1.cfg), exact bytes.
    public var stage1Config: [UInt8]
    /// /grub.cfg in the slot's boot squashfs (rendered grub/stage2.cfg.in), exact bytes.
    public var stage2Config: [UInt8]
    /// The kernel command line substituted for @CMDLINE@, with
    /// `${outpost_slot_uuid}` still unexpanded (SlotManifest.cmdline).
    public var cmdline: String
    /// The payload version substituted for @VERSION@.
    public var version: String
    /// SHA-256 of /vmlinuz and /initrd.img (hex, as in SlotManifest).
    public var kernelSHA256: String
    public var initrdSHA256: String
    public var slot: GrubSlotChoice
    /// True for the documented rescue boot (no slot qualified).
    public var rescue: Bool

    public init(stage1Config: [UInt8], stage2Config: [UInt8], cmdline: String, version: String,
                kernelSHA256: String, initrdSHA256: String, slot: GrubSlotChoice, rescue: Bool = false) {
        self.stage1Config = stage1Config
        self.stage2Config = stage2Config
        self.cmdline = cmdline
        self.version = version
        self.kernelSHA256 = kernelSHA256
        self.initrdSHA256 = initrdSHA256
        self.slot = slot
        self.rescue = rescue
    }
}

/// One TPM extend operation, with the text GRUB logs for it.
public struct MeasuredEvent: Sendable, Equatable {
    public var pcr: Int
    public var digest: [UInt8]
    public var description: String
}

/// The predicted PCR values and the events that produce them.
public struct PCRPrediction: Sendable, Equatable {
    public var pcr8: [UInt8]
    public var pcr9: [UInt8]
    public var events: [MeasuredEvent]
    /// Upper-case hex, as /sys/class/tpm/tpm0/pcr-sha256/N prints it.
    public var pcr8Hex: String { GrubMeasurements.hex(pcr8) }
    public var pcr9Hex: String { GrubMeasurements.hex(pcr9) }
}

public enum MeasurementError: Error, Equatable, CustomStringConvertible {
    case badDigest(what: String, value: String)
    case configDrift(config: String, missingLine: String)
    case unsupportedCmdline(String)

    public var description: String {
        switch self {
        case let .badDigest(what, value):
            return "\(what) SHA-256 is not 64 hex digits: '\(value)'"
        case let .configDrift(config, line):
            return "\(config) no longer contains the measured line '\(line)'; "
                + "update Sources/OutpostBuilder/Measurements.swift together with grub/"
        case let .unsupportedCmdline(why):
            return "kernel command line cannot be predicted: \(why)"
        }
    }
}

public enum GrubMeasurements {
    public static let stringPCR = 8
    public static let binaryPCR = 9
    /// The value outpost_select's rescue path passes to stage 2.
    public static let rescueReason = "no-bootable-slot"

    /// Predicts PCR 8 and PCR 9 after GRUB hands over to the kernel.
    public static func predict(_ inputs: GrubBootInputs) throws(MeasurementError) -> PCRPrediction {
        let events = try self.events(inputs)
        let zero = [UInt8](repeating: 0, count: 32)
        var pcr8 = zero, pcr9 = zero
        for e in events {
            if e.pcr == stringPCR { pcr8 = extend(pcr8, e.digest) } else { pcr9 = extend(pcr9, e.digest) }
        }
        return PCRPrediction(pcr8: pcr8, pcr9: pcr9, events: events)
    }

    /// The ordered event list (both PCRs interleaved as GRUB runs).
    public static func events(_ inputs: GrubBootInputs) throws(MeasurementError) -> [MeasuredEvent] {
        let kernel = try digest(hex: inputs.kernelSHA256, what: "kernel")
        let initrd = try digest(hex: inputs.initrdSHA256, what: "initrd")
        let env = [
            "outpost_slot_name": inputs.slot.name, "outpost_slot_part": inputs.slot.part,
            "outpost_slot_uuid": inputs.slot.uuid, "outpost_rescue": inputs.rescue ? rescueReason : "",
        ]
        let lines1 = configLines(inputs.stage1Config), lines2 = configLines(inputs.stage2Config)
        var out: [MeasuredEvent] = []
        func command(_ line: String, in lines: Set<String>, _ name: String) throws(MeasurementError) {
            guard lines.contains(line) || lines.contains("if \(line); then") else {
                throw .configDrift(config: name, missingLine: line)
            }
            let measured = expand(line, env)
            out.append(MeasuredEvent(pcr: stringPCR, digest: sha256(measured), description: "grub_cmd: " + measured))
        }
        func file(_ digest: [UInt8], _ path: String) {
            out.append(MeasuredEvent(pcr: binaryPCR, digest: digest, description: path))
        }

        // Stage 1, read by the (unmeasured) embedded early config.
        file(sha256(inputs.stage1Config), "/EFI/BOOT/grub.cfg")
        let stage1 = "stage-1 grub.cfg"
        for line in ["set timeout=0", "serial --unit=0 --speed=115200",
                     "terminal_input serial console", "terminal_output serial console",
                     "outpost_select --set-root"] {
            try command(line, in: lines1, stage1)
        }
        if inputs.rescue {
            try command("set outpost_rescue=\(rescueReason)", in: lines1, stage1)
            try command("outpost_select --rescue --set-root", in: lines1, stage1)
            try command("echo \"outpost-grub: no bootable slot; rescue booting ${outpost_slot_name} (${outpost_slot_part})\"",
                        in: lines1, stage1)
        } else {
            try command("echo \"outpost-grub: booting ${outpost_slot_name} (${outpost_slot_part})\"", in: lines1, stage1)
        }
        try command("source /grub.cfg", in: lines1, stage1)

        // Stage 2, from the slot.
        file(sha256(inputs.stage2Config), "/grub.cfg")
        let stage2 = "stage-2 grub.cfg"
        try command("echo \"outpost-stage2: Outpost \(inputs.version) from ${outpost_slot_name}\"", in: lines2, stage2)
        try command("[ -z \"${outpost_rescue}\" ]", in: lines2, stage2)
        let linux = "linux /vmlinuz " + inputs.cmdline + (inputs.rescue ? " outpost.rescue=${outpost_rescue}" : "")
        try checkCmdline(inputs.cmdline)
        try command(linux, in: lines2, stage2)
        // The loader measures the kernel file, then its command line.
        file(kernel, "/vmlinuz")
        let kernelCmdline = expand(String(linux.dropFirst("linux ".count)), env)
        out.append(MeasuredEvent(pcr: stringPCR, digest: sha256(kernelCmdline),
                                 description: "kernel_cmdline: " + kernelCmdline))
        try command("initrd /initrd.img", in: lines2, stage2)
        file(initrd, "/initrd.img")
        try command("boot", in: lines2, stage2)
        return out
    }

    /// PCR extend: SHA-256(old || digest).
    public static func extend(_ pcr: [UInt8], _ digest: [UInt8]) -> [UInt8] {
        var h = SHA256()
        h.update(data: pcr)
        h.update(data: digest)
        return Array(h.finalize())
    }

    public static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789ABCDEF")
        return String(bytes.flatMap { [digits[Int($0 >> 4)], digits[Int($0 & 15)]] })
    }

    // MARK: - GRUB script semantics for the subset the configs use

    /// What script/execute.c measures for a simple command line: `${var}`
    /// replaced by its value and double quotes removed. Every word in our
    /// configs is separated by exactly one space, so joining GRUB's argv with
    /// single spaces gives back the line with quotes dropped; an empty
    /// quoted word ("") leaves its two separating spaces, as in GRUB.
    static func expand(_ line: String, _ env: [String: String]) -> String {
        var s = line
        for (name, value) in env { s = s.replacing("${\(name)}", with: value) }
        return String(s.filter { $0 != "\"" })
    }

    /// The command line is inserted unquoted into a GRUB script line, so it
    /// must be plain words: anything GRUB would split, quote, escape or
    /// expand differently (lib/cmdline.c escapes quotes and backslashes)
    /// would make the prediction wrong.
    static func checkCmdline(_ cmdline: String) throws(MeasurementError) {
        let withoutSlot = cmdline.replacing("${outpost_slot_uuid}", with: "")
        if let bad = withoutSlot.first(where: { "\"'\\$;|&<>{}#\t\n\r".contains($0) }) {
            throw .unsupportedCmdline("contains '\(bad)'")
        }
        if cmdline.contains("  ") || cmdline.hasPrefix(" ") || cmdline.hasSuffix(" ") {
            throw .unsupportedCmdline("words must be separated by exactly one space")
        }
    }

    /// The config's lines, trimmed, for the drift guard.
    static func configLines(_ bytes: [UInt8]) -> Set<String> {
        let blank: Set<Character> = [" ", "\t", "\r"]
        var lines = Set<String>()
        for raw in String(decoding: bytes, as: UTF8.self).split(separator: "\n") {
            var line = raw[...]
            while let c = line.first, blank.contains(c) { line = line.dropFirst() }
            while let c = line.last, blank.contains(c) { line = line.dropLast() }
            lines.insert(String(line))
        }
        return lines
    }

    static func sha256(_ text: String) -> [UInt8] { sha256(Array(text.utf8)) }
    static func sha256(_ bytes: [UInt8]) -> [UInt8] { Array(SHA256.hash(data: bytes)) }

    static func digest(hex: String, what: String) throws(MeasurementError) -> [UInt8] {
        let chars = Array(hex.lowercased().utf8)
        guard chars.count == 64 else { throw .badDigest(what: what, value: hex) }
        var out: [UInt8] = []
        out.reserveCapacity(32)
        for i in stride(from: 0, to: 64, by: 2) {
            guard let hi = nibble(chars[i]), let lo = nibble(chars[i + 1]) else {
                throw .badDigest(what: what, value: hex)
            }
            out.append(hi << 4 | lo)
        }
        return out
    }

    private static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
        default: return nil
        }
    }
}
