// A GUID partition table and how it lives on a disk.
//
//   LBA 0        protective MBR
//   LBA 1        primary header ──┐
//   LBA 2..33    primary entries  │ identical content,
//   ...          partitions       │ each copy with its own CRCs
//   LBA N-33..N-2 backup entries  │
//   LBA N-1      backup header  ──┘
//
// Reading prefers the primary and falls back to the backup. Writing always
// writes the backup copy first and the primary second, flushing in between,
// so that at no instant are both copies invalid: a power cut leaves either
// the old table (primary intact) or the new one (backup complete).

/// The logical partition table: what both copies describe.
public struct GPT: Equatable, Sendable {
    public var diskGUID: GUID
    public var firstUsableLBA: UInt64
    public var lastUsableLBA: UInt64
    public var entrySize: UInt32
    /// All entries, used or not; partition number N is `entries[N - 1]`.
    public var entries: [GPTPartition]

    public static let defaultEntryCount = 128
    public static let defaultEntrySize: UInt32 = 128

    public init(diskGUID: GUID, firstUsableLBA: UInt64, lastUsableLBA: UInt64,
                entrySize: UInt32 = GPT.defaultEntrySize, entries: [GPTPartition]) {
        self.diskGUID = diskGUID
        self.firstUsableLBA = firstUsableLBA
        self.lastUsableLBA = lastUsableLBA
        self.entrySize = entrySize
        self.entries = entries
    }

    /// An empty table with the standard 128 entries, covering a disk of `sectorCount` sectors.
    public static func empty(sectorCount: UInt64, sectorSize: Int = 512, diskGUID: GUID) throws(GPTError) -> GPT {
        let entrySectors = UInt64(entryArraySectors(count: defaultEntryCount, size: Int(defaultEntrySize), sectorSize: sectorSize))
        guard sectorCount > 2 * (entrySectors + 1) + 2 else { throw .deviceTooSmall(sectors: sectorCount) }
        return GPT(diskGUID: diskGUID, firstUsableLBA: 2 + entrySectors,
                   lastUsableLBA: sectorCount - 2 - entrySectors,
                   entries: Array(repeating: .empty, count: defaultEntryCount))
    }

    /// Used partitions with their 1-based numbers, in table order.
    public var partitions: [(number: Int, partition: GPTPartition)] {
        entries.enumerated().compactMap { $0.element.isUsed ? ($0.offset + 1, $0.element) : nil }
    }

    /// The number of the first used partition called `name`, if any.
    public func number(named name: String) -> Int? {
        partitions.first { $0.partition.name == name }?.number
    }

    /// The serialised entry array, padded to whole sectors.
    public func encodedEntries(sectorSize: Int) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(entries.count * Int(entrySize))
        for e in entries { bytes += e.encode(entrySize: Int(entrySize)) }
        let padded = GPT.entryArraySectors(count: entries.count, size: Int(entrySize), sectorSize: sectorSize) * sectorSize
        bytes += repeatElement(0, count: padded - bytes.count)
        return bytes
    }

    /// The primary and backup headers for a disk whose backup header is at `backupLBA`.
    public func headers(backupLBA: UInt64, sectorSize: Int) -> (primary: GPTHeader, backup: GPTHeader) {
        let arrayBytes = entries.count * Int(entrySize)
        let crc = CRC32.checksum(encodedEntries(sectorSize: sectorSize)[0..<arrayBytes])
        let sectors = UInt64(GPT.entryArraySectors(count: entries.count, size: Int(entrySize), sectorSize: sectorSize))
        let primary = GPTHeader(myLBA: 1, alternateLBA: backupLBA, firstUsableLBA: firstUsableLBA,
                                lastUsableLBA: lastUsableLBA, diskGUID: diskGUID, entriesLBA: 2,
                                entryCount: UInt32(entries.count), entrySize: entrySize, entriesCRC32: crc)
        var backup = primary
        backup.myLBA = backupLBA
        backup.alternateLBA = 1
        backup.entriesLBA = backupLBA - sectors
        return (primary, backup)
    }

    static func entryArraySectors(count: Int, size: Int, sectorSize: Int) -> Int {
        (count * size + sectorSize - 1) / sectorSize
    }
}

