import Crypto
import Foundation
import OutpostBundle

/// A deterministic pseudo-random generator so every failure reproduces.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

func payload(_ size: Int, seed: UInt64 = 1) -> [UInt8] {
    var g = SplitMix64(state: seed)
    return (0..<size).map { _ in UInt8(truncatingIfNeeded: g.next()) }
}

func manifest(for payload: [UInt8], version: String = "2.0.0", security: UInt64 = 3,
              board: String = "generic-efi") -> BundleManifest {
    BundleManifest(osVersion: version, securityVersion: security, board: board, arch: "x86_64",
                   payloadSize: UInt64(payload.count), payloadSHA256: hex(Array(SHA256.hash(data: payload))),
                   verity: .init(rootHash: String(repeating: "ab", count: 32), salt: "0011", rootOffset: 0,
                                 rootDataBlocks: 1, hashOffset: UInt64(payload.count)),
                   pcrs: ["IMGA": .init(pcr8: String(repeating: "1", count: 64), pcr9: String(repeating: "2", count: 64))])
}

func makeBundle(_ payload: [UInt8], keys: [SigningKey], manifest m: BundleManifest? = nil) throws -> [UInt8] {
    try BundleWriter.prologue(manifest: m ?? manifest(for: payload), keys: keys) + payload
}

/// Parses, verifies and streams the payload: everything a device checks.
@discardableResult
func verifyAll(_ bytes: [UInt8], trust: TrustStore, policy: BundlePolicy = BundlePolicy()) throws -> VerifiedBundle {
    let source = MemoryPayloadSource(bytes)
    let v = try BundleVerifier.verify(source, trust: trust, policy: policy)
    try BundleVerifier.verifyPayload(source, v, chunkSize: 1000)
    return v
}

func tempDirectory() throws -> String {
    let p = NSTemporaryDirectory() + "outpost-bundle-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: p, withIntermediateDirectories: true)
    return p
}
