// The update bundle file: one file, so that a download, a USB stick and a
// controller push all carry the same bytes. Every integer is little-endian,
// written and read field by field (never a Swift struct's memory).
//
//  offset                 size         field
//  +--------------------+------------+----------------------------------------+
//  | 0                  | 8          | magic "OUTPOSTB"                        |
//  | 8                  | 2          | format version (1)                      |  header,
//  | 10                 | 2          | header length (64)                      |  64 bytes,
//  | 12                 | 2          | signature count N (1...16)              |  signed
//  | 14                 | 2          | signature record length (88)            |
//  | 16                 | 4          | manifest length M (1...1 MiB)           |
//  | 20                 | 4          | reserved, zero                          |
//  | 24                 | 8          | payload offset P (4 KiB aligned)        |
//  | 32                 | 8          | payload length L                        |
//  | 40                 | 24         | reserved, zero                          |
//  +--------------------+------------+----------------------------------------+
//  | 64                 | M          | manifest: JSON, sorted keys (signed)    |
//  +--------------------+------------+----------------------------------------+
//  | 64 + M             | N x 88     | signature records:                      |
//  |                    |            |   0  8  key ID (SHA-256(SPKI DER)[0..8])|
//  |                    |            |   8  2  algorithm (1 = ECDSA P-256,     |
//  |                    |            |         SHA-256)                        |
//  |                    |            |  10  2  DER signature length (8...72)   |
//  |                    |            |  12 72  DER signature, zero padded      |
//  |                    |            |  84  4  reserved, zero                  |
//  +--------------------+------------+----------------------------------------+
//  | 64 + M + 88N       | P - that   | zero padding                            |
//  +--------------------+------------+----------------------------------------+
//  | P                  | L          | payload: the slot image (docs/boot.md)  |
//  +--------------------+------------+----------------------------------------+
//  file length = P + L exactly
//
// Each signature is ECDSA P-256 over SHA-256(header || manifest), DER encoded
// so `openssl dgst -sha256 -verify` checks it. The header is signed too, so
// the payload's offset and length and the number of signatures cannot be
// changed; the manifest carries the payload's SHA-256, which binds the payload.
// The payload starts on a 4 KiB boundary so it can be read with O_DIRECT.

/// Fixed constants of format version 1.
public enum BundleFormat {
    public static let magic: [UInt8] = Array("OUTPOSTB".utf8)
    public static let version: UInt16 = 1
    public static let headerLength = 64
    public static let signatureRecordLength = 88
    public static let maxSignatureDER = 72
    public static let maxSignatures = 16
    public static let maxManifestLength = 1 << 20
    public static let payloadAlignment: UInt64 = 4096
    /// Algorithm tag of a signature record.
    public static let ecdsaP256SHA256: UInt16 = 1

    /// Where the payload of a bundle with this manifest and signature count starts.
    public static func payloadOffset(manifestLength: Int, signatureCount: Int) -> UInt64 {
        let end = UInt64(headerLength + manifestLength + signatureCount * signatureRecordLength)
        return (end + payloadAlignment - 1) / payloadAlignment * payloadAlignment
    }
}

/// The 64-byte bundle header.
public struct BundleHeader: Equatable, Sendable {
    public var formatVersion: UInt16
    public var signatureCount: UInt16
    public var manifestLength: UInt32
    public var payloadOffset: UInt64
    public var payloadLength: UInt64

    public init(signatureCount: Int, manifestLength: Int, payloadLength: UInt64) {
        formatVersion = BundleFormat.version
        self.signatureCount = UInt16(clamping: signatureCount)
        self.manifestLength = UInt32(clamping: manifestLength)
        payloadOffset = BundleFormat.payloadOffset(manifestLength: manifestLength, signatureCount: signatureCount)
        self.payloadLength = payloadLength
    }

    public func encode() -> [UInt8] {
        var w = ByteWriter()
        w.append(BundleFormat.magic)
        w.u16(formatVersion)
        w.u16(UInt16(BundleFormat.headerLength))
        w.u16(signatureCount)
        w.u16(UInt16(BundleFormat.signatureRecordLength))
        w.u32(manifestLength)
        w.u32(0)
        w.u64(payloadOffset)
        w.u64(payloadLength)
        w.zeros(24)
        return w.bytes
    }