/// The health of one GPT copy as found on disk.
public enum GPTCopyHealth: Equatable, Sendable {
    case valid
    /// Valid on its own but describing a different table than the primary:
    /// a write was interrupted between the two copies.
    case stale
    case invalid(GPTError)

    public var isValid: Bool { self == .valid }
}

/// What `GPTDisk.read` found: the table to trust and the state of each copy.
public struct GPTReadResult: Sendable {
    public var gpt: GPT
    public var primary: GPTCopyHealth
    public var backup: GPTCopyHealth
    /// Where the backup header is (or should be).
    public var backupLBA: UInt64
    public var protectiveMBR: Bool
    /// The copy the table was taken from.
    public var source: GPTCopy

    public var needsRepair: Bool { primary != .valid || backup != .valid }
}

/// Reading, validating, repairing and writing a GPT on a block device.
public enum GPTDisk {
    /// Reads both copies. The primary wins when valid; otherwise the backup is
    /// used. Throws `bothCopiesInvalid` only when neither copy can be trusted.
    public static func read(_ device: BlockDevice) throws -> GPTReadResult {
        guard device.sectorCount >= 67 else { throw GPTError.deviceTooSmall(sectors: device.sectorCount) }
        let lastLBA = device.sectorCount - 1
        let mbr = ProtectiveMBR.isProtective(try device.read(lba: 0, count: 1))

        var primary: (header: GPTHeader, gpt: GPT)?
        var primaryError: GPTError?
        do { primary = try readCopy(device, headerLBA: 1, copy: .primary) } catch let e as GPTError { primaryError = e }

        // A valid primary says where its backup is; this still works after the
        // image was written to a larger disk and the backup is not at the end.
        let backupLBA = primary.map { $0.header.alternateLBA } ?? lastLBA
        var backup: (header: GPTHeader, gpt: GPT)?
        var backupError: GPTError?
        if backupLBA <= lastLBA, backupLBA > 1 {
            do { backup = try readCopy(device, headerLBA: backupLBA, copy: .backup) } catch let e as GPTError { backupError = e }
        } else {
            backupError = .badField(copy: .primary, field: "alternate LBA", value: backupLBA)
        }

        switch (primary, backup) {
        case let (p?, b?):
            return GPTReadResult(gpt: p.gpt, primary: .valid, backup: b.gpt == p.gpt ? .valid : .stale,
                                 backupLBA: backupLBA, protectiveMBR: mbr, source: .primary)
        case let (p?, nil):
            return GPTReadResult(gpt: p.gpt, primary: .valid, backup: .invalid(backupError ?? .badSignature(copy: .backup)),
                                 backupLBA: backupLBA, protectiveMBR: mbr, source: .primary)
        case let (nil, b?):
            return GPTReadResult(gpt: b.gpt, primary: .invalid(primaryError ?? .badSignature(copy: .primary)), backup: .valid,
                                 backupLBA: backupLBA, protectiveMBR: mbr, source: .backup)
        case (nil, nil):
            throw GPTError.bothCopiesInvalid(primary: primaryError ?? .badSignature(copy: .primary),
                                             backup: backupError ?? .badSignature(copy: .backup))
        }
    }

    /// Writes `gpt` to both copies: backup entries and header, flush, then
    /// primary entries and header, flush. The protective MBR is written last
    /// only when `writeMBR` is set (it never changes after the image is built).
    public static func write(_ gpt: GPT, to device: BlockDevice, backupLBA: UInt64? = nil, writeMBR: Bool = false) throws {
        let ss = device.sectorSize
        let bLBA = backupLBA ?? (device.sectorCount - 1)
        let (primary, backup) = gpt.headers(backupLBA: bLBA, sectorSize: ss)
        let entries = gpt.encodedEntries(sectorSize: ss)
        try validatePlacement(gpt, backup: backup, device: device)

        try device.write(lba: backup.entriesLBA, bytes: entries)
        try device.write(lba: backup.myLBA, bytes: backup.encode(sectorSize: ss))
        try device.flush()
        try device.write(lba: primary.entriesLBA, bytes: entries)
        try device.write(lba: primary.myLBA, bytes: primary.encode(sectorSize: ss))
        if writeMBR {
            try device.write(lba: 0, bytes: ProtectiveMBR.encode(sectorCount: device.sectorCount))
        }
        try device.flush()
    }

