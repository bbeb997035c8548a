// GUIDs as stored in a GPT: 16 bytes, the first three fields little-endian
// ("mixed-endian"), the last two big-endian. Text form is upper case
// 8-4-4-4-12, the form `sgdisk`, `cgpt` and `blkid` print.
//
//   text:  00112233-4455-6677-8899-AABBCCDDEEFF
//   disk:  33 22 11 00 55 44 77 66 88 99 AA BB CC DD EE FF

/// A GPT GUID, kept in its on-disk byte order.
public struct GUID: Hashable, Sendable, CustomStringConvertible, Codable {
    /// The 16 bytes exactly as they appear on disk.
    public let bytes: [UInt8]

    public static let zero = GUID(diskBytes: [UInt8](repeating: 0, count: 16))

    /// Wraps 16 on-disk bytes; shorter or longer input is padded or cut to 16.
    public init(diskBytes: [UInt8]) {
        var b = Array(diskBytes.prefix(16))
        while b.count < 16 { b.append(0) }
        bytes = b
    }

    /// Parses the canonical text form (case-insensitive). Returns nil if malformed.
    public init?(_ text: String) {
        let hex = text.filter { $0 != "-" }
        let groups = text.split(separator: "-", omittingEmptySubsequences: false).map(\.count)
        guard groups == [8, 4, 4, 4, 12], hex.count == 32 else { return nil }
        var raw: [UInt8] = []
        var chars = Array(hex.utf8)
        while !chars.isEmpty {
            guard let hi = GUID.nibble(chars[0]), let lo = GUID.nibble(chars[1]) else { return nil }
            raw.append(hi << 4 | lo)
            chars.removeFirst(2)
        }
        // Text order → disk order: byte-swap the first three fields.
        bytes = [raw[3], raw[2], raw[1], raw[0], raw[5], raw[4], raw[7], raw[6]] + raw[8..<16]
    }

    public var isZero: Bool { bytes.allSatisfy { $0 == 0 } }

    public var description: String {
        let t = [bytes[3], bytes[2], bytes[1], bytes[0], bytes[5], bytes[4], bytes[7], bytes[6]] + bytes[8..<16]
        let h = t.map { b -> String in
            let s = String(b, radix: 16, uppercase: true)
            return s.count == 1 ? "0" + s : s
        }
        return h[0..<4].joined() + "-" + h[4..<6].joined() + "-" + h[6..<8].joined() + "-"
            + h[8..<10].joined() + "-" + h[10..<16].joined()
    }

    /// Derives a GUID deterministically from a seed and a purpose, so that the
    /// same build inputs give the same disk. The result is a version-4-shaped
    /// GUID (variant and version bits set) made from a 128-bit FNV-1a-style mix.
    public static func derived(seed: String, purpose: String) -> GUID {
        var h1: UInt64 = 0xCBF2_9CE4_8422_2325
        var h2: UInt64 = 0x8422_2325_CBF2_9CE4
        for b in Array((seed + "\u{0}" + purpose).utf8) {
            h1 = (h1 ^ UInt64(b)) &* 0x0000_0100_0000_01B3
            h2 = (h2 ^ UInt64(b) ^ (h1 >> 29)) &* 0x0000_0100_0000_01B3
        }
        // Final avalanche so nearby seeds differ in every byte.
        for _ in 0..<4 {
            h1 ^= h2 >> 31; h1 = h1 &* 0x9E37_79B9_7F4A_7C15
            h2 ^= h1 >> 27; h2 = h2 &* 0xBF58_476D_1CE4_E5B9
        }
        var raw: [UInt8] = []
        for i in 0..<8 { raw.append(UInt8(truncatingIfNeeded: h1 >> (8 * UInt64(i)))) }
        for i in 0..<8 { raw.append(UInt8(truncatingIfNeeded: h2 >> (8 * UInt64(i)))) }
        raw[7] = (raw[7] & 0x0F) | 0x40   // version 4 (in disk order byte 7 holds the version nibble)
        raw[8] = (raw[8] & 0x3F) | 0x80   // RFC 4122 variant
        return GUID(diskBytes: raw)
    }

    private static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
        default: return nil
        }
    }

    public init(from decoder: Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let g = GUID(text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not a GUID: \(text)"))
        }
        self = g
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }
}

/// The partition type GUIDs of the Outpost disk contract (ARCHITECTURE.md).
public enum PartitionType {
    public static let efiSystem = GUID("C12A7328-F81F-11D2-BA4B-00A0C93EC93B") ?? .zero
    public static let slot = GUID("5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6") ?? .zero
    public static let config = GUID("13307E62-CD9C-4920-8F9B-91B45828B798") ?? .zero
    public static let persist = GUID("5F24425A-2DFA-11E8-A270-7B663FACCC2C") ?? .zero
}
