// The vault's encrypted area: a file on PERSIST, behind dm-crypt, holding
// an ext4 where app volumes and secrets live. The 64-byte key comes from
// the TPM (sealed elsewhere); nothing here ever writes it to disk.
//
//   /persist/vault/area.img            sparse file: a quarter of PERSIST's free space, at most 4 GiB
//        |  LOOP_CONFIGURE (AUTOCLEAR)
//   /dev/loopN
//        |  dm-crypt: aes-xts-plain64 <key, 128 hex> 0 <loop maj:min> 0 1 allow_discards
//   /dev/mapper/outpost-vault
//        |  ext4, label "outpost-vault"
//   /persist/vault/data                mounted nodev,nosuid,noatime
//
// dm-crypt in plain mode has no header that could say whether a key is
// right: a wrong key simply decrypts to noise. The label is that check: an
// existing area opens only if the ext4 superblock with label "outpost-vault"
// shows through the mapping, and an existing area is never formatted, so a
// wrong key can never cost data.
//
// A new area is created as area.img.new, formatted under the label
// "vault-unfinished", relabelled, and only then renamed to area.img. A
// power cut at any point leaves either a complete area.img or a leftover
// area.img.new, which the next start deletes and creates again.

#if canImport(Glibc)
import Glibc
#endif
import OutpostShims
import OutpostPlatform
import OutpostEarlyBoot

/// Why the vault's area could not be opened, created or closed. Each
/// description is one console line starting with "vault:".
public enum VaultError: Error, Equatable, CustomStringConvertible {
    case badKeyLength(Int)
    case badSize(bytes: UInt64)
    case doesNotFit(path: String, bytes: UInt64, available: UInt64, reserve: UInt64)
    case wrongKey(path: String)
    case alreadyOpen(mapping: String)
    case noDeviceMapper
    case system(SystemError)
    case format(path: String, SubprocessError)
    case busy(mountPoint: String, SystemError)

    public var description: String {
        switch self {
        case .badKeyLength(let count):
            return "vault: the key is \(count) bytes, expected \(VaultVolume.keyLength) (aes-xts-plain64, 512-bit)"
        case .badSize(let bytes):
            return "vault: an area of \(bytes) bytes is not a whole number of MiB of at least \(VaultVolume.minimumSize >> 20) MiB"
        case .doesNotFit(let path, let bytes, let available, let reserve):
            return "vault: an area of \(bytes >> 20) MiB does not fit beside \(path): \(available >> 20) MiB free, \(reserve >> 20) MiB of it kept for the rest of PERSIST"
        case .wrongKey(let path):
            return "vault: the key does not open \(path) (no \(VaultVolume.label) filesystem behind dm-crypt)"
        case .alreadyOpen(let mapping):
            return "vault: the mapping \(mapping) already exists; close the open vault first"
        case .noDeviceMapper:
            return "vault: the kernel has no device-mapper (dm_mod and dm_crypt not loaded)"
        case .system(let error):
            return "vault: \(error)"
        case .format(let path, let error):
            return "vault: cannot create the filesystem of \(path): \(error)"
        case .busy(let mountPoint, let error):
            return "vault: \(mountPoint) is still in use, not closing: \(error)"
        }
    }
}

/// An open vault: the area is mapped through dm-crypt and its ext4 mounted.
/// `close()` undoes all of it; until then app volumes and secrets under
/// `mountPoint` are readable in the clear, and nowhere else.
public struct VaultVolume: Sendable {
    /// Where the area lives and how it is presented.
    public struct Configuration: Equatable, Sendable {
        /// The encrypted file on PERSIST.
        public var backingFile: String
        /// Where the decrypted ext4 is mounted.
        public var mountPoint: String
        /// The device-mapper name (/dev/mapper/<name>).
        public var mappingName: String
        /// The size of a new area (with `quarterOfFreeSpace`: the most it may be); an existing
        /// area keeps the size it has.
        public var sizeBytes: UInt64
        /// A new area takes a quarter of PERSIST's free space, whole MiB, at least `minimumSize`
        /// and at most `sizeBytes` (the device's vault); false: exactly `sizeBytes`.
        public var quarterOfFreeSpace: Bool
        /// Free space on PERSIST a new area must leave for everything else
        /// (logs, state, the app content store).
        public var reserveBytes: UInt64

