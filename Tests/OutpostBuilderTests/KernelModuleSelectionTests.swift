import Testing
@testable import OutpostBuilder

// rootfs/modules.txt names resolved against a kernel's modules.dep: the load
// order puts dependencies first, and each module keeps the list of what it
// needs (the initramfs list's `path: dependency …` lines).

private let modulesDep = """
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/md/dm-mod.ko:
kernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko
kernel/drivers/md/dm-bufio.ko:
kernel/fs/nls/nls_iso8859-1.ko:

"""

@Test func selectedModulesComeAfterWhatTheyNeedAndKeepTheirDependencies() throws {
    let selection = try KernelModuleSelection.resolve(names: ["virtio_blk", "dm-verity", "nls_iso8859_1", "ext4"],
                                                      modulesDep: modulesDep, modulesBuiltin: "kernel/fs/ext4/ext4.ko\n",
                                                      kernel: "6.1.0-test")
    #expect(selection.loadOrder == ["kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/virtio/virtio.ko",
                                    "kernel/drivers/block/virtio_blk.ko", "kernel/drivers/md/dm-bufio.ko",
                                    "kernel/drivers/md/dm-mod.ko", "kernel/drivers/md/dm-verity.ko",
                                    "kernel/fs/nls/nls_iso8859-1.ko"])
    #expect(selection.builtIn == ["ext4"])
    #expect(selection.dependencies["kernel/drivers/md/dm-verity.ko"] == ["kernel/drivers/md/dm-bufio.ko",
                                                                         "kernel/drivers/md/dm-mod.ko"])
    #expect(selection.dependencies["kernel/drivers/virtio/virtio_ring.ko"] == [])
    #expect(Set(selection.dependencies.keys) == Set(selection.loadOrder))
}

@Test func anUnknownModuleNamesItselfAndTheKernel() {
    #expect(throws: SlotAssemblyError.self) {
        try KernelModuleSelection.resolve(names: ["no_such_driver"], modulesDep: modulesDep, modulesBuiltin: "",
                                          kernel: "6.1.0-test")
    }
    do {
        _ = try KernelModuleSelection.resolve(names: ["no_such_driver"], modulesDep: modulesDep, modulesBuiltin: "",
                                              kernel: "6.1.0-test")
    } catch {
        #expect("\(error)".contains("no_such_driver") && "\(error)".contains("6.1.0-test"), "\(error)")
    }
}
