import Foundation
import OutpostPlatform
import OutpostTestSupport
import Testing
@testable import OutpostAgent

/// What the host offers the vault tests: loop devices need root; dm-crypt
/// also needs a kernel with device-mapper (and dm_crypt) available.
enum VaultHost {
    static let isRoot = getuid() == 0

    /// device-mapper registered (built in or loaded); tries modprobe once.
    static let hasDeviceMapper: Bool = {
        guard isRoot else { return false }
        _ = try? runCommand(["modprobe", "-a", "dm_mod", "dm_crypt", "loop"], timeout: .seconds(30))
        return FileManager.default.fileExists(atPath: "/sys/class/misc/device-mapper")
    }()

    static let hasCryptsetup = ["/usr/sbin/cryptsetup", "/sbin/cryptsetup"].contains {
        FileManager.default.isExecutableFile(atPath: $0)
    }

    /// Loop devices whose backing file lies under `directory`.
    static func loopsBacked(under directory: String) -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/sys/block")) ?? []
        return names.filter { $0.hasPrefix("loop") }.compactMap { name in
            let file = "/sys/block/\(name)/loop/backing_file"
            guard let text = try? String(contentsOfFile: file, encoding: .utf8), text.hasPrefix(directory) else { return nil }
            return name
        }
    }

    static func sha256(_ path: String) throws -> String {
        String(try sh("sha256sum", path).prefix(64))
    }

    static func key(_ seed: UInt8) -> [UInt8] {
        (0..<64).map { UInt8(truncatingIfNeeded: Int($0) * 37 + Int(seed)) }
    }

    /// A test area under `dir`: its own mapping name (this process's PID), no reserve.
    static func testArea(_ dir: TemporaryDirectory, size: UInt64 = 32 << 20,
                         mappingName: String = "outpost-vault-t\(getpid())") -> VaultVolume.Configuration {
        VaultVolume.Configuration(backingFile: dir.path + "/vault/area.img", mountPoint: dir.path + "/vault/data",
                                  mappingName: mappingName, sizeBytes: size, reserveBytes: 0)
    }

    /// Opens `area` with cryptsetup in plain mode (the cipher and key size VaultVolume's table
    /// uses), as an independent reader of what the agent wrote; returns the mapping's name.
    static func cryptsetupOpen(_ area: String, key: [UInt8], in dir: TemporaryDirectory) throws -> String {
        let keyFile = dir.path + "/key.bin"
        try Data(key).write(to: URL(fileURLWithPath: keyFile))
        let name = "outpost-vault-check\(getpid())"
        try sh("cryptsetup", "open", "--type", "plain", "--cipher", "aes-xts-plain64", "--key-size", "512",
               "--key-file", keyFile, area, name, timeout: .seconds(60))
        return name
    }
}

@Test func theKeyBecomesLowercaseHexForTheCryptTable() {
    #expect(VaultVolume.hex([0x00, 0x0F, 0xA5, 0xFF]) == "000fa5ff")
    #expect(VaultVolume.hex(VaultHost.key(1)).count == 128)
}

@Test func aKeyThatIsNot64BytesIsRefusedBeforeAnythingIsCreated() throws {
    let dir = try TemporaryDirectory("vault-keylen")
    let configuration = VaultVolume.Configuration(backingFile: dir.path + "/vault/area.img",
                                                  mountPoint: dir.path + "/vault/data")
    #expect(throws: VaultError.badKeyLength(32)) { try VaultVolume.open(key: [UInt8](repeating: 1, count: 32), configuration: configuration) }
    #expect(!FileManager.default.fileExists(atPath: dir.path + "/vault"))
}

@Test func theLabelIsReadFromARealExt4SuperblockAndNoiseHasNone() throws {
    let dir = try TemporaryDirectory("vault-label")
    let image = dir.path + "/fs.img"
    #expect(FileManager.default.createFile(atPath: image, contents: nil))
    try sh("truncate", "-s", "16M", image)
    try sh("mke2fs", "-q", "-F", "-t", "ext4", "-L", VaultVolume.label, image)
    #expect(try VaultVolume.superblockLabel(device: image) == "outpost-vault")

    var generator = SystemRandomNumberGenerator()
    let noise = dir.path + "/noise.img"
    try Data((0..<65536).map { _ in UInt8.random(in: 0...255, using: &generator) }).write(to: URL(fileURLWithPath: noise))
    #expect(try VaultVolume.superblockLabel(device: noise) == nil)

    var superblock = [UInt8](repeating: 0, count: 1024)
    superblock[56] = 0x53
    superblock[57] = 0xEF
    superblock.replaceSubrange(120..<129, with: Array("outpost-v".utf8))
    #expect(VaultVolume.ext4Label(superblock: superblock) == "outpost-v")
    superblock[57] = 0xEE
    #expect(VaultVolume.ext4Label(superblock: superblock) == nil)
}

