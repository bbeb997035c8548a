// An instance's disk: a qcow2 v3 file that records only the guest's writes and
// reads everything else from the verified image (its backing file). Written
// here because the device has no qemu-img; it costs a few metadata clusters,
// whatever the image size, where the seed system copies the whole image.
//
//   cluster 0  header (104 bytes, big-endian)
//              + extension 0xE2792ACA: the backing format ("raw" or "qcow2")
//              + end-of-extensions (type 0, length 0)
//              + the backing file's path (no terminator; offset and length in the header)
//   cluster 1  refcount table: one entry → cluster 2
//   cluster 2  refcount block: 16-bit counts, 1 for clusters 0 … 2+L1
//   cluster 3… L1 table, all zero (no L2 table yet: every read goes to the backing file)
//
// Cluster size 64 KiB: one L1 entry maps 512 MiB, one refcount block counts
// 2 GiB of file, so a fresh overlay's metadata always fits the first block.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import OutpostPlatform

/// A verified image an overlay can sit on, with the format and size read from its own bytes.
public struct BaseImage: Equatable, Sendable {
    public enum Format: String, Sendable { case raw, qcow2 }
    public var path: String
    public var format: Format
    /// The guest-visible size: a raw file's length, a qcow2 header's size field.
    public var virtualSize: UInt64

    public init(path: String, format: Format, virtualSize: UInt64) {
        self.path = path
        self.format = format
        self.virtualSize = virtualSize
    }

    /// Reads the image's first bytes: a qcow2 header makes it qcow2, anything else is raw.
    /// A qcow2 image that names a file of its own (a backing file or an external data file) is
    /// refused: the device would open a path the download chose.
    public static func inspect(_ path: String) throws(AppsError) -> BaseImage {
        let head: [UInt8]
        var st = stat()
        do throws(SystemError) {
            try systemCall("stat", path) { stat(path, &st) }
            head = try readPrefix(path, count: 104)
        } catch { throw .system(error) }
        guard head.count >= 4, Array(head[0..<4]) == QCOW2Overlay.magic else {
            guard st.st_size > 0 else { throw .diskImage(path: path, reason: "is empty") }
            return BaseImage(path: path, format: .raw, virtualSize: UInt64(st.st_size))
        }
        guard head.count >= 72 else { throw .diskImage(path: path, reason: "qcow2 header is cut short") }
        let version = BigEndian.u32(head, 4)
        guard version == 2 || version == 3 else { throw .diskImage(path: path, reason: "qcow2 version \(version) is not 2 or 3") }
        guard BigEndian.u64(head, 8) == 0 else { throw .diskImage(path: path, reason: "qcow2 image has a backing file of its own") }
        if version == 3 {
            guard head.count >= 104 else { throw .diskImage(path: path, reason: "qcow2 header is cut short") }
            guard BigEndian.u64(head, 72) & 0b100 == 0 else {
                throw .diskImage(path: path, reason: "qcow2 image keeps its data in an external file")
            }
        }
        let size = BigEndian.u64(head, 24)
        guard size > 0 else { throw .diskImage(path: path, reason: "qcow2 virtual size is 0") }
        return BaseImage(path: path, format: .qcow2, virtualSize: size)
    }

    static func readPrefix(_ path: String, count: Int) throws(SystemError) -> [UInt8] {
        let fd = try systemCall("open", path) { open(path, O_RDONLY | O_CLOEXEC) }
        defer { _ = close(fd) }
        var bytes = [UInt8](repeating: 0, count: count)
        let got = try systemCall("pread", path) { bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, 0) } }
        return Array(bytes.prefix(got))
    }
}

/// Writes and reads back the header of the overlays this module creates.
public enum QCOW2Overlay {
    static let magic: [UInt8] = [0x51, 0x46, 0x49, 0xfb]   // "QFI\xfb"
    public static let clusterBits: UInt32 = 16
    public static let clusterSize: UInt64 = 1 << 16
    static let headerLength: UInt32 = 104
    static let backingFormatExtension: UInt32 = 0xE279_2ACA
    /// QEMU refuses L1 tables over 32 MiB; at 64 KiB clusters that is 2 PiB of guest disk.
    static let maxL1Entries: UInt64 = (32 << 20) / 8
    /// One L1 entry maps an L2 table's worth of clusters: 8192 × 64 KiB = 512 MiB.
    static let bytesPerL1Entry: UInt64 = clusterSize / 8 * clusterSize

