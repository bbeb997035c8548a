import Foundation

/// SplitMix64: a small, fast, deterministic generator, so a randomized test's inputs are a
/// function of one 64-bit seed and any failure replays exactly.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    /// The seed this generator started from; put it in failure messages.
    public let seed: UInt64
    private var state: UInt64

    /// A fixed sequence, for test data that must be the same on every run (payloads, disks).
    public init(seed: UInt64) {
        self.seed = seed
        state = seed
    }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// The generator for a fuzz or property test: seeded from `OUTPOST_TEST_SEED` when set
    /// (decimal or 0x-hex), otherwise from the system's randomness, so every run explores new
    /// inputs. The seed is always printed with the test's name, so a failure can be replayed.
    public static func forTest(_ test: String = #function, file: String = #fileID) -> SplitMix64 {
        let seed = environmentSeed ?? UInt64.random(in: 0...UInt64.max)
        print("seed \(file) \(test): OUTPOST_TEST_SEED=\(seed)")
        return SplitMix64(seed: seed)
    }

    /// `OUTPOST_TEST_SEED`, parsed; nil when unset or unreadable.
    public static var environmentSeed: UInt64? {
        guard let text = ProcessInfo.processInfo.environment["OUTPOST_TEST_SEED"]?
            .trimmingCharacters(in: .whitespaces), !text.isEmpty else { return nil }
        if text.lowercased().hasPrefix("0x") { return UInt64(text.dropFirst(2), radix: 16) }
        return UInt64(text)
    }

    /// `count` bytes from this generator.
    public mutating func bytes(_ count: Int) -> [UInt8] {
        (0..<count).map { _ in UInt8(truncatingIfNeeded: next()) }
    }
}