@Test func anAreaLargerThanTheFreeSpaceIsRefusedWithTheNumbers() throws {
    let dir = try TemporaryDirectory("vault-fit")
    var info = statvfs()
    #expect(statvfs(dir.path, &info) == 0)
    let available = UInt64(info.f_bavail) * UInt64(info.f_frsize)
    let tooLarge = (available / (1 << 20) + 1024) << 20
    let configuration = VaultVolume.Configuration(backingFile: dir.path + "/vault/area.img",
                                                  mountPoint: dir.path + "/vault/data", sizeBytes: tooLarge)
    do {
        _ = try VaultVolume.open(key: VaultHost.key(1), configuration: configuration)
        Issue.record("an area of \(tooLarge >> 20) MiB was accepted with \(available >> 20) MiB free")
    } catch {
        guard case .doesNotFit(_, let bytes, let free, let reserve) = error else {
            Issue.record("expected doesNotFit, got \(error)")
            return
        }
        #expect(bytes == tooLarge)
        #expect(reserve == VaultVolume.defaultReserve)
        #expect(free <= available + (64 << 20))
        #expect(error.description.hasPrefix("vault: an area of \(tooLarge >> 20) MiB does not fit beside \(dir.path)/vault/area.img: "))
        #expect(error.description.contains("MiB of it kept for the rest of PERSIST"))
    }
    #expect(!FileManager.default.fileExists(atPath: dir.path + "/vault/area.img"))
    #expect(!FileManager.default.fileExists(atPath: dir.path + "/vault/area.img.new"))
}

@Test func anAreaThatWouldEatTheReserveIsRefused() throws {
    let dir = try TemporaryDirectory("vault-reserve")
    var info = statvfs()
    #expect(statvfs(dir.path, &info) == 0)
    let available = UInt64(info.f_bavail) * UInt64(info.f_frsize)
    // Fits the free space, but leaves only about 32 MiB of the 64 MiB reserve.
    let size = ((available - (32 << 20)) >> 20) << 20
    try #require(size >= VaultVolume.minimumSize, "too little free space under \(dir.path) for this test")
    let configuration = VaultVolume.Configuration(backingFile: dir.path + "/area.img",
                                                  mountPoint: dir.path + "/data", sizeBytes: size)
    #expect {
        _ = try VaultVolume.newAreaSize(configuration, directory: dir.path)
    } throws: { error in
        guard let error = error as? VaultError, case .doesNotFit(_, size, _, VaultVolume.defaultReserve) = error else { return false }
        return true
    }
}

@Test func theDevicesNewAreaTakesAQuarterOfTheFreeSpaceAtMostItsCapAndTestsGetTheirExactSize() throws {
    let dir = try TemporaryDirectory("vault-quarter")
    var info = statvfs()
    #expect(statvfs(dir.path, &info) == 0)
    let quarter = UInt64(info.f_bavail) * UInt64(info.f_frsize) / 4 / (1 << 20) * (1 << 20)
    try #require(quarter > 64 << 20, "too little free space under \(dir.path) for this test")
    func size(_ bytes: UInt64, quarterOfFreeSpace: Bool) throws -> UInt64 {
        try VaultVolume.newAreaSize(VaultVolume.Configuration(backingFile: dir.path + "/area.img", mountPoint: dir.path + "/data",
                                                              sizeBytes: bytes, quarterOfFreeSpace: quarterOfFreeSpace),
                                    directory: dir.path)
    }
    // The cap below a quarter: the cap.
    #expect(try size(64 << 20, quarterOfFreeSpace: true) == 64 << 20)
    // No cap in reach: a quarter, whole MiB (the host's other writers may move it a little).
    let uncapped = try size(1 << 50, quarterOfFreeSpace: true)
    #expect(uncapped % (1 << 20) == 0 && uncapped <= quarter + (256 << 20) && uncapped + (256 << 20) >= quarter, "\(uncapped) vs \(quarter)")
    // Without the rule: exactly the size asked for, even far below a quarter.
    #expect(try size(32 << 20, quarterOfFreeSpace: false) == 32 << 20)
    // The device's vault: a quarter of PERSIST, at most 4 GiB (app volumes live there).
    #expect(VaultVolume.defaultSize == 4 << 30 && VaultPaths().maximumAreaBytes == VaultVolume.defaultSize)
    let device = try size(VaultVolume.defaultSize, quarterOfFreeSpace: true)
    #expect(device == VaultVolume.defaultSize || (device < VaultVolume.defaultSize && device + (256 << 20) >= quarter), "\(device)")
}

