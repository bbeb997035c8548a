import Glibc
import OutpostPlatform
import Synchronization
import Testing
@testable import OutpostAgent
@testable import OutpostEarlyBoot

@Test func moduleListKeepsOrderAndSkipsComments() {
    let text = "# written by OutpostBuilder\n/lib/modules/x/virtio.ko\n\n  /lib/modules/x/virtio_blk.ko  # disk\n"
    #expect(KernelModules.parseList(text).map(\.path) == ["/lib/modules/x/virtio.ko", "/lib/modules/x/virtio_blk.ko"])
    #expect(KernelModules.parseList(text).allSatisfy { $0.dependencies.isEmpty })
}

@Test func moduleListLinesNameWhatEachModuleNeeds() {
    let text = "/m/virtio_ring.ko:\n/m/virtio.ko: /m/virtio_ring.ko\n/m/virtio_blk.ko: /m/virtio.ko  /m/virtio_ring.ko # disk\n"
    let entries = KernelModules.parseList(text)
    #expect(entries == [ModuleEntry(path: "/m/virtio_ring.ko"), ModuleEntry(path: "/m/virtio.ko", dependencies: ["/m/virtio_ring.ko"]),
                        ModuleEntry(path: "/m/virtio_blk.ko", dependencies: ["/m/virtio.ko", "/m/virtio_ring.ko"])])
    #expect(entries.map(\.name) == ["virtio_ring", "virtio", "virtio_blk"])
    #expect(KernelModules.name(ofPath: "/lib/modules/6.1/kernel/fs/nls/nls_iso8859-1.ko") == "nls_iso8859_1")
    #expect(KernelModules.name(ofPath: "dm-verity.ko.xz") == "dm_verity")
}

@Test func aFreeWorkerTakesTheFirstModuleInListOrderWhoseDependenciesAreTried() {
    let e = { (path: String, deps: [String]) in ModuleEntry(path: path, dependencies: deps) }
    let entries = [e("ring", []), e("virtio", ["ring"]), e("blk", ["virtio", "ring"]), e("crc16", []),
                   e("ext4", ["crc16", "builtin-not-listed"]), e("a", ["b"]), e("b", ["a"])]
    let listed = Set(entries.map(\.path))
    let next = { (pending: [ModuleEntry], tried: Set<String>, loading: Int) in
        KernelModules.nextReady(pending, tried: tried, listed: listed, loading: loading).map { pending[$0].path }
    }
    // The list's order is the priority: the disk's chain first.
    #expect(next(entries, [], 0) == "ring")
    // While ring loads, the second worker skips what needs it and takes crc16.
    #expect(next(Array(entries.dropFirst()), [], 1) == "crc16")
    // Once ring is tried, virtio comes before ext4 although both are ready; a dependency
    // outside the list is not waited for.
    let afterRing = entries.filter { $0.path != "ring" && $0.path != "crc16" }
    #expect(next(afterRing, ["ring", "crc16"], 0) == "virtio")
    #expect(next(afterRing.filter { $0.path != "virtio" }, ["ring", "crc16"], 1) == "ext4")
    #expect(next(afterRing.filter { $0.path != "virtio" && $0.path != "ext4" }, ["ring", "crc16", "ext4"], 1) == nil,
            "blk waits for virtio, in flight")
    // The a/b cycle cannot hang: with nothing in flight its first module goes.
    let cycle = entries.filter { $0.path == "a" || $0.path == "b" }
    #expect(next(cycle, listed.subtracting(["a", "b"]), 1) == nil)
    #expect(next(cycle, listed.subtracting(["a", "b"]), 0) == "a")
    #expect(next([], [], 0) == nil)
}

@Test func loadingAMissingModuleIsReportedNotFatal() {
    let failures = KernelModules.load([ModuleEntry(path: "/nonexistent/outpost-test.ko")])
    #expect(failures.count == 1)
    #expect(failures.first?.error.call == "open")
    #expect(failures.first?.error.code == 2) // ENOENT
}

