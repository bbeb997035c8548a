import OutpostPlatform
import Testing
@testable import OutpostAgent
@testable import OutpostEarlyBoot

@Test func moduleListKeepsOrderAndSkipsComments() {
    let text = "# written by OutpostBuilder\n/lib/modules/x/virtio.ko\n\n  /lib/modules/x/virtio_blk.ko  # disk\n"
    #expect(KernelModules.parseList(text) == ["/lib/modules/x/virtio.ko", "/lib/modules/x/virtio_blk.ko"])
}

@Test func loadingAMissingModuleIsReportedNotFatal() {
    let failures = KernelModules.load(paths: ["/nonexistent/outpost-test.ko"])
    #expect(failures.count == 1)
    #expect(failures.first?.error.call == "open")
    #expect(failures.first?.error.code == 2) // ENOENT
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