@Test func aSizeThatIsNotWholeMiBOrTooSmallIsRefused() throws {
    let dir = try TemporaryDirectory("vault-size")
    for size: UInt64 in [(16 << 20) + 512, 8 << 20] {
        let configuration = VaultVolume.Configuration(backingFile: dir.path + "/area.img",
                                                      mountPoint: dir.path + "/data", sizeBytes: size)
        #expect(throws: VaultError.badSize(bytes: size)) { _ = try VaultVolume.newAreaSize(configuration, directory: dir.path) }
    }
}

@Test func bothLabelsFitTheSixteenBytesOfAnExt4Label() {
    #expect(VaultVolume.label.utf8.count <= 16)
    #expect(VaultVolume.newLabel.utf8.count <= 16)
    #expect(VaultVolume.newLabel != VaultVolume.label)
}

@Test func theWrongKeyErrorIsTheOneLineTheDeviceShows() {
    #expect(VaultError.wrongKey(path: VaultVolume.defaultBackingFile).description
        == "vault: the key does not open /persist/vault/area.img (no outpost-vault filesystem behind dm-crypt)")
}

/// Real loop devices and real dm-crypt: root only, bounded waits, and each
/// test removes only the files, mappings and loop devices it made.
@Suite(.serialized, .enabled(if: VaultHost.isRoot, "needs root: binds loop devices (and maps dm-crypt where the kernel has it)"))
struct VaultVolumeTests {
    @Test func aLoopDeviceShowsTheFileAndDetachesWhenItsLastHolderCloses() throws {
        let dir = try TemporaryDirectory("vault-loop")
        let file = dir.path + "/backing.img"
        #expect(FileManager.default.createFile(atPath: file, contents: nil))
        try sh("truncate", "-s", "16M", file)
        let fd = open(file, O_RDWR | O_CLOEXEC)
        try #require(fd >= 0)
        defer { close(fd) }
        let loop = try LoopDevice.attach(backingFD: fd, backingPath: file)
        #expect(LoopDevice.backingFile(number: loop.number) == file)
        #expect(loop.path == "/dev/loop\(loop.number)")
        #expect(loop.major == 7)
        loop.closeHandle()   // AUTOCLEAR: nothing else holds it, so the file is let go
        let detached = LoopDevice.waitUntilDetached(number: loop.number, path: loop.path, timeout: .seconds(5))
        #expect(detached)
        #expect(VaultHost.loopsBacked(under: dir.path).isEmpty)
    }

    @Test(.enabled(if: !VaultHost.hasDeviceMapper, "this host has device-mapper; the failure path is covered by the dm-crypt tests"))
    func withoutDeviceMapperANewAreaLeavesNoFileAndNoLoopBehind() throws {
        let dir = try TemporaryDirectory("vault-nodm")
        let configuration = VaultHost.testArea(dir)
        #expect(throws: VaultError.noDeviceMapper) { try VaultVolume.open(key: VaultHost.key(1), configuration: configuration) }
        #expect(!FileManager.default.fileExists(atPath: "/dev/mapper"))
        #expect(!FileManager.default.fileExists(atPath: dir.path + "/vault/area.img"))
        #expect(!FileManager.default.fileExists(atPath: dir.path + "/vault/area.img.new"))
        #expect(VaultHost.loopsBacked(under: dir.path).isEmpty)
    }

    @Test(.enabled(if: VaultHost.hasDeviceMapper, "this kernel has no device-mapper (no /sys/class/misc/device-mapper, modprobe dm_crypt fails)"))
    func aMappingTheKernelRefusesLeavesNoFileAndNoLoopBehind() throws {
        let dir = try TemporaryDirectory("vault-badname")
        // DM_NAME_LEN is 128: DM_DEV_CREATE fails after the loop device is bound.
        let configuration = VaultHost.testArea(dir, mappingName: String(repeating: "v", count: 200))
        #expect(throws: VaultError.self) { try VaultVolume.open(key: VaultHost.key(1), configuration: configuration) }
        #expect(!FileManager.default.fileExists(atPath: dir.path + "/vault/area.img"))
        #expect(!FileManager.default.fileExists(atPath: dir.path + "/vault/area.img.new"))
        try waitFor("loop devices of \(dir.path) detached", within: .seconds(5)) { VaultHost.loopsBacked(under: dir.path).isEmpty }
    }

