/// Everything that can be wrong with a GPT, with enough context to say where.
public indirect enum GPTError: Error, Equatable, CustomStringConvertible {
    case deviceTooSmall(sectors: UInt64)
    case truncated(what: String, size: Int)
    case badSignature(copy: GPTCopy)
    case badField(copy: GPTCopy, field: String, value: UInt64)
    case headerCRCMismatch(copy: GPTCopy, expected: UInt32, actual: UInt32)
    case entriesCRCMismatch(copy: GPTCopy, expected: UInt32, actual: UInt32)
    case wrongLocation(copy: GPTCopy, expectedLBA: UInt64, foundLBA: UInt64)
    case bothCopiesInvalid(primary: GPTError, backup: GPTError)
    case layout(String)

    public var description: String {
        switch self {
        case let .deviceTooSmall(s): return "device of \(s) sectors is too small for a GPT"
        case let .truncated(what, size): return "\(what) is truncated (\(size) bytes)"
        case let .badSignature(copy): return "\(copy) GPT header has no \"EFI PART\" signature"
        case let .badField(copy, field, value): return "\(copy) GPT header field '\(field)' has invalid value \(value)"
        case let .headerCRCMismatch(copy, e, a):
            return "\(copy) GPT header CRC mismatch (stored \(hex32(e)), computed \(hex32(a)))"
        case let .entriesCRCMismatch(copy, e, a):
            return "\(copy) GPT partition entries CRC mismatch (stored \(hex32(e)), computed \(hex32(a)))"
        case let .wrongLocation(copy, e, f): return "\(copy) GPT header claims LBA \(f) but sits at LBA \(e)"
        case let .bothCopiesInvalid(p, b): return "no valid GPT: primary: \(p); backup: \(b)"
        case let .layout(s): return s
        }
    }
}

func hex32(_ v: UInt32) -> String {
    let s = String(v, radix: 16)
    return "0x" + String(repeating: "0", count: max(0, 8 - s.count)) + s
}
