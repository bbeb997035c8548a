import Crypto
import Foundation
import OutpostBundle
import OutpostTestSupport

/// A payload that is the same on every run.
func payload(_ size: Int, seed: UInt64 = 1) -> [UInt8] {
    var g = SplitMix64(seed: seed)
    return g.bytes(size)
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

