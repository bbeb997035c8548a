// A reproducible writer for the "newc" cpio format the kernel unpacks as an
// initramfs (Documentation/driver-api/early-userspace/buffer-format.rst).
//
//   +--------------------------------------------------------------+
//   | "070701" | 13 fields, 8 ASCII hex digits each:                 |
//   |   ino mode uid gid nlink mtime filesize                       |
//   |   devmajor devminor rdevmajor rdevminor namesize check        |
//   +--------------------------------------------------------------+
//   | name, NUL, zero padding to a multiple of 4 (header included)  |
//   | data (file bytes or symlink target), zero padding to 4        |
//   +--------------------------------------------------------------+
//   ... one such record per entry, then the record "TRAILER!!!".
//
// Same inputs give the same bytes: entries are sorted by path, inode numbers
// are assigned in that order, owner is 0:0, every mtime is the one given
// (SOURCE_DATE_EPOCH) and modes are normalised to 0755/0644.

import Foundation

/// One member of an initramfs.
public struct CpioEntry: Equatable, Sendable {
    public enum Kind: Equatable, Sendable {
        case directory
        /// File content is read from `source` when the archive is written.
        case file(source: URL)
        case data([UInt8])
        case symlink(target: String)
        case characterDevice(major: UInt32, minor: UInt32)
    }

    /// Path inside the archive, without a leading "/" (e.g. "lib/modules").
    public var path: String
    public var kind: Kind
    /// Permission bits (0o7777 mask); nil picks 0755 for directories and
    /// executables, 0644 for other files, 0600 for devices.
    public var permissions: UInt32?

    public init(path: String, kind: Kind, permissions: UInt32? = nil) {
        self.path = path.hasPrefix("/") ? String(path.drop(while: { $0 == "/" })) : path
        self.kind = kind
        self.permissions = permissions
    }
}

public enum CpioError: Error, CustomStringConvertible {
    case duplicatePath(String)
    case unreadable(URL, underlying: String)
    case tooLarge(path: String, bytes: Int)
    case fieldOverflow(path: String, field: String)

    public var description: String {
        switch self {
        case .duplicatePath(let path): return "cpio: two entries for \(path)"
        case .unreadable(let url, let why): return "cpio: cannot read \(url.path): \(why)"
        case .tooLarge(let path, let bytes): return "cpio: \(path) is \(bytes) bytes, newc stores at most 4 GiB - 1"
        case .fieldOverflow(let path, let field): return "cpio: \(field) of \(path) does not fit 32 bits"
        }
    }
}

/// Builds an initramfs archive in memory-light streaming fashion.
public struct CpioArchive {
    public private(set) var entries: [String: CpioEntry] = [:]
    /// Modification time of every entry (seconds since 1970, SOURCE_DATE_EPOCH).
    public var mtime: UInt32

    public init(mtime: UInt32) {
        self.mtime = mtime
    }

    /// Adds an entry, and a directory entry for each missing parent.
    public mutating func add(_ entry: CpioEntry) throws(CpioError) {
        if entries[entry.path] != nil {
            // A directory may be added twice (implicitly, then explicitly).
            if entry.kind == .directory, entries[entry.path]?.kind == .directory { return }
            throw .duplicatePath(entry.path)
        }
        var parent = (entry.path as NSString).deletingLastPathComponent
        while !parent.isEmpty && parent != "/" && entries[parent] == nil {
            entries[parent] = CpioEntry(path: parent, kind: .directory)
            parent = (parent as NSString).deletingLastPathComponent
        }
        entries[entry.path] = entry
    }

    /// The archive bytes for all entries, sorted by path, plus the trailer.
    public func write(to output: URL) throws -> Int {
        try Data().write(to: output)
        let handle = try FileHandle(forWritingTo: output)
        defer { try? handle.close() }
        var written = 0
        var inode: UInt32 = 1
        for path in entries.keys.sorted() {
            guard let entry = entries[path] else { continue }
            let record = try Self.record(for: entry, inode: inode, mtime: mtime)
            try handle.write(contentsOf: record)
            written += record.count
            inode += 1
        }
        let trailer = try Self.header(name: "TRAILER!!!", inode: 0, mode: 0, nlink: 1, mtime: 0,
                                      size: 0, rdev: (0, 0), path: "TRAILER!!!")
        try handle.write(contentsOf: trailer)
        written += trailer.count
        return written
    }

    static func record(for entry: CpioEntry, inode: UInt32, mtime: UInt32) throws -> Data {
        var body = Data()
        var mode: UInt32
        var rdev: (UInt32, UInt32) = (0, 0)
        var nlink: UInt32 = 1
        switch entry.kind {
        case .directory:
            mode = 0o040000 | (entry.permissions ?? 0o755)
            nlink = 2
        case .file(let source):
            do {
                body = try Data(contentsOf: source)
            } catch {
                throw CpioError.unreadable(source, underlying: "\(error.localizedDescription)")
            }
            let executable = FileManager.default.isExecutableFile(atPath: source.path)
            mode = 0o100000 | (entry.permissions ?? (executable ? 0o755 : 0o644))
        case .data(let bytes):
            body = Data(bytes)
            mode = 0o100000 | (entry.permissions ?? 0o644)
        case .symlink(let target):
            body = Data(target.utf8)
            mode = 0o120000 | 0o777
        case .characterDevice(let major, let minor):
            mode = 0o020000 | (entry.permissions ?? 0o600)
            rdev = (major, minor)
        }
        guard body.count <= Int(UInt32.max) else { throw CpioError.tooLarge(path: entry.path, bytes: body.count) }
        var record = try header(name: entry.path, inode: inode, mode: mode, nlink: nlink, mtime: mtime,
                                size: UInt32(body.count), rdev: rdev, path: entry.path)
        record.append(body)
        record.append(contentsOf: [UInt8](repeating: 0, count: (4 - body.count % 4) % 4))
        return record
    }

    /// The 110-byte header, the NUL-terminated name and its padding.
    static func header(name: String, inode: UInt32, mode: UInt32, nlink: UInt32, mtime: UInt32,
                       size: UInt32, rdev: (UInt32, UInt32), path: String) throws(CpioError) -> Data {
        let nameBytes = Array(name.utf8) + [0]
        let fields: [UInt32] = [inode, mode, 0, 0, nlink, mtime, size, 0, 0, rdev.0, rdev.1,
                                UInt32(nameBytes.count), 0]
        var text = "070701"
        for field in fields {
            let hex = String(field, radix: 16, uppercase: false)
            text += String(repeating: "0", count: 8 - hex.count) + hex
        }
        var data = Data(text.utf8)
        data.append(contentsOf: nameBytes)
        data.append(contentsOf: [UInt8](repeating: 0, count: (4 - data.count % 4) % 4))
        return data
    }
}
