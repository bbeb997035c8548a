import Foundation
import OutpostDisk

/// A machine-readable description of a disk image's GPT, the schema of
/// `outpost image inspect --json`. GUIDs are upper case and `attributes` is
/// the full 64-bit value, so scripts can compare it with `sgdisk`/`cgpt`.
public struct DiskReport: Codable, Sendable {
    public struct Partition: Codable, Sendable {
        public var index: Int
        public var name: String
        public var typeGUID: String
        public var uniqueGUID: String
        public var firstLBA: UInt64
        public var lastLBA: UInt64
        public var attributes: UInt64
        public var priority: Int
        public var tries: Int
        public var successful: Bool
        /// The named slot state for slot partitions ("custom" when the bits match none); nil otherwise.
        public var state: String?
    }

    public var image: String
    public var sectorSize: Int
    public var sectors: UInt64
    public var diskGUID: String
    public var firstUsableLBA: UInt64
    public var lastUsableLBA: UInt64
    public var protectiveMBR: Bool
    public var primaryGPT: String
    public var backupGPT: String
    /// Which copy the table was read from.
    public var source: String
    public var warnings: [String]
    public var bootDecision: String
    public var partitions: [Partition]

    public init(image: String, device: BlockDevice, result r: GPTReadResult) {
        self.image = image
        sectorSize = device.sectorSize
        sectors = device.sectorCount
        diskGUID = r.gpt.diskGUID.description
        firstUsableLBA = r.gpt.firstUsableLBA
        lastUsableLBA = r.gpt.lastUsableLBA
        protectiveMBR = r.protectiveMBR
        primaryGPT = DiskReport.describe(r.primary)
        backupGPT = DiskReport.describe(r.backup)
        source = r.source.rawValue
        var w: [String] = []
        if case let .invalid(e) = r.primary { w.append("primary GPT is invalid (\(e)); using the backup copy") }
        if case let .invalid(e) = r.backup { w.append("backup GPT is invalid (\(e))") }
        if r.backup == .stale { w.append("backup GPT differs from the primary (an interrupted write); the primary is used") }
        if !r.protectiveMBR { w.append("LBA 0 holds no protective MBR") }
        warnings = w
        switch BootSelection.decide(r.gpt) {
        case let .boot(n, dec): bootDecision = "boot partition \(n)\(dec ? " (decrementing tries)" : "")"
        case let .rescue(n): bootDecision = "rescue: no slot qualifies, partition \(n) boots in rescue mode"
        case .none: bootDecision = "no slot partitions"
        }
        partitions = r.gpt.partitions.map { n, p in
            let a = p.slotAttributes
            return Partition(index: n, name: p.name, typeGUID: p.typeGUID.description, uniqueGUID: p.uniqueGUID.description,
                             firstLBA: p.firstLBA, lastLBA: p.lastLBA, attributes: p.attributes,
                             priority: Int(a.priority), tries: Int(a.tries), successful: a.successful,
                             state: p.isSlot ? (a.state?.rawValue ?? "custom") : nil)
        }
    }

    static func describe(_ h: GPTCopyHealth) -> String {
        switch h {
        case .valid: return "valid"
        case .stale: return "stale"
        case let .invalid(e): return "invalid: \(e)"
        }
    }

    public func json() throws -> String {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        return String(decoding: try enc.encode(self), as: UTF8.self)
    }

    /// The human-readable table.
    public func text() -> String {
        var lines = [
            "image:      \(image) (\(sectors) sectors of \(sectorSize) bytes, \(sectors * UInt64(sectorSize) / Layout.mib) MiB)",
            "disk GUID:  \(diskGUID)",
            "GPT:        primary \(primaryGPT); backup \(backupGPT); read from \(source)",
            "boot:       \(bootDecision)",
            "",
            pad("#", 3) + pad("name", 10) + pad("first LBA", 11) + pad("last LBA", 11) + pad("size", 10)
                + pad("attrs[48:63]", 13) + pad("state", 11) + "type GUID",
        ]
        for p in partitions {
            let size = (p.lastLBA - p.firstLBA + 1) * UInt64(sectorSize)
            let raw = String(p.attributes >> 48, radix: 16)
            lines.append(pad("\(p.index)", 3) + pad(p.name, 10) + pad("\(p.firstLBA)", 11) + pad("\(p.lastLBA)", 11)
                         + pad("\(size / Layout.mib) MiB", 10) + pad("0x" + String(repeating: "0", count: max(0, 3 - raw.count)) + raw, 13)
                         + pad(p.state ?? "-", 11) + p.typeGUID)
        }
        return lines.joined(separator: "\n")
    }

    private func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s + " " : s + String(repeating: " ", count: n - s.count) }
}
