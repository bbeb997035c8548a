// The two TPM 2.0 structures a controller reads, parsed in pure Swift
// (big-endian, as the TPM marshals everything):
//
//   TPMS_ATTEST (quote)                      TPM2B_PUBLIC (ECC)
//   +0  magic            u32 = ff544347      +0  size               u16
//   +4  type             u16 = 8018 (quote)  +2  type               u16 = 0023 (ECC)
//   +6  qualifiedSigner  TPM2B_NAME          +4  nameAlg            u16
//       extraData        TPM2B_DATA (nonce)  +6  objectAttributes   u32
//       clockInfo        u64 clock,          +10 authPolicy         TPM2B
//                        u32 resetCount,         symmetric          u16 alg [u16 bits, u16 mode]
//                        u32 restartCount,       scheme             u16 alg [u16 hash]
//                        u8 safe                 curveID            u16 = 0003 (P-256)
//       firmwareVersion  u64                     kdf                u16 alg [u16 hash]
//       pcrSelect        TPML_PCR_SELECTION      unique.x, unique.y TPM2B each
//                        u32 count, then per bank u16 hash, u8 size, bitmap
//       pcrDigest        TPM2B_DIGEST
//
// Every read is bounds-checked and a failure names the field and offset, so a
// truncated or hostile blob ends in one line, never a crash.

import Crypto

/// A big-endian cursor over untrusted bytes.
struct TPMReader {
    let bytes: [UInt8]
    let structure: String
    private(set) var offset = 0

    init(_ bytes: [UInt8], structure: String) {
        self.bytes = bytes
        self.structure = structure
    }

    var remaining: Int { bytes.count - offset }

    func fail(_ field: String, _ reason: String, at: Int? = nil) -> AttestationError {
        .malformed(structure: structure, field: field, offset: at ?? offset, reason: reason)
    }

    mutating func take(_ count: Int, _ field: String) throws(AttestationError) -> ArraySlice<UInt8> {
        guard count >= 0, count <= remaining else {
            throw fail(field, "needs \(count) bytes, \(remaining) left")
        }
        defer { offset += count }
        return bytes[offset..<(offset + count)]
    }

    mutating func uint(_ size: Int, _ field: String) throws(AttestationError) -> UInt64 {
        try take(size, field).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
    }
    mutating func u8(_ field: String) throws(AttestationError) -> UInt8 { UInt8(try uint(1, field)) }
    mutating func u16(_ field: String) throws(AttestationError) -> UInt16 { UInt16(try uint(2, field)) }
    mutating func u32(_ field: String) throws(AttestationError) -> UInt32 { UInt32(try uint(4, field)) }
    mutating func u64(_ field: String) throws(AttestationError) -> UInt64 { try uint(8, field) }

    /// A TPM2B: a u16 size, then that many bytes, at most `max`.
    mutating func sized(_ field: String, max: Int) throws(AttestationError) -> [UInt8] {
        let at = offset
        let size = Int(try u16(field + ".size"))
        guard size <= max else { throw fail(field, "size \(size) exceeds \(max)", at: at) }
        return Array(try take(size, field))
    }

    func expectEnd() throws(AttestationError) {
        guard remaining == 0 else { throw fail("end", "\(remaining) bytes after the structure") }
    }
}

/// TPM algorithm identifiers and constants used here (TPM 2.0 Part 2).
enum TPMConstant {
    static let generatedValue: UInt32 = 0xFF54_4347
    static let attestQuote: UInt16 = 0x8018
    static let algECC: UInt16 = 0x0023
    static let algSHA256: UInt16 = 0x000B
    static let algECDSA: UInt16 = 0x0018
    static let algNull: UInt16 = 0x0010
    static let curveP256: UInt16 = 0x0003
    static let attrRestricted: UInt32 = 0x0001_0000
    static let attrDecrypt: UInt32 = 0x0002_0000
    static let attrSign: UInt32 = 0x0004_0000
    static let attrFixedTPM: UInt32 = 0x0000_0002
}

/// One bank's PCR selection: the hash algorithm and the selected indexes, ascending.
public struct PCRSelection: Sendable, Equatable {
    public var hash: UInt16
    public var indexes: [Int]

