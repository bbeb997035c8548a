// The internal snapshots of a qcow2 file, read from its own snapshot table, so a halted
// instance's snapshots can be listed and checked without starting QEMU. Taking, applying and
// deleting them goes through qemu-img (QEMU's own code writes the refcounts).
//
//   header   offset 60: nb_snapshots (u32), offset 64: snapshots_offset (u64), big-endian
//   table    per snapshot, 8-byte aligned:
//              l1_table_offset u64, l1_size u32, id_str_size u16, name_size u16,
//              date_sec u32, date_nsec u32, vm_clock_nsec u64, vm_state_size u32,
//              extra_data_size u32, extra data, id string, name, padding to 8 bytes

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import OutpostPlatform

public enum QCOW2Snapshots {
    /// QEMU's own limit (QCOW_MAX_SNAPSHOTS); a larger count is a corrupt header, not a list to read.
    static let maxSnapshots: UInt32 = 65536
    /// The table's size is bounded by QEMU too (QCOW_MAX_SNAPSHOTS_SIZE, 64 MiB).
    static let maxTableBytes = 64 << 20

    /// The snapshot names in the file's table order. Every length is checked against the
    /// bytes read, so a damaged table ends in one line naming the field and the offset.
    public static func names(_ path: String) throws(AppsError) -> [String] {
        let head: [UInt8]
        do throws(SystemError) { head = try BaseImage.readPrefix(path, count: 72) } catch { throw .system(error) }
        guard head.count >= 72, Array(head[0..<4]) == QCOW2Overlay.magic else {
            throw .diskImage(path: path, reason: "is not a qcow2 file (no header)")
        }
        let count = BigEndian.u32(head, 60)
        let offset = BigEndian.u64(head, 64)
        guard count > 0 else { return [] }
        guard count <= maxSnapshots else { throw .diskImage(path: path, reason: "qcow2 nb_snapshots \(count) is over \(maxSnapshots)") }
        // Each entry is at least 40 bytes; read what the largest table could need, up to the limit.
        let table: [UInt8]
        do throws(SystemError) { table = try read(path, at: offset, count: min(maxTableBytes, Int(count) * 1024)) } catch {
            throw .system(error)
        }
        var names: [String] = []
        var at = 0
        for index in 0..<Int(count) {
            guard at + 40 <= table.count else {
                throw .diskImage(path: path, reason: "qcow2 snapshot \(index) at table offset \(at) is cut short")
            }
            let idSize = Int(BigEndian.u16(table, at + 12))
            let nameSize = Int(BigEndian.u16(table, at + 14))
            let extraSize = Int(BigEndian.u32(table, at + 36))
            let nameStart = at + 40 + extraSize + idSize
            guard extraSize <= 1024, nameStart + nameSize <= table.count else {
                throw .diskImage(path: path, reason: "qcow2 snapshot \(index) at table offset \(at): its name runs past the table")
            }
            names.append(String(decoding: table[nameStart..<nameStart + nameSize], as: UTF8.self))
            at = (nameStart + nameSize + 7) & ~7
        }
        return names
    }

    static func read(_ path: String, at offset: UInt64, count: Int) throws(SystemError) -> [UInt8] {
        let fd = try systemCall("open", path) { open(path, O_RDONLY | O_CLOEXEC) }
        defer { _ = close(fd) }
        var bytes = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            let n = try systemCall("pread", path) {
                bytes.withUnsafeMutableBytes { buffer -> Int in
                    guard let base = buffer.baseAddress else { return 0 }
                    return pread(fd, base + got, count - got, off_t(offset) + off_t(got))
                }
            }
            if n == 0 { break }
            got += n
        }
        return Array(bytes.prefix(got))
    }
}
