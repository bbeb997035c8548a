import ArgumentParser
import Foundation
import OutpostBundle
import OutpostDisk
import OutpostUpdate

// `outpost bundle install`: the device's update engine, run on the host
// against a disk image or a disk in a programming station. A factory can
// stage the next version in the inactive slot of a golden image, and the
// slot-write benchmark measures the engine at release speed.

struct BundleInstall: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "install",
        abstract: "Install a bundle into the inactive slot of a disk image, exactly as a device does.",
        discussion: """
            The committed (`active`) slot is treated as the running one and is never written; a slot \
            already staged (`updating`) is replaced. Everything is \
            verified before the first write (signature, key ID, revocation, security version, board); \
            then the payload is written and hashed in one pass, flushed, read back and compared, and the \
            slot is marked `updating`: its next boot is a trial that the agent commits or falls back from. \
            The update state (security floor, failed versions) is kept in --state, as PERSIST keeps it on a device.
            """)

    @Option(help: "The disk image or block device with IMGA and IMGB.") var disk: String
    @Option(help: "Trust directory (*.pub.pem and revoked.txt), as baked into images.") var trust: String
    @Option(help: "Directory for the update state (created if missing).") var state: String
    @Option(help: "Board name the bundle must be built for.") var board = "generic-efi"
    @Option(help: "Bytes per read and write (a multiple of 512).") var chunkSize = 1 << 20
    @Flag(help: "Install a version that failed its test before.") var force = false
    @Flag(help: "Print the result (and pass timings) as JSON.") var json = false
    @Flag(help: "No progress output.") var quiet = false
    @Argument(help: "The .bundle file.") var bundle: String

    func validate() throws {
        guard chunkSize >= 512, chunkSize % 512 == 0, chunkSize <= 64 << 20 else {
            throw ValidationError("--chunk-size must be a multiple of 512 up to 64 MiB")
        }
    }

    func run() throws {
        let device = try FileBlockDevice(path: disk, writable: true)
        let table = try GPTDisk.read(device)
        // The running slot is the committed one, not the one that boots next: after a staging
        // run the other slot is `updating` and would boot first, and must not count as running.
        let active = table.gpt.partitions.filter { $0.partition.isSlot && $0.partition.slotAttributes.state == .active }
        guard active.count == 1, let booted = active.first?.number else {
            throw UpdateError.slotLayout("\(disk): needs exactly one committed (active) slot, found \(active.count); install refused")
        }
        try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
        let engine = UpdateEngine(device: device, store: DirectoryStateStore(directory: state),
                                  trust: try TrustStore.load(directory: trust),
                                  identity: DeviceIdentity(board: board, arch: "x86_64"))
        var options = InstallOptions()
        options.force = force
        options.chunkSize = chunkSize
        let progress = Progress(quiet: quiet || json)
        let start = ContinuousClock.now
        let r = try engine.install(try FilePayloadSource(path: bundle), booted: booted, options: options) { phase, done, total in
            progress.report(phase, done, total)
        }
        let total = ContinuousClock.now - start
        if json {
            print(#"{"version":"\#(r.version)","slot":"\#(r.slot)","partition":\#(r.slotNumber),"signedBy":"\#(r.signedBy)","#
                  + #""payloadBytes":\#(r.payloadSize),"verifySeconds":\#(seconds(r.verifyTime)),"#
                  + #""writeSeconds":\#(seconds(r.writeTime)),"readbackSeconds":\#(seconds(r.readbackTime)),"#
                  + #""totalSeconds":\#(seconds(total))}"#)
        } else {
            print("installed \(r.version) into \(r.slot) (partition \(r.slotNumber)), signed by \(r.signedBy); it is `updating`")
            print("verify \(seconds(r.verifyTime)) s, write \(seconds(r.writeTime)) s, read-back \(seconds(r.readbackTime)) s")
        }
    }

    func seconds(_ d: Duration) -> String {
        String(format: "%.3f", Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18)
    }

    /// One line per phase and tenth, on stderr.
    final class Progress {
        let quiet: Bool
        var last: (InstallPhase, Int)?
        init(quiet: Bool) { self.quiet = quiet }
        func report(_ phase: InstallPhase, _ done: UInt64, _ total: UInt64) {
            guard !quiet, total > 0 else { return }
            let tenth = Int(done * 10 / total)
            if let last, last.0 == phase, last.1 == tenth { return }
            last = (phase, tenth)
            FileHandle.standardError.write(Data("\(phase.rawValue): \(tenth * 10)% of \(total >> 20) MiB\n".utf8))
        }
    }
}