    public init(hash: UInt16, indexes: [Int]) {
        self.hash = hash
        self.indexes = indexes
    }
}

/// A parsed TPMS_ATTEST of type quote.
public struct QuoteAttestation: Sendable, Equatable {
    public var qualifiedSigner: [UInt8]
    /// The qualifying data: the controller's nonce.
    public var extraData: [UInt8]
    public var clock: UInt64
    public var resetCount: UInt32
    public var restartCount: UInt32
    public var safe: Bool
    public var firmwareVersion: UInt64
    public var selections: [PCRSelection]
    public var pcrDigest: [UInt8]

    /// Parses `bytes`, which must be exactly one quote TPMS_ATTEST.
    public init(parsing bytes: [UInt8]) throws(AttestationError) {
        var r = TPMReader(bytes, structure: "TPMS_ATTEST")
        let magic = try r.u32("magic")
        guard magic == TPMConstant.generatedValue else {
            throw r.fail("magic", "0x\(String(magic, radix: 16)), not 0xff544347 (TPM_GENERATED_VALUE)", at: 0)
        }
        let type = try r.u16("type")
        guard type == TPMConstant.attestQuote else {
            throw r.fail("type", "0x\(String(type, radix: 16)), not 0x8018 (TPM_ST_ATTEST_QUOTE)", at: 4)
        }
        qualifiedSigner = try r.sized("qualifiedSigner", max: 68)
        extraData = try r.sized("extraData", max: 64)
        clock = try r.u64("clockInfo.clock")
        resetCount = try r.u32("clockInfo.resetCount")
        restartCount = try r.u32("clockInfo.restartCount")
        let safeAt = r.offset
        let safeByte = try r.u8("clockInfo.safe")
        guard safeByte <= 1 else { throw r.fail("clockInfo.safe", "\(safeByte) is not a TPMI_YES_NO", at: safeAt) }
        safe = safeByte == 1
        firmwareVersion = try r.u64("firmwareVersion")
        let countAt = r.offset
        let count = try r.u32("pcrSelect.count")
        guard count <= 16 else { throw r.fail("pcrSelect.count", "\(count) banks exceed 16", at: countAt) }
        var selections: [PCRSelection] = []
        for bank in 0..<Int(count) {
            let hash = try r.u16("pcrSelect[\(bank)].hash")
            let sizeAt = r.offset
            let size = Int(try r.u8("pcrSelect[\(bank)].sizeofSelect"))
            guard size <= 4 else { throw r.fail("pcrSelect[\(bank)].sizeofSelect", "\(size) exceeds 4", at: sizeAt) }
            let bitmap = try r.take(size, "pcrSelect[\(bank)].pcrSelect")
            var indexes: [Int] = []
            for (byte, bits) in bitmap.enumerated() {
                for bit in 0..<8 where bits & (1 << bit) != 0 { indexes.append(byte * 8 + bit) }
            }
            selections.append(PCRSelection(hash: hash, indexes: indexes))
        }
        self.selections = selections
        pcrDigest = try r.sized("pcrDigest", max: 64)
        try r.expectEnd()
    }
}

/// The fields of an ECC TPM2B_PUBLIC that the controller needs, parsed and
/// checked for P-256 with SHA-256 as the name algorithm.
struct ECCPublicArea {
    var objectAttributes: UInt32
    var symmetric: (algorithm: UInt16, keyBits: UInt16, mode: UInt16)
    var scheme: UInt16
    var schemeHash: UInt16
    var x: [UInt8]
    var y: [UInt8]
    /// nameAlg ‖ SHA-256(TPMT_PUBLIC).
    var name: [UInt8]

