import Foundation
import OutpostDisk

/// The declarative disk layout from `partitions/*.json`, validated. Sizes are
/// in bytes and every partition is 1 MiB aligned, so the disk works on 4K-native
/// media and erase blocks.
public struct Layout: Equatable, Sendable {
    public static let mib: UInt64 = 1 << 20
    public static let sectorSize = 512

    public struct Partition: Equatable, Sendable {
        public var name: String
        public var type: GUID
        public var start: UInt64      // bytes
        public var size: UInt64       // bytes
        public var filesystem: Filesystem
        public var label: String
        public var slotState: SlotState?

        public var end: UInt64 { start + size }
        public var firstLBA: UInt64 { start / UInt64(Layout.sectorSize) }
        public var lastLBA: UInt64 { end / UInt64(Layout.sectorSize) - 1 }
    }

    /// The filesystems the builder can create.
    public enum Filesystem: String, Sendable, CaseIterable {
        case fat32, fat16, fat12, ext4
        /// An Outpost slot image (docs/boot.md), written verbatim.
        case slot
        /// Left zeroed.
        case none
    }

    public var diskSize: UInt64
    public var seed: String
    public var partitions: [Partition]

    public func partition(named name: String) -> Partition? { partitions.first { $0.name == name } }

    /// Parses and validates a layout file; every error names the file and field.
    public static func load(path: String) throws -> Layout {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw BuilderError.missingInput(path: path, what: "layout file")
        }
        return try parse(data, file: path)
    }

    public static func parse(_ data: Data, file: String) throws -> Layout {
        let raw: RawLayout
        do {
            raw = try JSONDecoder().decode(RawLayout.self, from: data)
        } catch let DecodingError.keyNotFound(key, ctx) {
            throw BuilderError.layout(file: file, field: path(ctx.codingPath + [key]), message: "required field is missing")
        } catch let DecodingError.typeMismatch(_, ctx), let DecodingError.valueNotFound(_, ctx) {
            throw BuilderError.layout(file: file, field: path(ctx.codingPath), message: "wrong type: \(ctx.debugDescription)")
        } catch let DecodingError.dataCorrupted(ctx) {
            throw BuilderError.layout(file: file, field: path(ctx.codingPath).isEmpty ? "(file)" : path(ctx.codingPath),
                                      message: "not valid JSON: \(ctx.underlyingError.map { "\($0)" } ?? ctx.debugDescription)")
        }
        return try validate(raw, file: file)
    }

    private static func validate(_ raw: RawLayout, file: String) throws -> Layout {
        func fail(_ field: String, _ message: String) -> BuilderError { .layout(file: file, field: field, message: message) }
        guard !raw.partitions.isEmpty else { throw fail("partitions", "no partitions") }
        guard raw.partitions.count <= GPT.defaultEntryCount else { throw fail("partitions", "more than \(GPT.defaultEntryCount) partitions") }

        var parts: [Partition] = []
        var cursor = mib   // the first partition starts at 1 MiB, after the primary GPT
        for (i, rp) in raw.partitions.enumerated() {
            let f = "partitions[\(i)]"
            guard !rp.name.isEmpty, rp.name.utf16.count <= GPTPartition.maxNameUnits else {
                throw fail("\(f).name", "must be 1 to \(GPTPartition.maxNameUnits) characters")
            }
            if parts.contains(where: { $0.name == rp.name }) { throw fail("\(f).name", "duplicate partition name '\(rp.name)'") }
            guard let type = GUID(rp.type) else { throw fail("\(f).type", "'\(rp.type)' is not a GUID") }
            guard let fs = Filesystem(rawValue: rp.filesystem) else {
                throw fail("\(f).filesystem", "unknown filesystem '\(rp.filesystem)' (known: \(Filesystem.allCases.map(\.rawValue).joined(separator: ", ")))")
            }
            let size = try parseSize(rp.size, field: "\(f).size", file: file)
            guard size % mib == 0, size > 0 else { throw fail("\(f).size", "\(rp.size) is not a positive multiple of 1 MiB") }
            var start = cursor
            if let s = rp.start {
                start = try parseSize(s, field: "\(f).start", file: file)
                guard start % mib == 0 else { throw fail("\(f).start", "\(s) is not aligned to 1 MiB") }
                guard start >= mib else { throw fail("\(f).start", "\(s) overlaps the primary GPT (the first MiB)") }
            }
            if let other = parts.first(where: { start < $0.end && $0.start < start + size }) {
                throw fail("\(f)", "'\(rp.name)' overlaps '\(other.name)'")
            }
            var state: SlotState?
            if let s = rp.slotState {
                guard let st = SlotState(rawValue: s) else {
                    throw fail("\(f).slotState", "unknown slot state '\(s)' (known: active, updating, inprogress, unused)")
                }
                state = st
            }
            if type == PartitionType.slot && state == nil { throw fail("\(f).slotState", "a slot partition needs an initial slot state") }
            if type != PartitionType.slot && state != nil { throw fail("\(f).slotState", "only slot partitions have a slot state") }
            if fs == .slot && type != PartitionType.slot { throw fail("\(f).filesystem", "'slot' content needs the slot type GUID") }
            let label = rp.label ?? rp.name
            if fs.isFAT, label.utf8.count > 11 { throw fail("\(f).label", "FAT labels are at most 11 characters") }
            parts.append(Partition(name: rp.name, type: type, start: start, size: size, filesystem: fs, label: label, slotState: state))
            cursor = max(cursor, start + size)
        }

        let slots = parts.filter { $0.type == PartitionType.slot }
        if let first = slots.first, let odd = slots.first(where: { $0.size != first.size }) {
            throw fail("partitions", "slot partitions must be the same size: \(first.name) is \(first.size / mib) MiB, \(odd.name) is \(odd.size / mib) MiB")
        }
        // The backup GPT needs 33 sectors at the end; keep the last MiB free for it.
        let needed = (parts.map(\.end).max() ?? mib) + mib
        let diskSize = try raw.disk?.size.map { try parseSize($0, field: "disk.size", file: file) } ?? needed
        guard diskSize % mib == 0 else { throw fail("disk.size", "\(diskSize) bytes is not a multiple of 1 MiB") }
        guard diskSize >= needed else {
            throw fail("disk.size", "disk of \(diskSize / mib) MiB is too small: the partitions and the backup GPT need \(needed / mib) MiB")
        }
        return Layout(diskSize: diskSize, seed: raw.disk?.seed ?? "outpost", partitions: parts)
    }

    /// "64MiB", "1GiB", "512KiB" or a plain byte count.
    static func parseSize(_ text: String, field: String, file: String) throws -> UInt64 {
        let units: [(String, UInt64)] = [("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("TiB", 1 << 40)]
        let t = text.trimmingCharacters(in: .whitespaces)
        for (suffix, mult) in units where t.hasSuffix(suffix) {
            if let n = UInt64(t.dropLast(suffix.count).trimmingCharacters(in: .whitespaces)), n <= UInt64.max / mult { return n * mult }
        }
        if let n = UInt64(t) { return n }
        throw BuilderError.layout(file: file, field: field, message: "'\(text)' is not a size (use KiB, MiB or GiB, e.g. 64MiB)")
    }

    private static func path(_ keys: [CodingKey]) -> String {
        keys.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined().trimmingCharacters(in: CharacterSet(charactersIn: "."))
            .replacingOccurrences(of: ".[", with: "[")
    }
}

extension Layout.Filesystem {
    var isFAT: Bool { self == .fat12 || self == .fat16 || self == .fat32 }
}

/// The JSON shape of a layout file, before validation.
struct RawLayout: Decodable {
    struct Disk: Decodable { var size: String?; var seed: String? }
    struct Part: Decodable {
        var name: String
        var type: String
        var size: String
        var start: String?
        var filesystem: String
        var label: String?
        var slotState: String?
    }
    var disk: Disk?
    var partitions: [Part]
}
