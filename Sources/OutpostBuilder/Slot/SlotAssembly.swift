// Assembles the three pieces a slot image is made of (docs/boot.md): the
// Debian kernel, the initramfs (outpost-init as /init, the libraries it links
// unless it is static, the early modules) and the staged root tree that
// becomes the verity-checked root squashfs. squashfs, verity and the slot
// layout are the image builder's.
//
//   rootfs/packages.txt ──apt-get download──▶ cache/debs ──dpkg-deb -x──┐
//   rootfs/leave-out.txt ──what no device reads, removed───────────────┤
//   rootfs/modules.txt ──modules.dep──▶ .ko set ───────────────────────┤
//   rootfs/overlay/, outpostd, /etc/outpost-release ───────────────────┴─▶ work/root/
//   outpost-init (+ ldd libraries) + .ko set + initramfs.list ──newc cpio, zstd──▶ work/initrd.img
//   linux-image-<pinned> ──▶ cache/kernels/<deb>/boot/vmlinuz-<version>

import Foundation

/// A Debian kernel package unpacked (once) into the cache, with modules.dep.
public struct SlotKernel: Equatable, Sendable {
    /// The kernel release, e.g. "6.1.0-56-amd64".
    public var version: String
    /// The kernel image to put into the slot's boot squashfs.
    public var vmlinuz: URL
    /// lib/modules/<version> of the unpacked package.
    public var modulesDirectory: URL
}

/// How the initramfs cpio is stored; Debian's kernel unpacks both.
public enum InitramfsCompression: Sendable {
    case none
    /// `gzip -n -9`: no name or time stamp in the header, so bytes are reproducible.
    case gzip
    /// `zstd -10`: the default. Under TCG the kernel unpacks zstd several times
    /// faster than gzip, and the file GRUB reads is smaller (45 MB of cpio:
    /// 16.3 MB gzip -9, 14.9 MB zstd -10; -19 saves 1.9 MB more for 40 s of
    /// compression per slot build). zstd's output does not depend on its thread count.
    case zstd
}

/// Builds a slot's kernel, root tree and initramfs from `rootfs/`.
public struct SlotAssembly {
    /// The pinned kernel: bookworm's linux-image-amd64 candidate when this was
    /// written. Changing it changes every slot, so it is a deliberate edit.
    public static let defaultKernelPackage = "linux-image-6.1.0-56-amd64"

    /// The rootfs/ folder: packages.txt, leave-out.txt, modules.txt, overlay/.
    public var rootfs: URL
    /// Scratch folder for this build; root/ and initrd.img are created in it.
    public var work: URL
    public var packages: DebianPackages
    /// Every timestamp the outputs carry (SOURCE_DATE_EPOCH).
    public var sourceDateEpoch: UInt32

    public init(rootfs: URL, work: URL, packages: DebianPackages = DebianPackages(),
                sourceDateEpoch: UInt32 = SlotAssembly.sourceDateEpochFromEnvironment()) {
        self.rootfs = rootfs
        self.work = work
        self.packages = packages
        self.sourceDateEpoch = sourceDateEpoch
    }

    /// SOURCE_DATE_EPOCH from the environment, or 0 when unset or invalid.
    public static func sourceDateEpochFromEnvironment() -> UInt32 {
        ProcessInfo.processInfo.environment["SOURCE_DATE_EPOCH"].flatMap { UInt32($0) } ?? 0
    }

    // MARK: kernel

