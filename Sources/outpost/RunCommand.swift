import ArgumentParser
import Foundation
import OutpostQEMU

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Boot an image in QEMU: OVMF, swtpm TPM, i6300esb watchdog, virtio disk, NIC and RNG.",
        discussion: """
            Interactive by default: the serial console is this terminal (Ctrl-A X quits QEMU, \
            Ctrl-A C switches to the QEMU monitor) and the command exits with QEMU's status; the terminal's \
            settings, swtpm and temporary files are cleaned up however QEMU ends. The TPM's state is kept beside the image \
            (IMAGE.tpm), so the device keeps its TPM keys from one run to the next; --fresh-tpm starts a new TPM, --no-tpm \
            boots without one. A new TPM gets EK certificates (RSA, ECC P-384 and the P-256 one the device sends at \
            0x01C0000A) from a local CA that plays the TPM maker, kept in --ek-ca (default ~/.local/share/outpost/ek-ca); \
            `outpost-controller ek-ca add` its swtpm-localca-rootca-cert.pem and issuercert.pem to have them verified. With --headless the console is copied to stdout and the command exits 0 as soon as \
            the 'outpost: ready' line appears, 1 on timeout or if QEMU stops first.
            """)

    @Argument(help: "The disk image (raw or .qcow2).") var image: String = "out/outpost.img"
    @Flag(help: "Capture the console; exit 0 at the ready line.") var headless = false
    @Option(help: "Give up after this many seconds.") var timeout: Double?
    @Option(help: "QEMU accelerator (tcg; kvm hangs on some hosts).") var accel = "tcg"
    @Option(help: "Guest memory in MiB.") var memory = 1024
    @Flag(help: "Do not write to the image (QEMU snapshot mode).") var snapshot = false
    @Option(help: "Expose the QEMU monitor on this UNIX socket.") var monitor: String?
    @Option(help: "Number of virtio NICs (user-mode networking).") var nics = 1
    @Option(help: "Also copy the serial console to this file.") var consoleLog: String?
    @Flag(help: "With --headless: at the marker, press the power button and wait for the guest to power off.")
    var powerOff = false
    @Option(help: "Attach another raw disk, e.g. update media (repeatable).") var disk: [String] = []
    @Flag(help: "With --headless: forward standard input to the serial console (scripted console commands).")
    var consoleInput = false
    @Option(help: "With --headless: stop at a console line containing this text (repeatable).")
    var until: [String] = ["outpost: ready"]
    @Option(help: ArgumentHelp("Keep the TPM's state here across runs (default: IMAGE.tpm beside the image).", valueName: "dir"))
    var tpmState: String?
    @Flag(help: "Start with a new TPM: erase the saved TPM state first (the device's TPM keys are gone).")
    var freshTPM = false
    @Flag(help: "Boot without a TPM (the device falls back to its file identity and says so).")
    var noTPM = false
    @Option(help: ArgumentHelp("The local CA that issues a new TPM's EK certificates (default: ~/.local/share/outpost/ek-ca).",
                               valueName: "dir"))
    var ekCA: String?

    func validate() throws {
        if noTPM && (freshTPM || tpmState != nil || ekCA != nil) {
            throw ValidationError("--no-tpm cannot be combined with --fresh-tpm, --tpm-state or --ek-ca")
        }
    }

    /// The TPM for this run: saved beside the image by default, so a device keeps its identity
    /// from one `outpost run` to the next; with --snapshot the saved state is used but not changed.
    func tpmMode() throws -> QEMUOptions.TPM {
        if noTPM { return .none }
        let directory = tpmState ?? image + ".tpm"
        if freshTPM && FileManager.default.fileExists(atPath: directory) {
            do {
                try FileManager.default.removeItem(atPath: directory)
            } catch {
                throw ValidationError("\(directory): cannot erase the TPM state: \(error.localizedDescription)")
            }
        }
        return snapshot ? .copyOf(directory: directory) : .persistent(directory: directory)
    }

    func run() throws {
        var o = QEMUOptions(image: image)
        o.headless = headless
        o.timeout = timeout ?? (headless ? 300 : nil)
        o.accel = accel
        o.memoryMiB = memory
        o.snapshot = snapshot
        o.monitorSocket = monitor
        o.nics = nics
        o.consoleLog = consoleLog
        o.untilMarkers = until
        o.extraDisks = disk
        o.powerOffAtMarker = powerOff
        o.consoleInput = consoleInput
        o.tpm = try tpmMode()
        o.endorsementCA = ekCA ?? FileManager.default.homeDirectoryForCurrentUser.path + "/.local/share/outpost/ek-ca"
        let outcome = try QEMURunner.run(o)
        if headless {
            if !outcome.ready { throw ExitCode.failure }
        } else if outcome.exitStatus != 0 {
            throw ExitCode(outcome.exitStatus)
        }
    }
}