        public init(backingFile: String = VaultVolume.defaultBackingFile,
                    mountPoint: String = VaultVolume.defaultMountPoint,
                    mappingName: String = VaultVolume.defaultMappingName,
                    sizeBytes: UInt64 = VaultVolume.defaultSize,
                    quarterOfFreeSpace: Bool = false,
                    reserveBytes: UInt64 = VaultVolume.defaultReserve) {
            self.backingFile = backingFile
            self.mountPoint = mountPoint
            self.mappingName = mappingName
            self.sizeBytes = sizeBytes
            self.quarterOfFreeSpace = quarterOfFreeSpace
            self.reserveBytes = reserveBytes
        }
    }

    public static let defaultBackingFile = "/persist/vault/area.img"
    /// Beside the area, on PERSIST: mode 0700, so whatever is written there
    /// while the vault is closed is at least not world-readable.
    public static let defaultMountPoint = "/persist/vault/data"
    public static let defaultMappingName = "outpost-vault"
    /// The ext4 label that proves the key: only the right key shows it.
    public static let label = "outpost-vault"
    /// The label while mke2fs runs. ext4 labels hold 16 bytes at most, so
    /// this is not "outpost-vault-new" (mke2fs would cut it to "outpost-vault-ne").
    static let newLabel = "vault-unfinished"
    /// 4 GiB: secrets and the instance directories of vault apps (qcow2 overlays
    /// grow with the guest's writes; 256 MiB, the first cap, fills with one
    /// guest's logs). The quarter-of-free-space rule keeps a new area well
    /// inside a small PERSIST. The file is sparse: an empty area costs only
    /// what mke2fs writes (measured: 8 MiB at 256 MiB, 33 MiB at 1 GiB, 66 MiB
    /// from 2 GiB on, mostly the zeroed journal).
    public static let defaultSize: UInt64 = 4 << 30
    /// 64 MiB of PERSIST stay free beyond the area's full size, so a vault
    /// filling up cannot starve the logs and state of free space.
    public static let defaultReserve: UInt64 = 64 << 20
    /// Below 16 MiB mke2fs makes a filesystem too small for a journal worth having.
    public static let minimumSize: UInt64 = 16 << 20
    /// aes-xts-plain64 with a 512-bit key: two AES-256 keys.
    public static let keyLength = 64

    public let configuration: Configuration
    /// The loop device the area is bound to (/dev/loopN).
    public let loopDevice: String
    /// /dev/mapper/<mappingName>.
    public let mappingPath: String
    /// The area's size in bytes (the file's size).
    public let sizeBytes: UInt64
    /// Whether this open formatted the area: it was new, or its first format
    /// had not finished (label "vault-unfinished").
    public let created: Bool
    let loopNumber: Int32

    /// Opens the area with `key`, creating it first if there is none: maps it
    /// through dm-crypt, checks that the key shows the vault's filesystem,
    /// and mounts it. On any failure everything this call set up is removed
    /// again, and an existing area is left exactly as it was.
    public static func open(key: [UInt8], configuration: Configuration = Configuration()) throws(VaultError) -> VaultVolume {
        guard key.count == keyLength else { throw .badKeyLength(key.count) }
        let path = configuration.backingFile
        let directory = parentDirectory(of: path)
        let pendingPath = path + ".new"
        do {
            try Sys.mkdir(directory, 0o700)
        } catch {
            throw .system(error)
        }

        let creating = !Sys.exists(path)
        let openPath: String
        var newSize: UInt64 = 0
        if creating {
            newSize = try newAreaSize(configuration, directory: directory)
            // A leftover from a power cut during creation: never completed, holds nothing.
            if Sys.exists(pendingPath) && unlink(pendingPath) != 0 {
                throw .system(.current("unlink", pendingPath))
            }
            openPath = pendingPath
        } else {
            openPath = path
        }

        let fileFD: Int32
        do {
            fileFD = try Sys.open(openPath, O_RDWR | (creating ? O_CREAT | O_EXCL : 0), 0o600)
        } catch {
            throw .system(error)
        }
        defer { Sys.close(fileFD) }
        // From here on, a failed creation removes its half-made file.
        func abandon() { if creating { _ = unlink(pendingPath) } }

        let size: UInt64
        do {
            if creating {
                try systemCall("ftruncate", pendingPath) { ftruncate(fileFD, off_t(newSize)) }
            }
            var status = stat()
            try systemCall("fstat", openPath) { fstat(fileFD, &status) }
            size = UInt64(status.st_size)
        } catch {
            abandon()
            throw .system(error)
        }
        guard size >= minimumSize, size % (1 << 20) == 0 else {
            abandon()
            throw .badSize(bytes: size)
        }

        let loop: LoopDevice
        do {
            loop = try LoopDevice.attach(backingFD: fileFD, backingPath: openPath)
        } catch {
            abandon()
            throw .system(error)
        }
        let mapping: String
        do {
            mapping = try createMapping(configuration.mappingName, key: key, loop: loop, sectors: size / 512)
        } catch {
            loop.detach()
            _ = LoopDevice.waitUntilDetached(number: loop.number, path: loop.path)
            abandon()
            throw error
        }
        // dm-crypt holds the loop device now; AUTOCLEAR detaches it when the mapping goes.
        loop.closeHandle()

        func tearDown() {
            removeMapping(configuration.mappingName)
            _ = LoopDevice.waitUntilDetached(number: loop.number, path: loop.path)
            abandon()
        }

        var reformatted = false
        do {
            if creating {
                try format(mapping, path: path)
                try systemCall("fsync", pendingPath) { fsync(fileFD) }
                try systemCall("rename", "\(pendingPath) to \(path)") { rename(pendingPath, path) }
                try syncDirectory(directory)
            } else {
                let found = try superblockLabel(device: mapping)
                if found == newLabel {
                    // The right key (nothing else shows this label) on an area whose
                    // relabel never happened: it was never handed out, so it holds nothing.
                    try format(mapping, path: path)
                    reformatted = true
                } else if found != label {
                    throw VaultError.wrongKey(path: path)
                }
            }
            try Sys.mkdir(configuration.mountPoint, 0o700)
            try Sys.mount(source: mapping, target: configuration.mountPoint, type: "ext4",
                          flags: UInt(MS_NOATIME | MS_NOSUID | MS_NODEV))
        } catch let error as VaultError {
            tearDown()
            throw error
        } catch let error as SystemError {
            tearDown()
            throw .system(error)
        } catch {
            tearDown()
            throw .system(SystemError(call: "open", object: path, code: EIO))
        }
        return VaultVolume(configuration: configuration, loopDevice: loop.path, mappingPath: mapping,
                           sizeBytes: size, created: creating || reformatted, loopNumber: loop.number)
    }

