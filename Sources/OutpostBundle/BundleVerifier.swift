import Crypto

// Reading and verifying a bundle, in the order that keeps untrusted bytes
// away from anything complex: fixed header → lengths against the file size →
// signature records → signature over header+manifest by a trust anchor →
// only then the JSON manifest → policy (floor, board, arch, slot size) →
// payload digest, streamed.

/// The parts of a bundle before its payload, checked for shape but not yet trusted.
public struct BundlePrologue: Sendable {
    public var header: BundleHeader
    /// The manifest exactly as stored (signed).
    public var manifestBytes: [UInt8]
    public var signatures: [SignatureRecord]
    /// header || manifest: what each signature covers.
    public var signedBytes: [UInt8]

    /// Reads and shape-checks everything up to the payload.
    public static func read(from source: PayloadSource) throws(BundleError) -> BundlePrologue {
        let size = source.size
        let headerBytes = try readRange(source, offset: 0, count: BundleFormat.headerLength, field: "header")
        let header = try BundleHeader.decode(headerBytes, fileSize: size)
        let m = Int(header.manifestLength)
        let manifest = try readRange(source, offset: UInt64(BundleFormat.headerLength), count: m, field: "manifest")
        var sigs: [SignatureRecord] = []
        var offset = UInt64(BundleFormat.headerLength + m)
        for i in 0..<Int(header.signatureCount) {
            let rec = try readRange(source, offset: offset, count: BundleFormat.signatureRecordLength, field: "signature \(i)")
            sigs.append(try SignatureRecord.decode(rec, index: i, offset: offset))
            offset += UInt64(BundleFormat.signatureRecordLength)
        }
        let padding = try readRange(source, offset: offset, count: Int(header.payloadOffset - offset), field: "padding")
        if let bad = padding.firstIndex(where: { $0 != 0 }) {
            throw .nonZeroPadding(field: "padding before the payload", offset: offset + UInt64(bad))
        }
        return BundlePrologue(header: header, manifestBytes: manifest, signatures: sigs,
                              signedBytes: headerBytes + manifest)
    }

    static func readRange(_ source: PayloadSource, offset: UInt64, count: Int, field: String) throws(BundleError) -> [UInt8] {
        guard offset <= source.size, UInt64(count) <= source.size - offset else {
            throw .truncated(field: field, offset: offset, wanted: UInt64(count),
                             available: offset <= source.size ? source.size - offset : 0)
        }
        do { return try source.read(offset: offset, count: count) } catch let e as BundleError { throw e } catch {
            throw .source(offset: offset, reason: "\(error)")
        }
    }
}

/// What the device (or the operator) requires of a bundle beyond a valid signature.
public struct BundlePolicy: Sendable {
    /// The highest security version the device has committed.
    public var deviceFloor: UInt64
    /// nil: not checked (host-side verify without a target).
    public var board: String?
    public var arch: String?
    /// The target slot's size in bytes; nil: not checked.
    public var slotSize: UInt64?

    public init(deviceFloor: UInt64 = 0, board: String? = nil, arch: String? = nil, slotSize: UInt64? = nil) {
        self.deviceFloor = deviceFloor
        self.board = board
        self.arch = arch
        self.slotSize = slotSize
    }
}

/// A bundle whose signature and policy checks passed; its payload still has to be streamed.
public struct VerifiedBundle: Sendable {
    public var prologue: BundlePrologue
    public var manifest: BundleManifest
    /// The anchor whose signature verified.
    public var signedBy: KeyID
    public var payloadOffset: UInt64 { prologue.header.payloadOffset }
}

/// The checks that decide whether a bundle may be installed.
public enum BundleVerifier {
    /// Signature by a known, unrevoked anchor over header+manifest; then the
    /// manifest's own checks and `policy`. Any signature by a known key must
    /// verify: a bad one means tampering, even if another signature is fine.
    public static func verify(_ p: BundlePrologue, trust: TrustStore, policy: BundlePolicy) throws(BundleError) -> VerifiedBundle {
        var good: KeyID?
        var revoked: KeyID?
        for (i, rec) in p.signatures.enumerated() {
            guard let key = trust.anchors[rec.keyID] else { continue }
            let sig: P256.Signing.ECDSASignature
            do { sig = try P256.Signing.ECDSASignature(derRepresentation: rec.der) } catch {
                throw .signatureMalformed(index: i, keyID: rec.keyID, offset: signatureOffset(p, i) + 12, reason: "not a DER ECDSA signature")
            }
            guard Array(sig.derRepresentation) == rec.der, key.isValidSignature(sig, for: p.signedBytes) else {
                throw .signatureInvalid(keyID: rec.keyID)
            }
            if trust.revoked.contains(rec.keyID) { revoked = revoked ?? rec.keyID } else { good = good ?? rec.keyID }
        }
        guard let signer = good else {
            if let revoked { throw .keyRevoked(keyID: revoked) }
            throw .keyUnknown(keyIDs: p.signatures.map(\.keyID))
        }
        let m = try BundleManifest.decode(p.manifestBytes)
        guard m.payloadSize == p.header.payloadLength else {
            throw .payloadLengthMismatch(expected: m.payloadSize, actual: p.header.payloadLength)
        }
        try check(m, against: policy)
        // Approvals the device's TPM would refuse make a bundle whose vault stays
        // locked after the update: refuse it here, with the line that says why.
        if let vault = m.vault { try vault.check(trust: trust) }
        return VerifiedBundle(prologue: p, manifest: m, signedBy: signer)
    }