    /// Downloads and unpacks the kernel package (cached by .deb name) and
    /// generates its modules.dep with `depmod -b`.
    public func fetchKernel(package: String = SlotAssembly.defaultKernelPackage) throws -> SlotKernel {
        guard let deb = try packages.fetch([package]).first else { throw SlotAssemblyError.packageNotFound(package) }
        let tree = packages.cache.deletingLastPathComponent()
            .appendingPathComponent("kernels").appendingPathComponent(deb.deletingPathExtension().lastPathComponent)
        let marker = tree.appendingPathComponent(".outpost-unpacked")
        let fm = FileManager.default
        if !fm.fileExists(atPath: marker.path) {
            try? fm.removeItem(at: tree)
            try packages.unpack([deb], into: tree)
            let version = try kernelVersion(in: tree)
            try Tool.run(["depmod", "-b", tree.path, version])
            try Data().write(to: marker)
        }
        let version = try kernelVersion(in: tree)
        let vmlinuz = tree.appendingPathComponent("boot/vmlinuz-\(version)")
        guard fm.fileExists(atPath: vmlinuz.path) else {
            throw SlotAssemblyError.fileMissing(what: "kernel image", path: vmlinuz.path)
        }
        return SlotKernel(version: version, vmlinuz: vmlinuz,
                          modulesDirectory: tree.appendingPathComponent("lib/modules/\(version)"))
    }

    /// The single release folder under lib/modules of an unpacked kernel package.
    func kernelVersion(in tree: URL) throws -> String {
        let modules = tree.appendingPathComponent("lib/modules")
        let versions = (try? FileManager.default.contentsOfDirectory(atPath: modules.path)) ?? []
        guard versions.count == 1, let version = versions.first else {
            throw SlotAssemblyError.fileMissing(what: "exactly one kernel release folder", path: modules.path)
        }
        return version
    }

    /// rootfs/modules.txt resolved against the kernel, dependencies first.
    public func selectModules(kernel: SlotKernel) throws -> KernelModuleSelection {
        let list = try readRootfsFile("modules.txt")
        let dep = try String(contentsOf: kernel.modulesDirectory.appendingPathComponent("modules.dep"), encoding: .utf8)
        let builtin = (try? String(contentsOf: kernel.modulesDirectory.appendingPathComponent("modules.builtin"),
                                   encoding: .utf8)) ?? ""
        return try KernelModuleSelection.resolve(names: KernelModuleSelection.parseList(list),
                                                 modulesDep: dep, modulesBuiltin: builtin, kernel: kernel.version)
    }

    // MARK: root

    /// Stages the root tree in work/root: the packages of packages.txt (and
    /// their dependencies) less the paths of leave-out.txt, the selected modules with their own modules.dep,
    /// rootfs/overlay/, outpostd at /sbin/outpostd and /etc/outpost-release.
    /// Returns the folder, ready for `mksquashfs DIR OUT -all-root`.
    public func assembleRoot(kernel: SlotKernel, outpostd: URL, version: String) throws -> URL {
        let fm = FileManager.default
        let root = work.appendingPathComponent("root")
        try? fm.removeItem(at: root)
        try fm.createDirectory(at: root, withIntermediateDirectories: true)

        let list = try readRootfsFile("packages.txt")
        let wanted = DebianPackages.parseList(list)
        try packages.unpack(try packages.fetch(try packages.closure(of: wanted, excluding: DebianPackages.parseExclusions(list))),
                            into: root)
        try LeaveOutList(try readRootfsFile("leave-out.txt"), file: rootfs.appendingPathComponent("leave-out.txt").path)
            .apply(to: root)

        let modules = root.appendingPathComponent("lib/modules/\(kernel.version)")
        for path in try selectModules(kernel: kernel).loadOrder {
            try copy(kernel.modulesDirectory.appendingPathComponent(path), to: modules.appendingPathComponent(path))
        }
        for file in ["modules.order", "modules.builtin", "modules.builtin.modinfo"] {
            let source = kernel.modulesDirectory.appendingPathComponent(file)
            if fm.fileExists(atPath: source.path) { try copy(source, to: modules.appendingPathComponent(file)) }
        }
        try Tool.run(["depmod", "-b", root.path, kernel.version])

        let overlay = rootfs.appendingPathComponent("overlay")
        if fm.fileExists(atPath: overlay.path) {
            try Tool.run(["cp", "-R", "--no-preserve=ownership", overlay.path + "/.", root.path])
        }
        // Mount points early boot and the agent rely on; the root is read-only.
        for dir in ["dev", "proc", "sys", "run", "tmp", "config", "persist", "mnt", "etc", "sbin"] {
            try fm.createDirectory(at: root.appendingPathComponent(dir), withIntermediateDirectories: true)
        }
        try copy(outpostd, to: root.appendingPathComponent("sbin/outpostd"), permissions: 0o755)
        try Data("NAME=Outpost\nVERSION=\(version)\n".utf8)
            .write(to: root.appendingPathComponent("etc/outpost-release"))
        return root
    }

