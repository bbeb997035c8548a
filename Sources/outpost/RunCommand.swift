import ArgumentParser
import Foundation
import OutpostQEMU

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Boot an image in QEMU: OVMF, swtpm TPM, i6300esb watchdog, virtio disk and NIC.",
        discussion: """
            Interactive by default: the serial console is this terminal (Ctrl-A X quits QEMU, \
            Ctrl-A C switches to the QEMU monitor) and the command exits with QEMU's status; the terminal's \
            settings, swtpm and temporary files are cleaned up however QEMU ends. With --headless the console is copied to stdout and the command exits 0 as soon as \
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
        let outcome = try QEMURunner.run(o)
        if headless {
            if !outcome.ready { throw ExitCode.failure }
        } else if outcome.exitStatus != 0 {
            throw ExitCode(outcome.exitStatus)
        }
    }
}
