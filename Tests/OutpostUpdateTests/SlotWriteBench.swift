import Foundation
import OutpostBundle
import OutpostDisk
import OutpostUpdate
import Testing

/// The driver of bench/slot-write.sh: runs the real engine against a disk
/// image file. Skipped unless the script sets OUTPOST_BENCH_IMAGE.
@Suite struct SlotWriteBench {
    static let env = ProcessInfo.processInfo.environment

    @Test(.enabled(if: env["OUTPOST_BENCH_IMAGE"] != nil))
    func benchInstallToImage() throws {
        let e = SlotWriteBench.env
        guard let image = e["OUTPOST_BENCH_IMAGE"], let bundle = e["OUTPOST_BENCH_BUNDLE"],
              let trust = e["OUTPOST_BENCH_TRUST"], let state = e["OUTPOST_BENCH_STATE"] else {
            Issue.record("set OUTPOST_BENCH_IMAGE, _BUNDLE, _TRUST and _STATE")
            return
        }
        let dev = try FileBlockDevice(path: image, writable: true)
        let booted = try #require(try GPTDisk.read(dev).gpt.number(named: "IMGA"))
        let engine = UpdateEngine(device: dev, store: DirectoryStateStore(directory: state),
                                  trust: try TrustStore.load(directory: trust),
                                  identity: DeviceIdentity(board: "generic-efi", arch: "x86_64"))
        let start = ContinuousClock.now
        let r = try engine.install(try FilePayloadSource(path: bundle), booted: booted)
        let total = ContinuousClock.now - start
        func s(_ d: Duration) -> String {
            String(format: "%.3f", Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18)
        }
        print("BENCH bytes=\(r.payloadSize) verify=\(s(r.verifyTime)) write=\(s(r.writeTime)) readback=\(s(r.readbackTime)) total=\(s(total))")
    }
}