    // MARK: initramfs

    /// Writes work/initrd.img (or initrd.cpio): /init = `outpostd` (normally
    /// outpost-init, early boot's own small binary), the shared libraries `ldd` reports for it (taken from `libraryRoot`, normally the
    /// assembled root, so they come from the pinned Debian packages; else from
    /// the host), /dev/console, the selected modules and
    /// /lib/modules/initramfs.list naming them in load order.
    public func buildInitramfs(kernel: SlotKernel, outpostd: URL, libraryRoot: URL?,
                               compression: InitramfsCompression = .zstd) throws -> URL {
        var archive = CpioArchive(mtime: sourceDateEpoch)
        for dir in ["dev", "proc", "sys", "newroot", "run"] {
            try archive.add(CpioEntry(path: dir, kind: .directory))
        }
        // The kernel opens /dev/console for init before init can mount devtmpfs.
        try archive.add(CpioEntry(path: "dev/console", kind: .characterDevice(major: 5, minor: 1)))
        try archive.add(CpioEntry(path: "init", kind: .file(source: outpostd), permissions: 0o755))

        for (archivePath, source) in try sharedLibraries(of: outpostd, libraryRoot: libraryRoot) {
            try archive.add(CpioEntry(path: archivePath, kind: .file(source: source), permissions: 0o755))
        }

        // Dependencies first; each line names the modules it needs, so early boot can load
        // those of one dependency level side by side (KernelModules.swift).
        var list = "# Loaded by outpost-init (finit_module): module: the modules it needs. Written by OutpostBuilder.\n"
        let selection = try selectModules(kernel: kernel)
        let inArchive = { (path: String) in "lib/modules/\(kernel.version)/\(path)" }
        for path in selection.loadOrder {
            try archive.add(CpioEntry(path: inArchive(path), kind: .file(source: kernel.modulesDirectory.appendingPathComponent(path)),
                                      permissions: 0o644))
            let needs = (selection.dependencies[path] ?? []).map { " /" + inArchive($0) }.joined()
            list += "/\(inArchive(path)):\(needs)\n"
        }
        try archive.add(CpioEntry(path: "lib/modules/initramfs.list", kind: .data(Array(list.utf8))))

        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
        let cpio = work.appendingPathComponent("initrd.cpio")
        _ = try archive.write(to: cpio)
        let compressor: String
        switch compression {
        case .none: return cpio
        case .gzip: compressor = "gzip -n -9 -c \"$0\" > \"$1\""
        case .zstd: compressor = "zstd -q -10 -T0 -c \"$0\" > \"$1\""
        }
        let packed = work.appendingPathComponent("initrd.img")
        try? FileManager.default.removeItem(at: packed)
        try Tool.run(["sh", "-c", compressor, cpio.path, packed.path])
        try FileManager.default.removeItem(at: cpio)
        return packed
    }

