// GPT header and partition entry, as the UEFI specification lays them out.
//
// Header (LBA 1 for the primary, the last LBA for the backup), 92 bytes used:
//
//   0   "EFI PART"            8   revision 0x00010000   12  header size (92)
//   16  header CRC32          20  reserved (0)          24  my LBA
//   32  alternate LBA         40  first usable LBA      48  last usable LBA
//   56  disk GUID (16)        72  entries start LBA     80  number of entries
//   84  size of one entry     88  entries CRC32         92  (zero to end of sector)
//
// Entry (128 bytes):
//
//   0   type GUID (16)        16  unique GUID (16)      32  first LBA
//   40  last LBA (inclusive)  48  attributes (64 bit)   56  name, 36 UTF-16LE units

/// One GPT header (primary or backup).
public struct GPTHeader: Equatable, Sendable {
    public static let signature: [UInt8] = Array("EFI PART".utf8)
    public static let revision: UInt32 = 0x0001_0000
    public static let size: UInt32 = 92

    public var myLBA: UInt64
    public var alternateLBA: UInt64
    public var firstUsableLBA: UInt64
    public var lastUsableLBA: UInt64
    public var diskGUID: GUID
    public var entriesLBA: UInt64
    public var entryCount: UInt32
    public var entrySize: UInt32
    public var entriesCRC32: UInt32

    public init(myLBA: UInt64, alternateLBA: UInt64, firstUsableLBA: UInt64, lastUsableLBA: UInt64,
                diskGUID: GUID, entriesLBA: UInt64, entryCount: UInt32, entrySize: UInt32, entriesCRC32: UInt32) {
        self.myLBA = myLBA
        self.alternateLBA = alternateLBA
        self.firstUsableLBA = firstUsableLBA
        self.lastUsableLBA = lastUsableLBA
        self.diskGUID = diskGUID
        self.entriesLBA = entriesLBA
        self.entryCount = entryCount
        self.entrySize = entrySize
        self.entriesCRC32 = entriesCRC32
    }

    /// Serialises the header into a full sector, with its CRC computed.
    public func encode(sectorSize: Int) -> [UInt8] {
        var w = LittleEndianWriter(capacity: sectorSize)
        w.append(GPTHeader.signature)
        w.u32(GPTHeader.revision)
        w.u32(GPTHeader.size)
        w.u32(0)                 // CRC, patched below
        w.u32(0)
        w.u64(myLBA)
        w.u64(alternateLBA)
        w.u64(firstUsableLBA)
        w.u64(lastUsableLBA)
        w.append(diskGUID.bytes)
        w.u64(entriesLBA)
        w.u32(entryCount)
        w.u32(entrySize)
        w.u32(entriesCRC32)
        var sector = w.bytes
        sector.storeLE32(CRC32.checksum(sector[0..<Int(GPTHeader.size)]), at: 16)
        sector.append(contentsOf: repeatElement(0, count: sectorSize - sector.count))
        return sector
    }

