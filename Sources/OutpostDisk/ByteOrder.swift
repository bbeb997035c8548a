// Explicit little-endian serialisation. Every on-disk structure in Outpost is
// read and written field by field through these helpers, never by copying a
// Swift struct's memory, so the format does not depend on the compiler.

/// A cursor that reads little-endian integers from a byte buffer.
/// Reads past the end throw instead of trapping: parsers run on untrusted disks.
public struct LittleEndianReader {
    public let bytes: [UInt8]
    public private(set) var offset: Int

    public init(_ bytes: [UInt8], offset: Int = 0) {
        self.bytes = bytes
        self.offset = offset
    }

    public mutating func skip(_ count: Int) throws(ByteReadError) {
        guard count >= 0, offset + count <= bytes.count else {
            throw ByteReadError.truncated(offset: offset, wanted: count, available: bytes.count - offset)
        }
        offset += count
    }

    public mutating func bytes(_ count: Int) throws(ByteReadError) -> [UInt8] {
        let start = offset
        try skip(count)
        return Array(bytes[start..<start + count])
    }

    public mutating func u8() throws(ByteReadError) -> UInt8 { UInt8(try integer(1)) }
    public mutating func u16() throws(ByteReadError) -> UInt16 { UInt16(try integer(2)) }
    public mutating func u32() throws(ByteReadError) -> UInt32 { UInt32(try integer(4)) }
    public mutating func u64() throws(ByteReadError) -> UInt64 { try integer(8) }

    private mutating func integer(_ width: Int) throws(ByteReadError) -> UInt64 {
        let start = offset
        try skip(width)
        var value: UInt64 = 0
        for i in (0..<width).reversed() {
            value = (value << 8) | UInt64(bytes[start + i])
        }
        return value
    }
}

/// Why a read ran off the end of a buffer.
public enum ByteReadError: Error, Equatable, CustomStringConvertible {
    case truncated(offset: Int, wanted: Int, available: Int)

    public var description: String {
        switch self {
        case let .truncated(offset, wanted, available):
            return "truncated data at offset \(offset): wanted \(wanted) bytes, \(max(available, 0)) available"
        }
    }
}

/// Appends little-endian integers to a growing byte buffer.
public struct LittleEndianWriter {
    public private(set) var bytes: [UInt8] = []

    public init(capacity: Int = 0) {
        bytes.reserveCapacity(capacity)
    }

    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    public mutating func u16(_ v: UInt16) { integer(UInt64(v), 2) }
    public mutating func u32(_ v: UInt32) { integer(UInt64(v), 4) }
    public mutating func u64(_ v: UInt64) { integer(v, 8) }
    public mutating func append(_ b: [UInt8]) { bytes.append(contentsOf: b) }
    public mutating func zeros(_ count: Int) { bytes.append(contentsOf: repeatElement(0, count: count)) }

    /// Pads with zeros up to `length` total bytes (no-op if already longer).
    public mutating func pad(to length: Int) {
        if bytes.count < length { zeros(length - bytes.count) }
    }

    private mutating func integer(_ v: UInt64, _ width: Int) {
        for i in 0..<width { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) }
    }
}

extension Array where Element == UInt8 {
    /// Overwrites a little-endian UInt32 in place; used to patch CRC fields.
    mutating func storeLE32(_ value: UInt32, at offset: Int) {
        for i in 0..<4 { self[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt32(i))) }
    }
}