    /// (path in the initramfs, source file) for every library `ldd` lists; none for a
    /// static executable (outpost-init is one), which `ldd` refuses.
    func sharedLibraries(of binary: URL, libraryRoot: URL?) throws -> [(String, URL)] {
        var result: [(String, URL)] = []
        guard try Self.programInterpreter(of: binary) != nil else { return result }
        for line in try Tool.run(["ldd", binary.path]).split(separator: "\n") {
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            let hostPath: String
            let archivePath: String
            if words.count >= 3, words[1] == "=>", words[2].hasPrefix("/") {
                hostPath = words[2]
                archivePath = "lib/x86_64-linux-gnu/\(words[0])" // by soname, where ld.so looks
            } else if let first = words.first, first.hasPrefix("/") {
                hostPath = first // the program interpreter, needed at its exact path
                archivePath = String(first.dropFirst())
            } else {
                continue // linux-vdso.so.1 lives in the kernel
            }
            let soname = (hostPath as NSString).lastPathComponent
            let source = libraryRoot.flatMap { findLibrary(soname, in: $0) } ?? URL(fileURLWithPath: hostPath).resolvingSymlinksInPath()
            result.append((archivePath, source))
        }
        return result
    }

    /// The program interpreter (PT_INTERP) an ELF64 little-endian executable names, e.g.
    /// /lib64/ld-linux-x86-64.so.2; nil for a static executable.
    static func programInterpreter(of binary: URL) throws -> String? {
        let bytes = [UInt8](try Data(contentsOf: binary))
        func fail(_ why: String) -> SlotAssemblyError { .badExecutable(path: binary.path, reason: why) }
        guard bytes.count >= 64, bytes[0..<4].elementsEqual([0x7f, 0x45, 0x4c, 0x46]) else { throw fail("not an ELF file") }
        guard bytes[4] == 2, bytes[5] == 1 else { throw fail("not a 64-bit little-endian ELF file") }
        func integer(_ offset: Int, _ size: Int) -> Int {
            (0..<size).reduce(0) { $0 | Int(bytes[offset + $1]) << (8 * $1) }
        }
        let (table, entrySize, count) = (integer(32, 8), integer(54, 2), integer(56, 2))
        guard entrySize >= 56, table <= bytes.count, count <= (bytes.count - table) / entrySize else {
            throw fail("its program headers lie outside the file")
        }
        for index in 0..<count where integer(table + index * entrySize, 4) == 3 { // PT_INTERP
            let header = table + index * entrySize
            let (offset, size) = (integer(header + 8, 8), integer(header + 32, 8))
            guard size > 0, offset <= bytes.count, size <= bytes.count - offset else { throw fail("its PT_INTERP lies outside the file") }
            return String(decoding: bytes[offset..<(offset + size)].prefix { $0 != 0 }, as: UTF8.self)
        }
        return nil
    }

    /// Finds `soname` in a Debian tree and follows symlinks inside that tree.
    func findLibrary(_ soname: String, in root: URL) -> URL? {
        let fm = FileManager.default
        for dir in ["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "usr/lib64"] {
            var candidate = root.appendingPathComponent(dir).appendingPathComponent(soname)
            for _ in 0..<8 {
                guard let target = try? fm.destinationOfSymbolicLink(atPath: candidate.path) else { break }
                candidate = target.hasPrefix("/")
                    ? root.appendingPathComponent(String(target.dropFirst()))
                    : candidate.deletingLastPathComponent().appendingPathComponent(target)
            }
            var isDirectory: ObjCBool = false
            if fm.fileExists(atPath: candidate.path, isDirectory: &isDirectory), !isDirectory.boolValue {
                return candidate
            }
        }
        return nil
    }

    // MARK: helpers

    private func readRootfsFile(_ name: String) throws -> String {
        let url = rootfs.appendingPathComponent(name)
        guard let text = try? String(contentsOf: url, encoding: .utf8) else {
            throw SlotAssemblyError.fileMissing(what: "rootfs list", path: url.path)
        }
        return text
    }

    private func copy(_ source: URL, to destination: URL, permissions: Int? = nil) throws {
        let fm = FileManager.default
        try fm.createDirectory(at: destination.deletingLastPathComponent(), withIntermediateDirectories: true)
        try? fm.removeItem(at: destination)
        try fm.copyItem(at: source, to: destination)
        if let permissions { try fm.setAttributes([.posixPermissions: permissions], ofItemAtPath: destination.path) }
    }
}
