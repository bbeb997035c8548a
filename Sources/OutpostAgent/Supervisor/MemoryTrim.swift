// PID 1 gives back what boot left behind, a while after the ready line and
// then every few minutes (InitProcess's loop):
//   - malloc's free pages (malloc_trim: boot's TLS handshakes, the first
//     config, the vault's work free their memory, but the arenas keep it);
//   - the pages of outpostd's own read-only file mappings that only PID 1
//     maps (MADV_PAGEOUT): code and read-only data that ran at boot and not
//     since (early boot's second half, the vault's enrolment, TLS setup). They
//     come from the verified root's page cache, so the kernel frees them and
//     reads them again from the root if they are ever needed. Writable
//     mappings are never touched: their contents exist nowhere else.
// Measured by bench/agent-footprint.sh (the status report splits RSS into
// anonymous, file and shared memory).

#if canImport(Glibc)
import Glibc
#endif
import OutpostPlatform
import OutpostEarlyBoot
import OutpostShims

enum MemoryTrim {
    /// One mapping of /proc/self/maps that may be paged out.
    struct Mapping: Equatable {
        var start: UInt
        var end: UInt
        var path: String
    }

    /// Read-only, file-backed mappings of files on a filesystem (not [vdso] or anonymous ones).
    static func pageableMappings(_ maps: String) -> [Mapping] {
        maps.split(separator: "\n").compactMap { line in
            // "start-end perms offset dev inode   path" (the path may hold spaces).
            let fields = line.split(separator: " ")
            guard fields.count >= 6, fields[1].count == 4 else { return nil }
            let permissions = Array(fields[1])
            guard permissions[0] == "r", permissions[1] == "-", fields[4] != "0" else { return nil }
            let path = fields[5...].joined(separator: " ")
            guard path.hasPrefix("/"), !path.hasSuffix(" (deleted)") else { return nil }
            let range = fields[0].split(separator: "-")
            guard range.count == 2, let start = UInt(range[0], radix: 16), let end = UInt(range[1], radix: 16),
                  end > start else { return nil }
            return Mapping(start: start, end: end, path: path)
        }
    }

    /// Trims malloc and pages out the read-only file mappings (best effort: a kernel
    /// without MADV_PAGEOUT refuses, and the pages stay).
    static func run() {
        _ = OutpostShims_malloc_trim()
        guard let maps = try? Sys.readText("/proc/self/maps") else { return }
        for mapping in pageableMappings(maps) {
            _ = OutpostShims_madvise_pageout(mapping.start, Int(mapping.end - mapping.start))
        }
    }
}
