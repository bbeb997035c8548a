import Foundation
import Testing
import OutpostDisk
import OutpostTestSupport

/// Decodes `outpost image inspect --json`.
struct InspectJSON: Decodable {
    struct Part: Decodable, Equatable {
        var index: Int; var name: String; var typeGUID: String; var uniqueGUID: String
        var firstLBA: UInt64; var lastLBA: UInt64; var attributes: UInt64
        var priority: Int; var tries: Int; var successful: Bool; var state: String?
    }
    var source: String
    var warnings: [String]
    var partitions: [Part]
}

func inspect(_ image: String) throws -> (InspectJSON, Support.Result) {
    let r = try Support.run([Support.outpost, "image", "inspect", "--json", image])
    guard r.status == 0 else { throw NSError(domain: "inspect: \(r.stderr)", code: Int(r.status)) }
    return (try JSONDecoder().decode(InspectJSON.self, from: Data(r.stdout.utf8)), r)
}

@Suite("Images checked by independent tools", .serialized)
struct ImageTests {
    @Test func sgdiskCgptBlkidAndFsckAgreeWithTheBuiltImage() throws {
        let d = try Support.fixture("tools")
        defer { try? FileManager.default.removeItem(atPath: d) }
        let img = d + "/disk.img"
        let b = try Support.build(d)
        #expect(b.status == 0, "\(b.stderr)")

        let v = try Support.run(["sgdisk", "-v", img])
        #expect(v.status == 0 && v.stdout.contains("No problems found"), "\(v.stdout)")

        #expect(try Support.run(["cgpt", "show", "-i", "2", "-A", img]).stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "0x102")
        #expect(try Support.run(["cgpt", "show", "-i", "3", "-A", img]).stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "0")

        let (json, _) = try inspect(img)
        let expected: [(String, String, String)] = [("EFI", "vfat", "EFI"), ("CONFIG", "vfat", "CONFIG"), ("PERSIST", "ext4", "PERSIST")]
        for (name, type, label) in expected {
            let p = try #require(json.partitions.first { $0.name == name })
            let probe = try Support.run(["blkid", "-p", "-O", String(p.firstLBA * 512), "-S", String((p.lastLBA - p.firstLBA + 1) * 512),
                                         "-o", "export", img])
            #expect(probe.stdout.contains("TYPE=\(type)"), "\(name): \(probe.stdout)")
            #expect(probe.stdout.contains("LABEL=\(label)"), "\(name): \(probe.stdout)")
            let fs = d + "/\(name).fs"
            try Support.extract(img, startLBA: p.firstLBA, sectors: p.lastLBA - p.firstLBA + 1, to: fs)
            let check = type == "vfat" ? try Support.run(["fsck.vfat", "-n", fs]) : try Support.run(["e2fsck", "-fn", fs])
            #expect(check.status == 0, "\(name): \(check.stdout) \(check.stderr)")
        }
        // CONFIG holds exactly the config files, byte for byte.
        let config = try #require(json.partitions.first { $0.name == "CONFIG" })
        let url = try Support.run(["mtype", "-i", "\(img)@@\(config.firstLBA * 512)", "::/controller-url"], env: ["MTOOLS_SKIP_CHECK": "1"])
        #expect(url.stdout == (try String(contentsOfFile: d + "/config/controller-url", encoding: .utf8)))
        // The slot payload sits at the start of IMGA; IMGB is empty.
        let imga = try #require(json.partitions.first { $0.name == "IMGA" })
        try Support.extract(img, startLBA: imga.firstLBA, sectors: 3 << 11, to: d + "/imga.bin")
        #expect(try Support.sha256(d + "/imga.bin") == (try Support.sha256(d + "/slot.img")))
    }

    @Test func twoBuildsFromDifferentPathsAreBitIdentical() throws {
        let a = try Support.fixture("repro-a")
        let b = try Support.tempDir("repro-b-other-path")
        defer { try? FileManager.default.removeItem(atPath: a); try? FileManager.default.removeItem(atPath: b) }
        // Same inputs, copied to another path, with fresh file timestamps.
        try Support.run(["cp", "-r", a + "/layout.json", a + "/config", a + "/slot.img", a + "/efi", b])
        try Support.run(["touch", "-d", "2001-01-01", b + "/config/root-ca.pem", b + "/efi/EFI/BOOT/grub.cfg"])
        #expect(try Support.build(a, extra: ["--qcow2", a + "/disk.qcow2"]).status == 0)
        #expect(try Support.build(b, extra: ["--qcow2", b + "/disk.qcow2"]).status == 0)
        #expect(try Support.sha256(a + "/disk.img") == (try Support.sha256(b + "/disk.img")))
        #expect(try Support.sha256(a + "/disk.qcow2") == (try Support.sha256(b + "/disk.qcow2")))
        let check = try Support.run(["qemu-img", "check", a + "/disk.qcow2"])
        #expect(check.status == 0, "\(check.stdout)")
    }