    /// What an overlay file says about itself.
    public struct Info: Equatable, Sendable {
        public var virtualSize: UInt64
        public var backingFile: String
        public var backingFormat: BaseImage.Format?
    }

    /// The overlay's virtual size: the base's, grown to `minimumSize`, rounded up to 512-byte sectors.
    public static func virtualSize(base: BaseImage, minimumSize: UInt64) -> UInt64 {
        let size = max(base.virtualSize, minimumSize)
        return size % 512 == 0 ? size : size + (512 - size % 512)
    }

    /// The whole metadata (clusters 0–2; the L1 clusters after them are zero) of an overlay on `base`.
    static func metadata(base: BaseImage, virtualSize: UInt64) throws(AppsError) -> (bytes: [UInt8], fileSize: UInt64) {
        let backing = Array(base.path.utf8)
        guard base.path.hasPrefix("/"), !backing.isEmpty, backing.count <= 1023 else {
            throw .diskImage(path: base.path, reason: "a backing file must be an absolute path of at most 1023 bytes")
        }
        let l1Entries = (virtualSize + bytesPerL1Entry - 1) / bytesPerL1Entry
        guard virtualSize > 0, l1Entries <= maxL1Entries else {
            throw .diskImage(path: base.path, reason: "a virtual size of \(virtualSize) bytes is not within 1 byte...2 PiB")
        }
        let l1Clusters = (l1Entries * 8 + clusterSize - 1) / clusterSize
        let l1Offset = 3 * clusterSize
        let format = Array(base.format.rawValue.utf8)
        let formatPadded = (format.count + 7) / 8 * 8
        let backingOffset = UInt64(headerLength) + 8 + UInt64(formatPadded) + 8

        var bytes = [UInt8](repeating: 0, count: Int(3 * clusterSize))
        BigEndian.put(&bytes, 0, magic)
        BigEndian.put32(&bytes, 4, 3)                                // version
        BigEndian.put64(&bytes, 8, backingOffset)
        BigEndian.put32(&bytes, 16, UInt32(backing.count))
        BigEndian.put32(&bytes, 20, clusterBits)
        BigEndian.put64(&bytes, 24, virtualSize)
        BigEndian.put32(&bytes, 32, 0)                               // no encryption
        BigEndian.put32(&bytes, 36, UInt32(l1Entries))
        BigEndian.put64(&bytes, 40, l1Offset)
        BigEndian.put64(&bytes, 48, clusterSize)                     // refcount table in cluster 1
        BigEndian.put32(&bytes, 56, 1)                               // one refcount table cluster
        // 60 snapshots, 64 snapshot offset, 72/80/88 feature bits: all zero.
        BigEndian.put32(&bytes, 96, 4)                               // refcount order: 16-bit counts
        BigEndian.put32(&bytes, 100, headerLength)
        BigEndian.put32(&bytes, 104, backingFormatExtension)
        BigEndian.put32(&bytes, 108, UInt32(format.count))
        BigEndian.put(&bytes, 112, format)
        // The end-of-extensions marker (8 zero bytes) follows the padded format name.
        BigEndian.put(&bytes, Int(backingOffset), backing)

        BigEndian.put64(&bytes, Int(clusterSize), 2 * clusterSize)  // refcount table[0] → block in cluster 2
        let metadataClusters = 3 + l1Clusters
        for cluster in 0..<Int(metadataClusters) {
            BigEndian.put16(&bytes, Int(2 * clusterSize) + cluster * 2, 1)
        }
        return (bytes, metadataClusters * clusterSize)
    }