    /// Unmounts the area, removes the mapping and lets the loop device go.
    /// Refuses (and changes nothing) while something still uses the mount.
    public func close() throws(VaultError) {
        do {
            try Sys.unmount(configuration.mountPoint)
        } catch {
            if error.code != EINVAL { throw .busy(mountPoint: configuration.mountPoint, error) }
            // EINVAL: not mounted (a second close); still remove the rest.
        }
        let control = try Self.openDeviceMapper()
        defer { Sys.close(control) }
        do {
            try Self.removeMapping(configuration.mappingName, control: control)
        } catch {
            throw .system(error)
        }
        if !LoopDevice.waitUntilDetached(number: loopNumber, path: loopDevice) {
            throw .system(SystemError(call: "LOOP_CLR_FD", object: loopDevice, code: EBUSY))
        }
    }

    // MARK: - Steps

    /// The size of a new area, the one place it is chosen: one statvfs of the area's directory,
    /// a quarter of its free space when the configuration asks for that (capped at `sizeBytes`),
    /// and refused when PERSIST could not hold the area once it is full and still keep the reserve.
    static func newAreaSize(_ configuration: Configuration, directory: String) throws(VaultError) -> UInt64 {
        var info = statvfs()
        do {
            try systemCall("statvfs", directory) { statvfs(directory, &info) }
        } catch {
            throw .system(error)
        }
        let available = UInt64(info.f_bavail) * UInt64(info.f_frsize)
        let bytes = configuration.quarterOfFreeSpace
            ? min(configuration.sizeBytes, max(minimumSize, available / 4)) / (1 << 20) * (1 << 20)
            : configuration.sizeBytes
        guard bytes >= minimumSize, bytes % (1 << 20) == 0 else { throw .badSize(bytes: bytes) }
        guard bytes <= available, available - bytes >= configuration.reserveBytes else {
            throw .doesNotFit(path: configuration.backingFile, bytes: bytes, available: available,
                              reserve: configuration.reserveBytes)
        }
        return bytes
    }