    /// Restores whichever copy is invalid or stale from the trusted one,
    /// touching only the damaged copy's sectors. Returns the state before repair.
    @discardableResult
    public static func repair(_ device: BlockDevice) throws -> GPTReadResult {
        let found = try read(device)
        let ss = device.sectorSize
        let (primary, backup) = found.gpt.headers(backupLBA: found.backupLBA, sectorSize: ss)
        let entries = found.gpt.encodedEntries(sectorSize: ss)
        if found.backup != .valid {
            try device.write(lba: backup.entriesLBA, bytes: entries)
            try device.write(lba: backup.myLBA, bytes: backup.encode(sectorSize: ss))
            try device.flush()
        }
        if found.primary != .valid {
            try device.write(lba: primary.entriesLBA, bytes: entries)
            try device.write(lba: primary.myLBA, bytes: primary.encode(sectorSize: ss))
            try device.flush()
        }
        return found
    }

    private static func readCopy(_ device: BlockDevice, headerLBA: UInt64, copy: GPTCopy) throws -> (header: GPTHeader, gpt: GPT) {
        let ss = device.sectorSize
        let header = try GPTHeader.decode(try device.read(lba: headerLBA, count: 1), copy: copy)
        guard header.myLBA == headerLBA else {
            throw GPTError.wrongLocation(copy: copy, expectedLBA: headerLBA, foundLBA: header.myLBA)
        }
        let arrayBytes = Int(header.entryCount) * Int(header.entrySize)
        let sectors = GPT.entryArraySectors(count: Int(header.entryCount), size: Int(header.entrySize), sectorSize: ss)
        guard header.entriesLBA >= 1, header.entriesLBA != headerLBA,
              header.entriesLBA + UInt64(sectors) <= device.sectorCount else {
            throw GPTError.badField(copy: copy, field: "entries LBA", value: header.entriesLBA)
        }
        guard header.lastUsableLBA < device.sectorCount else {
            throw GPTError.badField(copy: copy, field: "last usable LBA", value: header.lastUsableLBA)
        }
        let raw = try device.read(lba: header.entriesLBA, count: sectors)
        let crc = CRC32.checksum(raw[0..<arrayBytes])
        guard crc == header.entriesCRC32 else {
            throw GPTError.entriesCRCMismatch(copy: copy, expected: header.entriesCRC32, actual: crc)
        }
        var entries: [GPTPartition] = []
        entries.reserveCapacity(Int(header.entryCount))
        for i in 0..<Int(header.entryCount) {
            let start = i * Int(header.entrySize)
            entries.append(GPTPartition.decode(raw[start..<start + Int(header.entrySize)]))
        }
        let gpt = GPT(diskGUID: header.diskGUID, firstUsableLBA: header.firstUsableLBA,
                      lastUsableLBA: header.lastUsableLBA, entrySize: header.entrySize, entries: entries)
        return (header, gpt)
    }

    private static func validatePlacement(_ gpt: GPT, backup: GPTHeader, device: BlockDevice) throws {
        guard backup.myLBA < device.sectorCount, gpt.lastUsableLBA < backup.entriesLBA else {
            throw GPTError.layout("GPT does not fit: last usable LBA \(gpt.lastUsableLBA), backup entries at LBA \(backup.entriesLBA), device has \(device.sectorCount) sectors")
        }
        for (n, p) in gpt.partitions {
            guard p.firstLBA >= gpt.firstUsableLBA, p.lastLBA <= gpt.lastUsableLBA, p.firstLBA <= p.lastLBA else {
                throw GPTError.layout("partition \(n) (\(p.name)) spans LBA \(p.firstLBA)-\(p.lastLBA), outside usable LBA \(gpt.firstUsableLBA)-\(gpt.lastUsableLBA)")
            }
        }
    }
}