@Test func backgroundLoadingReportsEveryModuleAndEveryFailure() {
    let paths = (0..<7).map { "/nonexistent/outpost-test-\($0).ko" }
    let entries = paths.enumerated().map { i, path in ModuleEntry(path: path, dependencies: i == 0 ? [] : [paths[0]]) }
    let seen = Mutex<[String]>([])
    let loading = ModuleLoading(entries) { path, ms in
        #expect(ms >= 0)
        seen.withLock { $0.append(path) }
    }
    loading.waitFor(["outpost_test_3", "not-in-the-list"])
    #expect(seen.withLock { $0 }.contains(paths[3]), "waitFor returned before the module was tried")
    let failures = loading.finish()
    #expect(Set(failures.map(\.path)) == Set(paths) && failures.count == 7)
    #expect(failures.allSatisfy { $0.error.code == ENOENT })
    #expect(Set(seen.withLock { $0 }) == Set(paths) && seen.withLock { $0 }.count == 7)
    #expect(seen.withLock { $0 }.first == paths[0], "the module the others need comes first")
    #expect(failures.map(\.path) == paths, "failures come in list order")
    #expect(ModuleLoading([]).finish().isEmpty)
}

@Test func releaseVersionFromOsReleaseStyleFile() {
    #expect(OutpostRelease.version(fromFileText: "NAME=Outpost\nVERSION=1.0.0\n") == "1.0.0")
    #expect(OutpostRelease.version(fromFileText: "NAME=Outpost\nVERSION=\"2.1\"\n") == "2.1")
    #expect(OutpostRelease.version(fromFileText: "3.0.0-rc1\n") == "3.0.0-rc1")
    #expect(OutpostRelease.version(fromFileText: "NAME=Outpost\n") == nil)
}

@Test func systemCallErrorsNameTheCallTheTargetAndTheErrno() {
    let error = SystemError(call: "mount", object: "ext4 /dev/vda5 on /persist", code: 5)
    #expect(error.description == "mount ext4 /dev/vda5 on /persist: Input/output error (errno 5)")
}

@Test func earlyBootErrorsAreOneLineAndSayWhere() {
    let errors: [EarlyBootError] = [
        .slotNotFound(partUUID: "6A1B7C3E-0000-4000-8000-0000DEADBEEF", waitedMilliseconds: 15_000, disks: []),
        .verityCorrupt(slot: "IMGA", device: "/dev/vda2", rootOffset: 4096, errno: 5),
        .persist(.foreignFilesystem(name: "PERSIST", device: "/dev/vda5", type: "xfs")),
    ]
    for error in errors {
        #expect(!error.description.contains("\n"))
    }
    #expect(errors[1].description.hasPrefix("verity: root of slot IMGA (/dev/vda2)"))
    #expect(errors[0].description.contains("PARTUUID=6A1B7C3E-0000-4000-8000-0000DEADBEEF"))
}

@Test func guidsAreRecognised() {
    #expect(isGUID("5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6"))
    #expect(!isGUID("5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A"))
    #expect(!isGUID("5DFBF5F4x2848-4BAC-AA5E-0D9A20B745A6"))
}

/// The whole-root read split over threads: every byte is read once, and a device shorter than
/// it claims (a read that ends early, as a failing disk's would) fails at the first missing
/// offset whichever thread reached it.
@Test func theWholeRootIsReadInPartsAndTheLowestFailingOffsetIsReported() throws {
    let path = "/tmp/outpost-verity-read-\(getpid())"
    defer { _ = unlink(path) }
    let size = (3 << 20) + 12_345
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    #expect(fd >= 0)
    #expect(ftruncate(fd, off_t(size)) == 0)
    close(fd)
    for parts in [1, 2, 3, 8] {
        let whole = VerityDevice(name: "test", path: path, major: 0, minor: 0, sizeBytes: UInt64(size))
        #expect(throws: Never.self) { try VerityRoot.verifyAllBlocks(whole, parts: parts) }
        let claimsMore = VerityDevice(name: "test", path: path, major: 0, minor: 0, sizeBytes: UInt64(size) + (5 << 20))
        let error = #expect(throws: VerityReadError.self) { try VerityRoot.verifyAllBlocks(claimsMore, parts: parts) }
        #expect(error?.offset == UInt64(size), "parts \(parts): \(String(describing: error))")
        #expect(error?.errno == EIO)
    }
    let missing = VerityDevice(name: "test", path: path + ".gone", major: 0, minor: 0, sizeBytes: 1 << 20)
    #expect((#expect(throws: VerityReadError.self) { try VerityRoot.verifyAllBlocks(missing) })?.errno == ENOENT)
}