    /// DM_DEV_CREATE + the crypt table + resume, and a fresh node under
    /// /dev/mapper. The key travels only in the table string.
    static func createMapping(_ name: String, key: [UInt8], loop: LoopDevice, sectors: UInt64) throws(VaultError) -> String {
        do {
            let control = try openDeviceMapper()
            defer { Sys.close(control) }
            var major: UInt32 = 0
            var minor: UInt32 = 0
            do {
                try systemCall("DM_DEV_CREATE", name) { OutpostShims_dm_create(control, name, nil, &major, &minor) }
            } catch {
                if error.code == EBUSY { throw VaultError.alreadyOpen(mapping: name) }
                throw error
            }
            do {
                let table = "aes-xts-plain64 \(hex(key)) 0 \(loop.major):\(loop.minor) 0 1 allow_discards"
                try systemCall("DM_TABLE_LOAD", "\(name): crypt aes-xts-plain64 over \(loop.path)") {
                    OutpostShims_dm_load_table(control, name, 0, sectors, "crypt", table, 0)
                }
                try systemCall("DM_DEV_SUSPEND(resume)", name) { OutpostShims_dm_resume(control, name) }
                let path = "/dev/mapper/\(name)"
                try Sys.mkdir("/dev/mapper")
                // A node left from an earlier mapping may carry another minor.
                if unlink(path) != 0 && errno != ENOENT { throw SystemError.current("unlink", path) }
                try Sys.mknodBlock(path, major: major, minor: minor)
                return path
            } catch {
                _ = OutpostShims_dm_remove(control, name)
                throw error
            }
        } catch let error as VaultError {
            throw error
        } catch let error as SystemError {
            throw .system(error)
        } catch {
            throw .system(SystemError(call: "DM_DEV_CREATE", object: name, code: EIO))
        }
    }

    /// /dev/mapper/control, or a clear error when device-mapper is not in the
    /// kernel at all (instead of a bare ENOENT for the control node).
    static func openDeviceMapper() throws(VaultError) -> Int32 {
        guard Sys.exists("/sys/class/misc/device-mapper") else { throw .noDeviceMapper }
        do {
            return try VerityRoot.openControl()
        } catch {
            throw .system(error)
        }
    }

    /// DM_DEV_REMOVE, retried briefly while a just-closed opener (blkid,
    /// udev on a development host) still holds the device.
    static func removeMapping(_ name: String, control: Int32) throws(SystemError) {
        let deadline = Deadline(after: .seconds(5))
        while true {
            do {
                try systemCall("DM_DEV_REMOVE", name) { OutpostShims_dm_remove(control, name) }
                break
            } catch {
                if error.code == ENXIO { break }   // already gone
                if error.code != EBUSY || deadline.hasPassed { throw error }
                usleep(50_000)
            }
        }
        _ = unlink("/dev/mapper/\(name)")
    }

    /// Best-effort removal on a failure path.
    static func removeMapping(_ name: String) {
        guard let control = try? openDeviceMapper() else { return }
        defer { Sys.close(control) }
        try? removeMapping(name, control: control)
    }

    /// Formats under the temporary label, then names it: an interrupted
    /// mke2fs never leaves a filesystem that looks finished.
    static func format(_ device: String, path: String) throws(VaultError) {
        do {
            try Subprocess.run(Subprocess.tool("mke2fs"), [
                "-q", "-F", "-t", "ext4", "-L", newLabel, "-m", "0",
                "-E", "lazy_itable_init=1,lazy_journal_init=0,nodiscard", device,
            ])
            try Subprocess.run(Subprocess.tool("tune2fs"), ["-L", label, device])
        } catch {
            throw .format(path: path, error)
        }
    }

    /// The label of the ext2/3/4 superblock on `device` (magic 0xEF53 at
    /// 1024+56, label at 1024+120, 16 bytes NUL-padded), or nil when there is none.
    static func superblockLabel(device: String) throws(SystemError) -> String? {
        let fd = try Sys.open(device, O_RDONLY)
        defer { Sys.close(fd) }
        var block = [UInt8](repeating: 0, count: 1024)
        var failure: SystemError?
        let count = block.withUnsafeMutableBytes { buffer -> Int in
            do { return try Sys.read(fd, into: buffer, at: 1024, target: device) } catch {
                failure = (error as? SystemError) ?? SystemError(call: "pread", object: device, code: EIO)
                return 0
            }
        }
        if let failure { throw failure }
        return ext4Label(superblock: Array(block.prefix(count)))
    }

    /// Parses the label out of the 1024-byte ext superblock; nil without the magic.
    static func ext4Label(superblock: [UInt8]) -> String? {
        guard superblock.count >= 136, superblock[56] == 0x53, superblock[57] == 0xEF else { return nil }
        let raw = superblock[120..<136].prefix { $0 != 0 }
        return String(decoding: raw, as: UTF8.self)
    }

    static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(bytes.count * 2)
        for byte in bytes {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0F)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func parentDirectory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    static func syncDirectory(_ directory: String) throws(SystemError) {
        let fd = try Sys.open(directory, O_RDONLY | O_DIRECTORY)
        defer { Sys.close(fd) }
        try systemCall("fsync", directory) { fsync(fd) }
    }
}