    /// Decodes and checks every field; `fileSize` bounds the lengths.
    public static func decode(_ bytes: [UInt8], fileSize: UInt64) throws(BundleError) -> BundleHeader {
        var r = ByteReader(bytes)
        let magic = try r.bytes(8, field: "magic")
        guard magic == BundleFormat.magic else { throw .badMagic(found: magic) }
        let version = try r.u16("format version")
        guard version == BundleFormat.version else { throw .unsupportedFormat(version: version) }
        let headerLength = try r.u16("header length")
        guard Int(headerLength) == BundleFormat.headerLength else {
            throw .badField(field: "header length", offset: 10, value: UInt64(headerLength), reason: "must be 64")
        }
        let count = try r.u16("signature count")
        guard count >= 1, Int(count) <= BundleFormat.maxSignatures else {
            throw .badField(field: "signature count", offset: 12, value: UInt64(count), reason: "must be 1...\(BundleFormat.maxSignatures)")
        }
        let recordLength = try r.u16("signature record length")
        guard Int(recordLength) == BundleFormat.signatureRecordLength else {
            throw .badField(field: "signature record length", offset: 14, value: UInt64(recordLength), reason: "must be 88")
        }
        let manifestLength = try r.u32("manifest length")
        guard manifestLength >= 2, Int(manifestLength) <= BundleFormat.maxManifestLength else {
            throw .badField(field: "manifest length", offset: 16, value: UInt64(manifestLength), reason: "must be 2...\(BundleFormat.maxManifestLength)")
        }
        guard try r.u32("reserved") == 0 else { throw .nonZeroPadding(field: "header reserved", offset: 20) }
        let payloadOffset = try r.u64("payload offset")
        let expectedOffset = BundleFormat.payloadOffset(manifestLength: Int(manifestLength), signatureCount: Int(count))
        guard payloadOffset == expectedOffset else {
            throw .badField(field: "payload offset", offset: 24, value: payloadOffset, reason: "must be \(expectedOffset)")
        }
        let payloadLength = try r.u64("payload length")
        guard payloadLength >= 1, payloadLength <= UInt64.max - payloadOffset else {
            throw .badField(field: "payload length", offset: 32, value: payloadLength, reason: "out of range")
        }
        guard try r.bytes(24, field: "reserved").allSatisfy({ $0 == 0 }) else {
            throw .nonZeroPadding(field: "header reserved", offset: 40)
        }
        var h = BundleHeader(signatureCount: Int(count), manifestLength: Int(manifestLength), payloadLength: payloadLength)
        h.formatVersion = version
        let end = payloadOffset + payloadLength
        if fileSize < end {
            throw .truncated(field: fileSize < payloadOffset ? "the bundle (manifest, signatures, payload)" : "the bundle (payload)",
                             offset: fileSize, wanted: end, available: fileSize)
        }
        if fileSize > end { throw .trailingData(offset: end, extra: fileSize - end) }
        return h
    }
}

/// One signature: who signed (key ID) and the DER-encoded ECDSA signature.
public struct SignatureRecord: Equatable, Sendable {
    public var keyID: KeyID
    public var algorithm: UInt16
    public var der: [UInt8]

    public init(keyID: KeyID, der: [UInt8]) {
        self.keyID = keyID
        algorithm = BundleFormat.ecdsaP256SHA256
        self.der = der
    }

    public func encode() -> [UInt8] {
        var w = ByteWriter()
        w.append(keyID.bytes)
        w.u16(algorithm)
        w.u16(UInt16(der.count))
        w.append(der)
        w.zeros(BundleFormat.maxSignatureDER - der.count)
        w.u32(0)
        return w.bytes
    }

    /// Decodes record `index`, which starts at `offset` in the file.
    public static func decode(_ bytes: [UInt8], index: Int, offset: UInt64) throws(BundleError) -> SignatureRecord {
        var r = ByteReader(bytes, base: offset)
        let id = KeyID(bytes: try r.bytes(8, field: "signature \(index) key ID"))
        let algorithm = try r.u16("signature \(index) algorithm")
        guard algorithm == BundleFormat.ecdsaP256SHA256 else {
            throw .signatureMalformed(index: index, keyID: id, offset: offset + 8, reason: "unknown algorithm \(algorithm)")
        }
        let length = Int(try r.u16("signature \(index) length"))
        guard (8...BundleFormat.maxSignatureDER).contains(length) else {
            throw .signatureMalformed(index: index, keyID: id, offset: offset + 10, reason: "DER length \(length) is not 8...72")
        }
        let area = try r.bytes(BundleFormat.maxSignatureDER, field: "signature \(index) DER")
        guard area[length...].allSatisfy({ $0 == 0 }), try r.u32("signature \(index) reserved") == 0 else {
            throw .nonZeroPadding(field: "signature \(index) padding", offset: offset + 12 + UInt64(length))
        }
        return SignatureRecord(keyID: id, der: Array(area[..<length]))
    }
}

/// Little-endian reads that throw `truncated` with the field's absolute offset.
struct ByteReader {
    let bytes: [UInt8]
    let base: UInt64
    private(set) var offset = 0

    init(_ bytes: [UInt8], base: UInt64 = 0) {
        self.bytes = bytes
        self.base = base
    }

    mutating func bytes(_ count: Int, field: String) throws(BundleError) -> [UInt8] {
        guard count >= 0, bytes.count - offset >= count else {
            throw .truncated(field: field, offset: base + UInt64(offset), wanted: UInt64(max(count, 0)),
                             available: UInt64(max(bytes.count - offset, 0)))
        }
        defer { offset += count }
        return Array(bytes[offset..<offset + count])
    }

    mutating func u16(_ field: String) throws(BundleError) -> UInt16 { UInt16(try integer(2, field)) }
    mutating func u32(_ field: String) throws(BundleError) -> UInt32 { UInt32(try integer(4, field)) }
    mutating func u64(_ field: String) throws(BundleError) -> UInt64 { try integer(8, field) }

    private mutating func integer(_ width: Int, _ field: String) throws(BundleError) -> UInt64 {
        let b = try bytes(width, field: field)
        var v: UInt64 = 0
        for i in (0..<width).reversed() { v = v << 8 | UInt64(b[i]) }
        return v
    }
}

/// Little-endian writes to a growing buffer.
struct ByteWriter {
    private(set) var bytes: [UInt8] = []
    mutating func append(_ b: [UInt8]) { bytes += b }
    mutating func zeros(_ n: Int) { bytes += repeatElement(0, count: max(n, 0)) }
    mutating func u16(_ v: UInt16) { integer(UInt64(v), 2) }
    mutating func u32(_ v: UInt32) { integer(UInt64(v), 4) }
    mutating func u64(_ v: UInt64) { integer(v, 8) }
    private mutating func integer(_ v: UInt64, _ width: Int) {
        for i in 0..<width { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) }
    }
}
