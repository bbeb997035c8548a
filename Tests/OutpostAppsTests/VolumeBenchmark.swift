import Foundation
import OutpostTestSupport
import Testing
@testable import OutpostApps

/// Run by bench/app-volume.sh: what creating an instance disk costs from a base image of
/// OUTPOST_BENCH_APP_VOLUME_MIB MiB (every byte written, as an unpacked image is), as an overlay
/// (`InstanceDisk.prepare`, the agent's path) against a full private copy (`qemu-img convert -O
/// qcow2`, what the seed system does per instance), measured in the same run on the same disk,
/// both synced to disk before the clock stops.
@Suite("App instance disks: overlay vs full copy (benchmark)")
struct VolumeBenchmark {
    @Test(.enabled(if: ProcessInfo.processInfo.environment["OUTPOST_BENCH_APP_VOLUME_MIB"].flatMap(Int.init).map { $0 > 0 } == true,
                   "a benchmark: bench/app-volume.sh sets OUTPOST_BENCH_APP_VOLUME_MIB"))
    func overlayAgainstAFullCopy() throws {
        let mib = min(try #require(ProcessInfo.processInfo.environment["OUTPOST_BENCH_APP_VOLUME_MIB"].flatMap(Int.init)), 8192)
        let tmp = try TemporaryDirectory("app-volume")
        let basePath = tmp.path + "/base.img"
        // A base of mib MiB with every block written (varied 1 MiB chunks, so no block is zero).
        FileManager.default.createFile(atPath: basePath, contents: nil)
        let out = try #require(FileHandle(forWritingAtPath: basePath), "cannot open \(basePath)")
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        var rng = SplitMix64(seed: 12)
        for n in 0..<mib {
            for i in stride(from: 0, to: chunk.count, by: 8) { chunk[i] = UInt8(truncatingIfNeeded: rng.next() &+ UInt64(n)) }
            out.write(Data(chunk))
        }
        try out.synchronize()
        try out.close()
        let base = try BaseImage.inspect(basePath)

        func used(_ path: String) throws -> UInt64 {
            var st = stat()
            guard stat(path, &st) == 0 else { throw TestSupportError.spawn(command: "stat \(path)", reason: "errno \(errno)") }
            return UInt64(st.st_blocks) * 512
        }
        func seconds(_ work: () throws -> Void) rethrows -> Double {
            let start = ContinuousClock.now
            try work()
            let d = ContinuousClock.now - start
            return Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
        }

        // Three of each; the median is reported.
        var overlayTimes: [Double] = []
        var copyTimes: [Double] = []
        var overlayBytes: UInt64 = 0
        var copyBytes: UInt64 = 0
        for n in 0..<3 {
            let overlay = tmp.path + "/overlay-\(n).qcow2"
            overlayTimes.append(try seconds {
                let outcome = try InstanceDisk(path: overlay, base: base, minimumSize: 0).prepare(purge: false)
                #expect(outcome == .created)
            })
            overlayBytes = try used(overlay)
            let copy = tmp.path + "/copy-\(n).qcow2"
            copyTimes.append(try seconds {
                let r = try runCommand(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", basePath, copy], timeout: .seconds(600))
                #expect(r.status == 0, "\(r.output)")
                // Durable, as the overlay is (InstanceDisk syncs the file and its directory).
                #expect(try runCommand(["sync", copy, tmp.path], timeout: .seconds(600)).status == 0)
            })
            copyBytes = try used(copy)
            // Both are disks qemu-img accepts.
            #expect(try runCommand(["qemu-img", "check", overlay], timeout: .seconds(60)).status == 0)
            try FileManager.default.removeItem(atPath: copy)
        }
        let overlayTime = overlayTimes.sorted()[1]
        let copyTime = copyTimes.sorted()[1]
        #expect(overlayBytes < 1 << 20, "an overlay holds metadata only")
        print(String(format: "app-volume: base %d MiB; overlay %.2f ms, %d KiB; full copy (qemu-img convert) %.0f ms, %d MiB; copy/overlay time %.0fx, bytes %.0fx",
                     mib, overlayTime * 1000, Int(overlayBytes / 1024), copyTime * 1000, Int(copyBytes >> 20),
                     copyTime / overlayTime, Double(copyBytes) / Double(max(overlayBytes, 1))))
    }
}
