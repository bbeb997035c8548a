import Foundation
import Testing
@testable import OutpostBuilder
import OutpostDisk

@Suite("Layout validation")
struct LayoutTests {
    func parse(_ parts: String, disk: String = #"{"size": "64MiB"}"#) throws -> Layout {
        try Layout.parse(Data(#"{"disk": \#(disk), "partitions": [\#(parts)]}"#.utf8), file: "layout.json")
    }

    let efi = #"{"name": "EFI", "type": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "size": "40MiB", "filesystem": "fat32"}"#

    func expectError(_ parts: String, disk: String = #"{"size": "64MiB"}"#, mentions: [String]) {
        do {
            _ = try parse(parts, disk: disk)
            Issue.record("expected an error mentioning \(mentions)")
        } catch {
            let text = "\(error)"
            for m in mentions { #expect(text.contains(m), "\(text) should mention \(m)") }
            #expect(!text.contains("\n"))
        }
    }

    @Test func theShippedLayoutIsValidAndFollowsTheContract() throws {
        let l = try Layout.load(path: Support.packageRoot + "/partitions/layout.json")
        #expect(l.partitions.map(\.name) == ["EFI", "IMGA", "IMGB", "CONFIG", "PERSIST"])
        #expect(l.partition(named: "IMGA")?.slotState == .active && l.partition(named: "IMGB")?.slotState == .unused)
        #expect(l.partitions.allSatisfy { $0.start % Layout.mib == 0 && $0.size % Layout.mib == 0 })
    }

    @Test func partitionsAreLaidOutConsecutivelyFromOneMiB() throws {
        let l = try parse(efi + #", {"name": "P", "type": "5F24425A-2DFA-11E8-A270-7B663FACCC2C", "size": "8MiB", "filesystem": "ext4"}"#)
        #expect(l.partitions[0].start == Layout.mib && l.partitions[1].start == 41 * Layout.mib)
        #expect(l.partitions[1].firstLBA == 41 * 2048 && l.partitions[1].lastLBA == 49 * 2048 - 1)
    }

    @Test func overlappingPartitionsNameBoth() {
        expectError(efi + #", {"name": "P", "type": "5F24425A-2DFA-11E8-A270-7B663FACCC2C", "size": "8MiB", "start": "10MiB", "filesystem": "ext4"}"#,
                    mentions: ["layout.json", "partitions[1]", "'P' overlaps 'EFI'"])
    }

    @Test func unalignedSizeOrStartIsRejected() {
        expectError(#"{"name": "P", "type": "5F24425A-2DFA-11E8-A270-7B663FACCC2C", "size": "1500KiB", "filesystem": "ext4"}"#,
                    mentions: ["partitions[0].size", "1 MiB"])
        expectError(#"{"name": "P", "type": "5F24425A-2DFA-11E8-A270-7B663FACCC2C", "size": "8MiB", "start": "1536KiB", "filesystem": "ext4"}"#,
                    mentions: ["partitions[0].start", "aligned"])
    }

    @Test func unknownFilesystemIsRejected() {
        expectError(#"{"name": "P", "type": "5F24425A-2DFA-11E8-A270-7B663FACCC2C", "size": "8MiB", "filesystem": "btrfs"}"#,
                    mentions: ["partitions[0].filesystem", "btrfs"])
    }

    @Test func tooSmallDiskIsRejected() {
        expectError(efi, disk: #"{"size": "32MiB"}"#, mentions: ["disk.size", "too small"])
    }

    @Test func duplicateNameIsRejected() {
        expectError(efi + ", " + efi, disk: #"{"size": "128MiB"}"#, mentions: ["partitions[1].name", "duplicate", "EFI"])
    }

    @Test func badSizeUnitsAndSlotRulesAreRejected() {
        expectError(#"{"name": "P", "type": "5F24425A-2DFA-11E8-A270-7B663FACCC2C", "size": "8MB", "filesystem": "ext4"}"#,
                    mentions: ["partitions[0].size", "'8MB'"])
        expectError(#"{"name": "IMGA", "type": "5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6", "size": "8MiB", "filesystem": "slot"}"#,
                    mentions: ["partitions[0].slotState"])
        expectError(#"{"name": "IMGA", "type": "5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6", "size": "8MiB", "filesystem": "slot", "slotState": "active"}, {"name": "IMGB", "type": "5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6", "size": "16MiB", "filesystem": "slot", "slotState": "unused"}"#,
                    mentions: ["same size"])
    }

    @Test func malformedJSONAndMissingFieldsNameTheField() {
        #expect(throws: BuilderError.self) { try Layout.parse(Data("{".utf8), file: "x.json") }
        expectError(#"{"name": "P", "size": "8MiB", "filesystem": "ext4"}"#, mentions: ["partitions[0].type", "missing"])
    }
}