    @Test func inspectReadsThroughACorruptPrimaryAndSaysSo() throws {
        let d = try Support.fixture("corrupt")
        defer { try? FileManager.default.removeItem(atPath: d) }
        let img = d + "/disk.img"
        #expect(try Support.build(d).status == 0)
        let (good, _) = try inspect(img)
        // Zero the primary header.
        let dev = try FileBlockDevice(path: img, writable: true)
        try dev.write(lba: 1, bytes: [UInt8](repeating: 0, count: 512))
        let (bad, r) = try inspect(img)
        #expect(bad.source == "backup" && bad.partitions == good.partitions)
        #expect(r.stderr.contains("primary GPT is invalid") && r.stderr.contains("backup"))
        // set-slot repairs the damaged copy as it writes; sgdisk then agrees.
        let s = try Support.run([Support.outpost, "image", "set-slot", img, "--slot", "IMGB", "--state", "updating"])
        #expect(s.status == 0, "\(s.stderr)")
        #expect(try Support.run(["cgpt", "show", "-i", "3", "-A", img]).stdout.contains("0x13"))
        #expect(try Support.run(["sgdisk", "-v", img]).stdout.contains("No problems found"))
        // Both copies gone: a clear one-line error, non-zero exit.
        try dev.write(lba: 1, bytes: [UInt8](repeating: 0, count: 512))
        try dev.write(lba: dev.sectorCount - 1, bytes: [UInt8](repeating: 0, count: 512))
        let both = try Support.run([Support.outpost, "image", "inspect", img])
        #expect(both.status == 1 && both.stderr.contains("no valid GPT") && both.stderr.split(separator: "\n").count == 1)
    }

    @Test func aRandomTableWrittenBySgdiskReadsBackIdentically() throws {
        var rng = SplitMix64.forTest()
        let d = try Support.tempDir("sgdisk")
        defer { try? FileManager.default.removeItem(atPath: d) }
        for round in 0..<3 {
            let img = d + "/r\(round).img"
            try Support.run(["truncate", "-s", "256M", img])
            try Support.run(["sgdisk", "-o", img])
            let types = ["C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6",
                         "13307E62-CD9C-4920-8F9B-91B45828B798", "0FC63DAF-8483-4772-8E79-3D69D8477DE4"]
            var lba: UInt64 = 2048
            var args = ["sgdisk", "-a", "8"]
            let count = Int.random(in: 1...12, using: &rng)
            let numbers = Array(1...20).shuffled(using: &rng).prefix(count)
            for n in numbers {
                let start = lba + UInt64.random(in: 0...64, using: &rng) * 8
                let end = start + UInt64.random(in: 8...4000, using: &rng)
                lba = end + 1
                let name = String((0..<Int.random(in: 1...30, using: &rng)).map { _ in "abcXYZ019 _-".randomElement(using: &rng) ?? "a" })
                args += ["-n", "\(n):\(start):\(end)", "-t", "\(n):\(types.randomElement(using: &rng) ?? types[0])", "-c", "\(n):\(name)"]
                for bit in [0, 2, 48, 49, 50, 51, 52, 53, 54, 55, 56, 60, 63] where Bool.random(using: &rng) {
                    args += ["-A", "\(n):set:\(bit)"]
                }
            }
            let w = try Support.run(args + [img])
            #expect(w.status == 0, "\(w.stderr)")
            let (json, _) = try inspect(img)
            #expect(json.partitions.map(\.index) == numbers.sorted())
            for p in json.partitions {
                let info = try Support.run(["sgdisk", "-i", String(p.index), img]).stdout
                func field(_ key: String) -> String {
                    info.split(separator: "\n").first { $0.hasPrefix(key) }.map { String($0.dropFirst(key.count)) } ?? ""
                }
                #expect(field("Partition GUID code: ").hasPrefix(p.typeGUID))
                #expect(field("Partition unique GUID: ") == p.uniqueGUID)
                #expect(field("First sector: ").hasPrefix("\(p.firstLBA) "))
                #expect(field("Last sector: ").hasPrefix("\(p.lastLBA) "))
                #expect(UInt64(field("Attribute flags: "), radix: 16) == p.attributes)
                #expect(field("Partition name: ") == "'\(p.name)'")
                #expect(p.priority == Int(p.attributes >> 48 & 0xF) && p.tries == Int(p.attributes >> 52 & 0xF))
                #expect(p.successful == (p.attributes >> 56 & 1 == 1))
            }
        }
    }

