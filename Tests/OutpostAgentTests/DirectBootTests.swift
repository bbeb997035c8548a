import Foundation
import Testing

/// Boots the real kernel + initramfs in QEMU (TCG) from a hand-made disk and
/// checks ready, verity corruption and missing-partition behaviour. Takes a
/// few minutes and needs root, so it runs only with OUTPOST_QEMU_TESTS=1.
@Test(.enabled(if: ProcessInfo.processInfo.environment["OUTPOST_QEMU_TESTS"] == "1"),
      .timeLimit(.minutes(20)))
func earlyBootReachesReadyAndFailsLoudlyOnCorruptOrMissingSlot() throws {
    let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("boot-direct.sh")
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/bin/bash")
    process.arguments = [script.path]
    try process.run()
    process.waitUntilExit()
    #expect(process.terminationStatus == 0, "boot-direct.sh failed; see its output")
}
