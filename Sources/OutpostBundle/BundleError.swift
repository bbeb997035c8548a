// Errors of the bundle library. Every case names what was wrong and where
// (field, byte offset, key ID), because the message is all an operator of ten
// thousand unattended devices gets to see.

import OutpostPlatform

/// Everything that can be wrong with a bundle, a key or a trust store.
public enum BundleError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The file ends before `field` (which starts at `offset`) is complete.
    case truncated(field: String, offset: UInt64, wanted: UInt64, available: UInt64)
    /// Bytes after the payload: a bundle is exactly header + … + payload.
    case trailingData(offset: UInt64, extra: UInt64)
    case badMagic(found: [UInt8])
    case unsupportedFormat(version: UInt16)
    /// A fixed-layout field holds a value the format does not allow.
    case badField(field: String, offset: UInt64, value: UInt64, reason: String)
    /// Reserved or padding bytes that must be zero are not.
    case nonZeroPadding(field: String, offset: UInt64)
    /// The manifest does not decode, or a decoded field is out of range.
    case manifestInvalid(field: String, reason: String)
    case signatureMalformed(index: Int, keyID: KeyID, offset: UInt64, reason: String)
    /// A trust anchor's signature over header + manifest does not verify.
    case signatureInvalid(keyID: KeyID)
    /// No signature is by a trust anchor.
    case keyUnknown(keyIDs: [KeyID])
    case keyRevoked(keyID: KeyID)
    case securityVersionBelowFloor(version: UInt64, floor: UInt64)
    case boardMismatch(bundle: String, device: String)
    case archMismatch(bundle: String, device: String)
    case payloadTooLarge(size: UInt64, slotSize: UInt64)
    case payloadLengthMismatch(expected: UInt64, actual: UInt64)
    case payloadDigestMismatch(expected: String, actual: String)
    /// Reading the bundle's bytes failed (I/O, not format).
    case source(offset: UInt64, reason: String)
    case key(path: String, reason: String)
    case trustStore(path: String, reason: String)
    /// The vault's approved policies (a vault.json or a manifest's `vault`) are
    /// malformed, inconsistent or not signed by a trust anchor; `source` is a path or empty.
    case vaultInvalid(source: String, field: String, reason: String)
    /// A system call on a bundle, key or trust-store file failed.
    case system(SystemError)

    public var description: String {
        switch self {
        case let .truncated(field, offset, wanted, available):
            return "truncated at offset \(offset): \(field) needs \(wanted) bytes, \(available) available"
        case let .trailingData(offset, extra): return "\(extra) unexpected bytes after the payload at offset \(offset)"
        case let .badMagic(found): return "not an Outpost bundle (magic \(hex(found)))"
        case let .unsupportedFormat(v): return "unsupported bundle format version \(v)"
        case let .badField(field, offset, value, reason):
            return "header field '\(field)' at offset \(offset) has invalid value \(value): \(reason)"
        case let .nonZeroPadding(field, offset): return "\(field) at offset \(offset) is not zero"
        case let .manifestInvalid(field, reason): return "manifest field '\(field)': \(reason)"
        case let .signatureMalformed(index, keyID, offset, reason):
            return "signature \(index) (key \(keyID)) at offset \(offset) is malformed: \(reason)"
        case let .signatureInvalid(k): return "signature by key \(k) does not verify"
        case let .keyUnknown(ids):
            return "signed only by unknown key\(ids.count == 1 ? "" : "s") \(ids.map(\.description).joined(separator: ", ")) (not a trust anchor)"
        case let .keyRevoked(k): return "key \(k) is revoked"
        case let .securityVersionBelowFloor(v, f): return "security version \(v) is below the device floor \(f)"
        case let .boardMismatch(b, d): return "bundle is for board '\(b)', this device is '\(d)'"
        case let .archMismatch(b, d): return "bundle is for arch '\(b)', this device is '\(d)'"
        case let .payloadTooLarge(s, slot): return "payload of \(s) bytes is larger than the slot (\(slot) bytes)"
        case let .payloadLengthMismatch(e, a): return "payload length mismatch: manifest says \(e) bytes, got \(a)"
        case let .payloadDigestMismatch(e, a): return "payload sha256 mismatch: manifest says \(e), payload is \(a)"
        case let .source(offset, reason): return "reading the bundle at offset \(offset) failed: \(reason)"
        case let .key(path, reason): return "key \(path): \(reason)"
        case let .trustStore(path, reason): return "trust store \(path): \(reason)"
        case let .vaultInvalid(source, field, reason):
            return "vault approvals\(source.isEmpty ? "" : " " + source): field '\(field)': \(reason)"
        case let .system(error): return error.description
        }
    }
}

/// Lower-case hex of bytes.
public func hex<C: Collection>(_ bytes: C) -> String where C.Element == UInt8 {
    let digits: [Character] = Array("0123456789abcdef")
    var s = ""
    s.reserveCapacity(bytes.count * 2)
    for b in bytes {
        s.append(digits[Int(b >> 4)])
        s.append(digits[Int(b & 0xF)])
    }
    return s
}

/// Bytes from lower-case or upper-case hex; nil on any other character or odd length.
public func bytes(fromHex s: String) -> [UInt8]? {
    let u = Array(s.utf8)
    guard u.count % 2 == 0 else { return nil }
    func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: return c - 0x30
        case 0x61...0x66: return c - 0x61 + 10
        case 0x41...0x46: return c - 0x41 + 10
        default: return nil
        }
    }
    var out: [UInt8] = []
    out.reserveCapacity(u.count / 2)
    var i = 0
    while i < u.count {
        guard let hi = nibble(u[i]), let lo = nibble(u[i + 1]) else { return nil }
        out.append(hi << 4 | lo)
        i += 2
    }
    return out
}