    @Test func setSlotChangesOnlyThatSlotAndCgptReadsIt() throws {
        let d = try Support.fixture("setslot")
        defer { try? FileManager.default.removeItem(atPath: d) }
        let img = d + "/disk.img"
        #expect(try Support.build(d).status == 0)
        for (state, raw) in [("updating", "0x13"), ("inprogress", "0x3"), ("active", "0x102"), ("unused", "0")] {
            #expect(try Support.run([Support.outpost, "image", "set-slot", img, "--slot", "IMGB", "--state", state]).status == 0)
            #expect(try Support.run(["cgpt", "show", "-i", "3", "-A", img]).stdout.trimmingCharacters(in: .whitespacesAndNewlines) == raw)
            #expect(try Support.run(["cgpt", "show", "-i", "2", "-A", img]).stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "0x102")
        }
        let bad = try Support.run([Support.outpost, "image", "set-slot", img, "--slot", "CONFIG", "--state", "active"])
        #expect(bad.status == 1 && bad.stderr.contains("no slot partition named CONFIG"))
        let usage = try Support.run([Support.outpost, "image", "set-slot", img, "--slot", "IMGB", "--state", "bogus"])
        #expect(usage.status == 2)
    }
}

@Suite("Bad input fails in one line and leaves nothing behind", .serialized)
struct BadInputTests {
    func expectFailure(_ d: String, layout: String? = nil, mutate: (String) throws -> Void = { _ in }, mentions: [String]) throws {
        if let layout { try layout.write(toFile: d + "/layout.json", atomically: true, encoding: .utf8) }
        try mutate(d)
        let out = d + "/out/disk.img"
        let r = try Support.build(d, output: out, extra: ["--qcow2", d + "/out/disk.qcow2"])
        #expect(r.status == 1)
        let lines = r.stderr.split(separator: "\n")
        #expect(lines.count == 1, "\(r.stderr)")
        for m in mentions { #expect(r.stderr.contains(m), "\(r.stderr) should mention \(m)") }
        let left = (try? FileManager.default.contentsOfDirectory(atPath: d + "/out")) ?? []
        #expect(left.isEmpty, "left behind: \(left)")
    }

    func layout(replacing a: String, with b: String) -> String {
        Support.smallLayout.replacingOccurrences(of: a, with: b)
    }

    @Test func overlappingPartitions() throws {
        let d = try Support.fixture("bad-overlap"); defer { try? FileManager.default.removeItem(atPath: d) }
        try expectFailure(d, layout: layout(replacing: #""size": "4MiB","#, with: #""size": "4MiB", "start": "45MiB","#),
                          mentions: ["layout.json", "partitions[3]", "overlaps 'IMGA'"])
    }

    @Test func unalignedPartition() throws {
        let d = try Support.fixture("bad-align"); defer { try? FileManager.default.removeItem(atPath: d) }
        try expectFailure(d, layout: layout(replacing: #""size": "16MiB""#, with: #""size": "16000KiB""#),
                          mentions: ["partitions[4].size", "1 MiB"])
    }

    @Test func unknownFilesystem() throws {
        let d = try Support.fixture("bad-fs"); defer { try? FileManager.default.removeItem(atPath: d) }
        try expectFailure(d, layout: layout(replacing: #""ext4""#, with: #""zfs""#), mentions: ["partitions[4].filesystem", "zfs"])
    }

    @Test func diskTooSmall() throws {
        let d = try Support.fixture("bad-small"); defer { try? FileManager.default.removeItem(atPath: d) }
        try expectFailure(d, layout: layout(replacing: #""96MiB""#, with: #""64MiB""#), mentions: ["disk.size", "too small"])
    }

    @Test func duplicateName() throws {
        let d = try Support.fixture("bad-dup"); defer { try? FileManager.default.removeItem(atPath: d) }
        try expectFailure(d, layout: layout(replacing: #""name": "CONFIG""#, with: #""name": "EFI""#),
                          mentions: ["partitions[3].name", "duplicate", "EFI"])
    }

    @Test func missingConfigFile() throws {
        let d = try Support.fixture("bad-config"); defer { try? FileManager.default.removeItem(atPath: d) }
        try expectFailure(d, mutate: { try FileManager.default.removeItem(atPath: $0 + "/config/onboard.key.pem") },
                          mentions: ["config/onboard.key.pem", "missing", "onboarding private key"])
    }

    @Test func slotPayloadLargerThanTheSlot() throws {
        let d = try Support.fixture("bad-payload"); defer { try? FileManager.default.removeItem(atPath: d) }
        try expectFailure(d, mutate: { try Support.run(["truncate", "-s", "9M", $0 + "/slot.img"]) },
                          mentions: ["slot.img", "larger than slot IMGA"])
    }

    @Test func malformedConfigURL() throws {
        let d = try Support.fixture("bad-url"); defer { try? FileManager.default.removeItem(atPath: d) }
        try expectFailure(d, mutate: { try "not a url".write(toFile: $0 + "/config/controller-url", atomically: true, encoding: .utf8) },
                          mentions: ["controller-url", "not an http(s) URL"])
    }
}
