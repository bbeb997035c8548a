// Moves from the initramfs to the verified root, the way switch_root(8)
// does: the API filesystems follow along with MS_MOVE, the initramfs files
// are deleted to give their memory back, and the new root is moved onto "/"
// and entered with chroot.

#if canImport(Glibc)
import Glibc
#endif
import OutpostShims
import OutpostPlatform

public enum SwitchRoot {
    /// The API filesystems that early boot mounted and the real root reuses.
    static let apiMounts = ["/dev", "/proc", "/sys"]

    /// Mounts /proc, /sys and /dev (devtmpfs) in the initramfs. Must run
    /// before anything reads /proc/cmdline or /sys/block.
    public static func mountAPIFilesystems() throws(SystemError) {
        let nosuidNodevNoexec = UInt(MS_NOSUID | MS_NODEV | MS_NOEXEC)
        try Sys.mkdir("/proc")
        try Sys.mount(source: "proc", target: "/proc", type: "proc", flags: nosuidNodevNoexec)
        try Sys.mkdir("/sys")
        try Sys.mount(source: "sysfs", target: "/sys", type: "sysfs", flags: nosuidNodevNoexec)
        try Sys.mkdir("/dev")
        try Sys.mount(source: "devtmpfs", target: "/dev", type: "devtmpfs", flags: UInt(MS_NOSUID), data: "mode=0755")
    }

    /// Moves /dev, /proc and /sys under `newRoot`, frees the initramfs and
    /// makes `newRoot` the process's "/". The mount points must exist in the
    /// new root (the builder creates them).
    public static func switchRoot(to newRoot: String) throws(SystemError) {
        for mount in apiMounts {
            try Sys.moveMount(mount, to: newRoot + mount)
        }
        deleteInitramfs(keeping: newRoot)
        try Sys.chdir(newRoot)
        try Sys.moveMount(".", to: "/")
        try Sys.chroot(".")
        try Sys.chdir("/")
    }

    /// Deletes the initramfs files (they live in RAM until deleted). Only runs
    /// when "/" really is the initramfs (ramfs or tmpfs), and never crosses into
    /// another filesystem, so a mistake cannot touch the disk.
    static func deleteInitramfs(keeping newRoot: String) {
        var type: Int64 = 0
        guard OutpostShims_statfs_type("/", &type) == 0 else { return }
        let ramfsMagic: Int64 = 0x8584_58f6
        let tmpfsMagic: Int64 = 0x0102_1994
        guard type == ramfsMagic || type == tmpfsMagic else { return }
        var rootStat = stat()
        guard lstat("/", &rootStat) == 0 else { return }
        let fd = Glibc.open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return }
        let keep = newRoot.hasPrefix("/") ? String(newRoot.dropFirst()) : newRoot
        removeContents(of: fd, device: rootStat.st_dev, skipping: keep)
    }

    /// Removes every entry below the directory `fd` on `device`; closes `fd`.
    private static func removeContents(of fd: Int32, device: dev_t, skipping: String?) {
        guard let dir = fdopendir(fd) else { Glibc.close(fd); return }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name != "." && name != ".." && name != skipping { names.append(name) }
        }
        for name in names {
            var info = stat()
            guard fstatat(fd, name, &info, AT_SYMLINK_NOFOLLOW) == 0, info.st_dev == device else { continue }
            if (info.st_mode & S_IFMT) == S_IFDIR {
                let child = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                if child >= 0 { removeContents(of: child, device: device, skipping: nil) }
                _ = unlinkat(fd, name, AT_REMOVEDIR)
            } else {
                _ = unlinkat(fd, name, 0)
            }
        }
    }
}
