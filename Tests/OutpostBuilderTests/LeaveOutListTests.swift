import Foundation
import Testing
@testable import OutpostBuilder

/// rootfs/leave-out.txt and the initramfs's library scan: what the slot's root drops, and a
/// static /init that brings no shared libraries.
@Suite struct LeaveOutListTests {
    static let leaveOutTxt = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../../rootfs/leave-out.txt").standardized.path

    func tree(_ files: [String]) throws -> URL {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("leave-out-\(UUID().uuidString)")
        for file in files {
            let url = root.appendingPathComponent(file)
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try Data(file.utf8).write(to: url)
        }
        return root
    }

    @Test func patternsMatchWithinOneNameAndRemoveFilesAndFolders() throws {
        let root = try tree(["usr/bin/qemu-io", "usr/bin/qemu-img", "usr/share/qemu/openbios-ppc", "usr/share/qemu/openbios-sparc64",
                             "usr/share/qemu/keymaps/en-us", "usr/share/doc/a/copyright", "usr/lib/x/.hidden"])
        defer { try? FileManager.default.removeItem(at: root) }
        let list = try LeaveOutList("# comment\nusr/bin/qemu-io  # the tool\nusr/share/qemu/openbios-*\nusr/share/doc\nusr/lib/*\n",
                                    file: "leave-out.txt")
        #expect(list.patterns.map(\.line) == [2, 3, 4, 5])
        let removed = try list.apply(to: root)
        #expect(removed == ["usr/bin/qemu-io", "usr/share/qemu/openbios-ppc", "usr/share/qemu/openbios-sparc64", "usr/share/doc",
                            "usr/lib/x"])
        let fm = FileManager.default
        #expect(fm.fileExists(atPath: root.appendingPathComponent("usr/bin/qemu-img").path))
        #expect(fm.fileExists(atPath: root.appendingPathComponent("usr/share/qemu/keymaps/en-us").path))
        #expect(!fm.fileExists(atPath: root.appendingPathComponent("usr/share/doc").path))
        // `*` never crosses a `/` and never matches a leading dot.
        #expect(LeaveOutList.matches(try LeaveOutList("usr/*", file: "f").patterns[0], in: root) == ["usr/bin", "usr/lib", "usr/share"])
        let hidden = try tree(["d/.hidden"])
        defer { try? FileManager.default.removeItem(at: hidden) }
        #expect(LeaveOutList.matches(try LeaveOutList("d/*", file: "f").patterns[0], in: hidden).isEmpty)
    }

    @Test func aPatternThatMatchesNothingFailsBeforeAnythingIsRemoved() throws {
        let root = try tree(["usr/bin/qemu-io"])
        defer { try? FileManager.default.removeItem(at: root) }
        let list = try LeaveOutList("usr/bin/qemu-io\nusr/bin/qemu-gone\n", file: "rootfs/leave-out.txt")
        let error = #expect(throws: SlotAssemblyError.self) { try list.apply(to: root) }
        #expect(error.map { "\($0)" } == "rootfs/leave-out.txt:2: 'usr/bin/qemu-gone' matches nothing in the root (a package changed? mend the list)")
        #expect(FileManager.default.fileExists(atPath: root.appendingPathComponent("usr/bin/qemu-io").path))
    }

    @Test func absoluteDottedAndSpacedPathsAreOneLineErrors() {
        for (text, line) in [("/usr/bin/x", "/usr/bin/x"), ("ok\nusr/../etc", "usr/../etc"), ("usr//bin", "usr//bin"),
                             ("usr/bin/a b", "usr/bin/a b"), ("./usr", "./usr")] {
            let error = #expect(throws: SlotAssemblyError.self) { try LeaveOutList(text, file: "l.txt") }
            #expect(error.map { "\($0)" }?.hasSuffix("cannot parse '\(line)'") == true, "\(String(describing: error))")
            #expect(error.map { "\($0)" }?.contains("\n") == false)
        }
    }

    @Test func theShippedListParsesAndKeepsWhatTheDeviceRuns() throws {
        let list = try LeaveOutList(try String(contentsOfFile: Self.leaveOutTxt, encoding: .utf8), file: Self.leaveOutTxt)
        let texts = list.patterns.map(\.text)
        #expect(texts.contains("usr/bin/qemu-system-x86_64-microvm") && texts.contains("usr/lib/x86_64-linux-gnu/gconv"))
        // What QEMUCommand, AppInstance and the agent run stays.
        let root = try tree(["usr/bin/qemu-system-x86_64", "usr/bin/qemu-img", "usr/sbin/nft", "usr/sbin/dnsmasq",
                             "usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so", "usr/lib/ipxe/qemu/efi-virtio.rom",
                             "usr/lib/ipxe/qemu/pxe-e1000.rom", "usr/share/seabios/bios-256k.bin", "usr/share/qemu/kvmvapic.bin",
                             "usr/share/qemu/linuxboot_dma.bin"])
        defer { try? FileManager.default.removeItem(at: root) }
        for pattern in list.patterns {
            #expect(LeaveOutList.matches(pattern, in: root).isEmpty, "\(pattern.text) would remove what the device runs")
        }
    }

    @Test func aStaticExecutableHasNoInterpreterAndADynamicOneNamesLdSo() throws {
        // busybox-static (build.sh installs it) is a static executable; /bin/sh is dynamic.
        #expect(try SlotAssembly.programInterpreter(of: URL(fileURLWithPath: "/bin/busybox")) == nil)
        #expect(try SlotAssembly.programInterpreter(of: URL(fileURLWithPath: "/bin/sh")) == "/lib64/ld-linux-x86-64.so.2")
        let assembly = SlotAssembly(rootfs: URL(fileURLWithPath: "/nonexistent"), work: URL(fileURLWithPath: "/nonexistent"))
        #expect(try assembly.sharedLibraries(of: URL(fileURLWithPath: "/bin/busybox"), libraryRoot: nil).isEmpty)
        #expect(try assembly.sharedLibraries(of: URL(fileURLWithPath: "/bin/sh"), libraryRoot: nil).contains { $0.0.hasSuffix("libc.so.6") })
        // Not an ELF file, and a header whose program table lies outside the file: one line each.
        let bad = FileManager.default.temporaryDirectory.appendingPathComponent("not-elf-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: bad) }
        try Data("#!/bin/sh\n".utf8 + [UInt8](repeating: 0, count: 64)).write(to: bad)
        #expect(throws: SlotAssemblyError.self) { try SlotAssembly.programInterpreter(of: bad) }
        var header = [UInt8](repeating: 0, count: 64)
        header.replaceSubrange(0..<6, with: [0x7f, 0x45, 0x4c, 0x46, 2, 1])
        header[32] = 0xff; header[33] = 0xff // e_phoff far past the end
        header[54] = 56; header[56] = 1
        try Data(header).write(to: bad)
        let error = #expect(throws: SlotAssemblyError.self) { try SlotAssembly.programInterpreter(of: bad) }
        #expect(error.map { "\($0)" } == "\(bad.path): its program headers lie outside the file")
    }
}