    /// Reads the prologue from `source` and verifies it.
    public static func verify(_ source: PayloadSource, trust: TrustStore, policy: BundlePolicy) throws(BundleError) -> VerifiedBundle {
        try verify(try BundlePrologue.read(from: source), trust: trust, policy: policy)
    }

    /// The policy checks alone (anti-rollback, board, arch, size).
    public static func check(_ m: BundleManifest, against policy: BundlePolicy) throws(BundleError) {
        guard m.securityVersion >= policy.deviceFloor else {
            throw .securityVersionBelowFloor(version: m.securityVersion, floor: policy.deviceFloor)
        }
        if let board = policy.board, board != m.board { throw .boardMismatch(bundle: m.board, device: board) }
        if let arch = policy.arch, arch != m.arch { throw .archMismatch(bundle: m.arch, device: arch) }
        if let slot = policy.slotSize, m.payloadSize > slot { throw .payloadTooLarge(size: m.payloadSize, slotSize: slot) }
    }

    /// Streams the whole payload once and checks its length and SHA-256.
    /// `progress` gets (bytes done, total).
    public static func verifyPayload(_ source: PayloadSource, _ bundle: VerifiedBundle, chunkSize: Int = 1 << 20,
                                     progress: ((UInt64, UInt64) -> Void)? = nil) throws(BundleError) {
        var digest = PayloadDigest(bundle.manifest)
        let total = bundle.manifest.payloadSize
        var done: UInt64 = 0
        while done < total {
            let n = Int(min(UInt64(chunkSize), total - done))
            digest.update(try BundlePrologue.readRange(source, offset: bundle.payloadOffset + done, count: n, field: "payload"))
            done += UInt64(n)
            progress?(done, total)
        }
        try digest.finish()
    }

    private static func signatureOffset(_ p: BundlePrologue, _ i: Int) -> UInt64 {
        UInt64(BundleFormat.headerLength) + UInt64(p.manifestBytes.count) + UInt64(i * BundleFormat.signatureRecordLength)
    }
}

/// An incremental payload check: feed chunks as they stream past (to the
/// disk, from the network), then `finish` compares length and digest.
public struct PayloadDigest: Sendable {
    public let expectedSize: UInt64
    public let expectedSHA256: String
    public private(set) var count: UInt64 = 0
    private var hasher = SHA256()

    public init(_ manifest: BundleManifest) {
        expectedSize = manifest.payloadSize
        expectedSHA256 = manifest.payloadSHA256
    }

    public mutating func update(_ chunk: [UInt8]) {
        hasher.update(data: chunk)
        count += UInt64(chunk.count)
    }

    public func finish() throws(BundleError) {
        guard count == expectedSize else { throw .payloadLengthMismatch(expected: expectedSize, actual: count) }
        let actual = hex(Array(hasher.finalize()))
        guard actual == expectedSHA256 else { throw .payloadDigestMismatch(expected: expectedSHA256, actual: actual) }
    }
}

/// Writing a bundle's prologue (the CLI streams the payload after it).
public enum BundleWriter {
    /// Header, manifest, one signature per key, and zero padding up to the
    /// payload offset: write these bytes, then exactly `manifest.payloadSize` payload bytes.
    public static func prologue(manifest: BundleManifest, keys: [SigningKey]) throws(BundleError) -> [UInt8] {
        guard !keys.isEmpty, keys.count <= BundleFormat.maxSignatures else {
            throw .badField(field: "signature count", offset: 12, value: UInt64(keys.count), reason: "need 1...\(BundleFormat.maxSignatures) keys")
        }
        let m = try manifest.encoded()
        guard m.count <= BundleFormat.maxManifestLength else {
            throw .manifestInvalid(field: "(manifest)", reason: "\(m.count) bytes is larger than 1 MiB")
        }
        let header = BundleHeader(signatureCount: keys.count, manifestLength: m.count, payloadLength: manifest.payloadSize)
        let signed = header.encode() + m
        var out = signed
        for k in keys { out += try k.sign(signed).encode() }
        out += repeatElement(0, count: Int(header.payloadOffset) - out.count)
        return out
    }
}