    /// Parses and validates a header sector. `copy` names which copy this is
    /// so errors can say where the problem was.
    public static func decode(_ sector: [UInt8], copy: GPTCopy) throws(GPTError) -> GPTHeader {
        guard sector.count >= 92 else { throw .truncated(what: "\(copy) header", size: sector.count) }
        var r = LittleEndianReader(sector)
        do {
            let sig = try r.bytes(8)
            guard sig == signature else { throw GPTError.badSignature(copy: copy) }
            let rev = try r.u32()
            guard rev == revision else { throw GPTError.badField(copy: copy, field: "revision", value: UInt64(rev)) }
            let hsize = try r.u32()
            guard hsize >= 92, Int(hsize) <= sector.count else {
                throw GPTError.badField(copy: copy, field: "header size", value: UInt64(hsize))
            }
            let storedCRC = try r.u32()
            var zeroed = Array(sector[0..<Int(hsize)])
            zeroed.storeLE32(0, at: 16)
            let actual = CRC32.checksum(zeroed)
            guard actual == storedCRC else { throw GPTError.headerCRCMismatch(copy: copy, expected: storedCRC, actual: actual) }
            try r.skip(4)
            let h = GPTHeader(
                myLBA: try r.u64(), alternateLBA: try r.u64(),
                firstUsableLBA: try r.u64(), lastUsableLBA: try r.u64(),
                diskGUID: GUID(diskBytes: try r.bytes(16)), entriesLBA: try r.u64(),
                entryCount: try r.u32(), entrySize: try r.u32(), entriesCRC32: try r.u32())
            guard h.entrySize >= 128, h.entrySize % 8 == 0, h.entrySize <= 4096 else {
                throw GPTError.badField(copy: copy, field: "entry size", value: UInt64(h.entrySize))
            }
            guard h.entryCount >= 1, h.entryCount <= 4096 else {
                throw GPTError.badField(copy: copy, field: "entry count", value: UInt64(h.entryCount))
            }
            guard h.firstUsableLBA <= h.lastUsableLBA + 1 else {
                throw GPTError.badField(copy: copy, field: "first usable LBA", value: h.firstUsableLBA)
            }
            return h
        } catch let e as GPTError {
            throw e
        } catch {
            throw .truncated(what: "\(copy) header", size: sector.count)
        }
    }
}

/// One partition entry. An entry whose type GUID is zero is unused.
public struct GPTPartition: Equatable, Sendable {
    public var typeGUID: GUID
    public var uniqueGUID: GUID
    public var firstLBA: UInt64
    public var lastLBA: UInt64
    public var attributes: UInt64
    public var name: String

    public init(typeGUID: GUID, uniqueGUID: GUID, firstLBA: UInt64, lastLBA: UInt64, attributes: UInt64 = 0, name: String) {
        self.typeGUID = typeGUID
        self.uniqueGUID = uniqueGUID
        self.firstLBA = firstLBA
        self.lastLBA = lastLBA
        self.attributes = attributes
        self.name = name
    }

    public static let empty = GPTPartition(typeGUID: .zero, uniqueGUID: .zero, firstLBA: 0, lastLBA: 0, name: "")

    public var isUsed: Bool { !typeGUID.isZero }
    public var sectorCount: UInt64 { lastLBA >= firstLBA ? lastLBA - firstLBA + 1 : 0 }

    /// The name field holds at most 36 UTF-16 code units.
    public static let maxNameUnits = 36

    public func encode(entrySize: Int) -> [UInt8] {
        var w = LittleEndianWriter(capacity: entrySize)
        w.append(typeGUID.bytes)
        w.append(uniqueGUID.bytes)
        w.u64(firstLBA)
        w.u64(lastLBA)
        w.u64(attributes)
        for unit in Array(name.utf16).prefix(GPTPartition.maxNameUnits) { w.u16(unit) }
        w.pad(to: entrySize)
        return w.bytes
    }

    public static func decode(_ bytes: ArraySlice<UInt8>) -> GPTPartition {
        var r = LittleEndianReader(Array(bytes))
        // The caller guarantees at least 128 bytes, so these reads cannot fail;
        // fall back to an empty entry rather than trap if that ever changes.
        guard bytes.count >= 128,
              let type = try? r.bytes(16), let uniq = try? r.bytes(16),
              let first = try? r.u64(), let last = try? r.u64(), let attrs = try? r.u64()
        else { return .empty }
        var units: [UInt16] = []
        for _ in 0..<maxNameUnits {
            guard let u = try? r.u16(), u != 0 else { break }
            units.append(u)
        }
        let name = String(decoding: units, as: UTF16.self)
        return GPTPartition(typeGUID: GUID(diskBytes: type), uniqueGUID: GUID(diskBytes: uniq),
                            firstLBA: first, lastLBA: last, attributes: attrs, name: name)
    }
}

/// Which of the two GPT copies a value or an error refers to.
public enum GPTCopy: String, Sendable, Codable, CustomStringConvertible {
    case primary, backup
    public var description: String { rawValue }
}