    @Test(.enabled(if: VaultHost.hasDeviceMapper, "this kernel has no device-mapper (no /sys/class/misc/device-mapper, modprobe dm_crypt fails)"),
          .timeLimit(.minutes(5)))
    func anAreaKeepsItsFilesAcrossCloseAndOpenAndRefusesTheWrongKey() throws {
        let dir = try TemporaryDirectory("vault-dm")
        let configuration = VaultHost.testArea(dir, size: 64 << 20)
        let key = VaultHost.key(1)

        let first = try VaultVolume.open(key: key, configuration: configuration)
        var closed = false
        defer { if !closed { try? first.close() } }
        #expect(first.created)
        #expect(first.sizeBytes == 64 << 20)
        #expect(!FileManager.default.fileExists(atPath: dir.path + "/vault/area.img.new"))
        let secret = configuration.mountPoint + "/secret.txt"
        try "kept\n".write(toFile: secret, atomically: false, encoding: .utf8)
        #expect(try sh("findmnt", "-n", "-o", "FSTYPE,OPTIONS", configuration.mountPoint).contains("nosuid"))
        try first.close()
        closed = true
        #expect(!FileManager.default.fileExists(atPath: "/dev/mapper/\(configuration.mappingName)"))
        #expect(!FileManager.default.fileExists(atPath: secret))
        try waitFor("loop devices of \(dir.path) detached", within: .seconds(5)) { VaultHost.loopsBacked(under: dir.path).isEmpty }

        let second = try VaultVolume.open(key: key, configuration: configuration)
        #expect(!second.created)
        #expect(try String(contentsOfFile: secret, encoding: .utf8) == "kept\n")
        try second.close()

        let before = try VaultHost.sha256(configuration.backingFile)
        do {
            let wrong = try VaultVolume.open(key: VaultHost.key(2), configuration: configuration)
            try? wrong.close()
            Issue.record("the wrong key opened the vault")
        } catch {
            #expect(error == .wrongKey(path: configuration.backingFile))
            #expect(error.description == "vault: the key does not open \(configuration.backingFile) (no outpost-vault filesystem behind dm-crypt)")
        }
        #expect(try VaultHost.sha256(configuration.backingFile) == before)
        #expect(!FileManager.default.fileExists(atPath: "/dev/mapper/\(configuration.mappingName)"))
        try waitFor("loop devices of \(dir.path) detached", within: .seconds(5)) { VaultHost.loopsBacked(under: dir.path).isEmpty }
    }

    @Test(.enabled(if: VaultHost.hasDeviceMapper && VaultHost.hasCryptsetup,
                   "needs device-mapper in the kernel and cryptsetup (apt-get install cryptsetup-bin)"),
          .timeLimit(.minutes(5)))
    func cryptsetupOpensTheSameAreaInPlainModeAndSeesTheFile() throws {
        let dir = try TemporaryDirectory("vault-cryptsetup")
        let configuration = VaultHost.testArea(dir)
        let key = VaultHost.key(7)
        let vault = try VaultVolume.open(key: key, configuration: configuration)
        try "seen by cryptsetup\n".write(toFile: configuration.mountPoint + "/proof.txt", atomically: false, encoding: .utf8)
        try vault.close()

        let mountPoint = dir.path + "/check"
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        let name = try VaultHost.cryptsetupOpen(configuration.backingFile, key: key, in: dir)
        defer { _ = try? runCommand(["cryptsetup", "close", name], timeout: .seconds(60)) }
        let probe = try sh("blkid", "-o", "export", "/dev/mapper/\(name)")
        #expect(probe.contains("TYPE=ext4"))
        #expect(probe.contains("LABEL=outpost-vault"))
        try sh("mount", "-o", "ro", "/dev/mapper/\(name)", mountPoint)
        defer { _ = try? runCommand(["umount", mountPoint], timeout: .seconds(60)) }
        #expect(try String(contentsOfFile: mountPoint + "/proof.txt", encoding: .utf8) == "seen by cryptsetup\n")
    }

    @Test(.enabled(if: VaultHost.hasDeviceMapper && VaultHost.hasCryptsetup,
                   "needs device-mapper in the kernel and cryptsetup (apt-get install cryptsetup-bin)"),
          .timeLimit(.minutes(5)))
    func anAreaWhoseFirstFormatNeverFinishedIsFormattedAgain() throws {
        let dir = try TemporaryDirectory("vault-unfinished")
        let configuration = VaultHost.testArea(dir)
        let key = VaultHost.key(9)
        let vault = try VaultVolume.open(key: key, configuration: configuration)
        try "from the first format\n".write(toFile: configuration.mountPoint + "/old.txt", atomically: false, encoding: .utf8)
        try vault.close()

        // Put the temporary label back, as a power cut before the relabel would have left it.
        let name = try VaultHost.cryptsetupOpen(configuration.backingFile, key: key, in: dir)
        let relabel = try runCommand(["tune2fs", "-L", VaultVolume.newLabel, "/dev/mapper/\(name)"], timeout: .seconds(60))
        try sh("cryptsetup", "close", name, timeout: .seconds(60))
        #expect(relabel.status == 0, "\(relabel.output)")

        let again = try VaultVolume.open(key: key, configuration: configuration)
        defer { try? again.close() }
        #expect(again.created)
        #expect(!FileManager.default.fileExists(atPath: configuration.mountPoint + "/old.txt"))
        #expect(try VaultVolume.superblockLabel(device: again.mappingPath) == VaultVolume.label)
    }
}