    /// Creates (or replaces) the overlay at `path` on `base`, sized `max(base, minimumSize)`.
    /// The file appears whole or not at all: written aside, synced, renamed.
    @discardableResult
    public static func create(at path: String, base: BaseImage, minimumSize: UInt64) throws(AppsError) -> Info {
        let size = virtualSize(base: base, minimumSize: minimumSize)
        let (bytes, fileSize) = try metadata(base: base, virtualSize: size)
        let temp = path + ".new"
        do throws(SystemError) {
            let fd = try systemCall("open", temp) { open(temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600) }
            do throws(SystemError) {
                try FileIO.writeAll(fd, bytes, object: temp)
                // The L1 table is zero: a sparse extension, so creation costs no writes for it.
                try systemCall("ftruncate", temp) { ftruncate(fd, off_t(fileSize)) }
                try systemCall("fsync", temp) { fsync(fd) }
            } catch {
                _ = close(fd)
                _ = unlink(temp)
                throw error
            }
            _ = close(fd)
            try systemCall("rename", "\(temp) to \(path)") { rename(temp, path) }
            let (directory, _) = splitPath(path)
            let dirFD = try systemCall("open", directory) { open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
            defer { _ = close(dirFD) }
            try systemCall("fsync", directory) { fsync(dirFD) }
        } catch { throw .system(error) }
        return Info(virtualSize: size, backingFile: base.path, backingFormat: base.format)
    }

    /// Reads an overlay's header back: its size, backing file and backing format.
    public static func info(_ path: String) throws(AppsError) -> Info {
        let head: [UInt8]
        do { head = try BaseImage.readPrefix(path, count: Int(clusterSize)) } catch { throw .system(error) }
        guard head.count >= Int(headerLength), Array(head[0..<4]) == magic, BigEndian.u32(head, 4) == 3 else {
            throw .diskImage(path: path, reason: "is not a qcow2 v3 image")
        }
        let backingOffset = Int(clamping: BigEndian.u64(head, 8))
        let backingLength = Int(BigEndian.u32(head, 16))
        guard backingOffset > 0, backingOffset < head.count, backingLength <= 1023, backingLength <= head.count - backingOffset else {
            throw .diskImage(path: path, reason: "has no backing file within its first cluster")
        }
        let backing = String(decoding: head[backingOffset..<backingOffset + backingLength], as: UTF8.self)
        // Header extensions: (type, length, data padded to 8) from header_length until type 0.
        var format: BaseImage.Format?
        var offset = Int(BigEndian.u32(head, 100))
        while offset + 8 <= head.count {
            let type = BigEndian.u32(head, offset)
            let length = Int(BigEndian.u32(head, offset + 4))
            if type == 0 { break }
            guard offset + 8 + length <= head.count else { break }
            if type == backingFormatExtension {
                format = BaseImage.Format(rawValue: String(decoding: head[offset + 8..<offset + 8 + length], as: UTF8.self))
            }
            offset += 8 + (length + 7) / 8 * 8
        }
        return Info(virtualSize: BigEndian.u64(head, 24), backingFile: backing, backingFormat: format)
    }

    static func splitPath(_ path: String) -> (directory: String, name: String) {
        guard let slash = path.lastIndex(of: "/") else { return (".", path) }
        let directory = String(path[..<slash])
        return (directory.isEmpty ? "/" : directory, String(path[path.index(after: slash)...]))
    }
}

/// Big-endian fields, as qcow2 stores them.
enum BigEndian {
    static func u16(_ b: [UInt8], _ at: Int) -> UInt16 {
        UInt16(b[at]) << 8 | UInt16(b[at + 1])
    }
    static func u32(_ b: [UInt8], _ at: Int) -> UInt32 {
        (0..<4).reduce(UInt32(0)) { $0 << 8 | UInt32(b[at + $1]) }
    }
    static func u64(_ b: [UInt8], _ at: Int) -> UInt64 {
        (0..<8).reduce(UInt64(0)) { $0 << 8 | UInt64(b[at + $1]) }
    }
    static func put(_ b: inout [UInt8], _ at: Int, _ bytes: [UInt8]) {
        b.replaceSubrange(at..<at + bytes.count, with: bytes)
    }
    static func put16(_ b: inout [UInt8], _ at: Int, _ v: UInt16) {
        for i in 0..<2 { b[at + i] = UInt8(truncatingIfNeeded: v >> (8 * (1 - i))) }
    }
    static func put32(_ b: inout [UInt8], _ at: Int, _ v: UInt32) {
        for i in 0..<4 { b[at + i] = UInt8(truncatingIfNeeded: v >> (8 * (3 - i))) }
    }
    static func put64(_ b: inout [UInt8], _ at: Int, _ v: UInt64) {
        for i in 0..<8 { b[at + i] = UInt8(truncatingIfNeeded: v >> (8 * (7 - i))) }
    }
}