    init(parsing bytes: [UInt8]) throws(AttestationError) {
        var r = TPMReader(bytes, structure: "TPM2B_PUBLIC")
        let size = Int(try r.u16("size"))
        guard size == r.remaining else { throw r.fail("size", "\(size), but \(r.remaining) bytes follow", at: 0) }
        let typeAt = r.offset
        let type = try r.u16("type")
        guard type == TPMConstant.algECC else { throw r.fail("type", "0x\(String(type, radix: 16)), not ECC (0x23)", at: typeAt) }
        let nameAlgAt = r.offset
        let nameAlg = try r.u16("nameAlg")
        guard nameAlg == TPMConstant.algSHA256 else {
            throw r.fail("nameAlg", "0x\(String(nameAlg, radix: 16)), not SHA-256 (0xb)", at: nameAlgAt)
        }
        objectAttributes = try r.u32("objectAttributes")
        _ = try r.sized("authPolicy", max: 64)
        let symmetricAlgorithm = try r.u16("parameters.symmetric.algorithm")
        symmetric = (symmetricAlgorithm, 0, 0)
        if symmetricAlgorithm != TPMConstant.algNull {
            symmetric.keyBits = try r.u16("parameters.symmetric.keyBits")
            symmetric.mode = try r.u16("parameters.symmetric.mode")
        }
        scheme = try r.u16("parameters.scheme.scheme")
        schemeHash = TPMConstant.algNull
        if scheme != TPMConstant.algNull { schemeHash = try r.u16("parameters.scheme.hashAlg") }
        let curveAt = r.offset
        let curve = try r.u16("parameters.curveID")
        guard curve == TPMConstant.curveP256 else {
            throw r.fail("parameters.curveID", "0x\(String(curve, radix: 16)), not NIST P-256 (0x3)", at: curveAt)
        }
        let kdf = try r.u16("parameters.kdf.scheme")
        if kdf != TPMConstant.algNull { _ = try r.u16("parameters.kdf.hashAlg") }
        let xAt = r.offset
        x = try r.sized("unique.x", max: 32)
        y = try r.sized("unique.y", max: 32)
        try r.expectEnd()
        guard x.count == 32, y.count == 32 else { throw r.fail("unique", "the point's coordinates are not 32 bytes each", at: xAt) }
        name = [0x00, 0x0B] + Array(SHA256.hash(data: bytes[2...]))
    }

    /// The point as an uncompressed X9.63 key.
    var x963: [UInt8] { [0x04] + x + y }

    static func notOnCurve(_ bytes: [UInt8]) -> AttestationError {
        // unique.x follows the fixed fields; report where the point starts.
        .malformed(structure: "TPM2B_PUBLIC", field: "unique", offset: max(0, bytes.count - 68), reason: "the point is not on P-256")
    }
}

/// The public part of an ECC attestation key from a marshalled TPM2B_PUBLIC.
public struct AttestationKeyPublic: Sendable {
    public let key: P256.Signing.PublicKey
    public let objectAttributes: UInt32
    /// nameAlg ‖ SHA-256(TPMT_PUBLIC): the name MakeCredential binds to.
    public let name: [UInt8]

    /// Parses and checks: an ECC P-256 key with SHA-256 as its name algorithm,
    /// a restricted signing key (so it signs only what the TPM itself made),
    /// fixed to its TPM, whose scheme is ECDSA/SHA-256 or left to the caller.
    public init(parsing bytes: [UInt8]) throws(AttestationError) {
        let area = try ECCPublicArea(parsing: bytes)
        do {
            key = try P256.Signing.PublicKey(x963Representation: area.x963)
        } catch {
            throw ECCPublicArea.notOnCurve(bytes)
        }
        objectAttributes = area.objectAttributes
        name = area.name
        let need = TPMConstant.attrRestricted | TPMConstant.attrSign | TPMConstant.attrFixedTPM
        guard objectAttributes & need == need, objectAttributes & TPMConstant.attrDecrypt == 0 else {
            throw .unsuitableKey(reason: "the attestation key's attributes 0x\(String(objectAttributes, radix: 16)) are not a restricted, fixedTPM signing key")
        }
        guard area.scheme == TPMConstant.algNull || (area.scheme == TPMConstant.algECDSA && area.schemeHash == TPMConstant.algSHA256) else {
            throw .unsuitableKey(reason: "the attestation key's scheme 0x\(String(area.scheme, radix: 16)) is not ECDSA with SHA-256")
        }
    }
}
