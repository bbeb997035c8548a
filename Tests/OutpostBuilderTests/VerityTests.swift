import Foundation
import OutpostTestSupport
import Testing
@testable import OutpostBuilder

@Suite("dm-verity tree checked by veritysetup")
struct VerityTests {
    @Test(arguments: [2, 128, 129, 700, 16_385])
    func veritysetupVerifiesTheSwiftTree(blocks: Int) throws {
        let d = try Support.tempDir("verity-\(blocks)")
        defer { try? FileManager.default.removeItem(atPath: d) }
        var rng = SplitMix64(seed: UInt64(blocks))
        let data = (0..<blocks).map { _ in (0..<4096).map { _ in UInt8(truncatingIfNeeded: rng.next()) } }
        let salt = (0..<32).map { UInt8($0 * 7 & 0xFF) }
        let tree = VerityTree.compute(dataBlocks: UInt64(blocks), salt: salt) { data[Int($0)] }
        _ = FileManager.default.createFile(atPath: d + "/data", contents: Data(data.flatMap { $0 }))
        _ = FileManager.default.createFile(atPath: d + "/hash", contents: Data(tree.tree))
        let ok = try Support.run(["veritysetup", "verify", "--no-superblock", "--hash=sha256", "--format=1",
                                  "--data-block-size=4096", "--hash-block-size=4096", "--data-blocks=\(blocks)",
                                  "--salt=\(tree.saltHex)", d + "/data", d + "/hash", tree.rootHashHex])
        #expect(ok.status == 0, "\(ok.stderr)")
        // The same tree from veritysetup's own format matches byte for byte.
        let fmt = try Support.run(["veritysetup", "format", "--no-superblock", "--hash=sha256", "--format=1",
                                   "--data-block-size=4096", "--hash-block-size=4096", "--data-blocks=\(blocks)",
                                   "--salt=\(tree.saltHex)", d + "/data", d + "/hash2"])
        #expect(fmt.stdout.contains("Root hash:      \t\(tree.rootHashHex)") || fmt.stdout.contains(tree.rootHashHex), "\(fmt.stdout)")
        #expect(try Support.sha256(d + "/hash2").isEmpty == false)
        let hash2 = try Data(contentsOf: URL(fileURLWithPath: d + "/hash2"))
        #expect(Array(hash2.prefix(tree.tree.count)) == tree.tree)
        // One flipped bit in the data and veritysetup refuses it.
        var bad = data
        bad[blocks / 2][17] ^= 1
        _ = FileManager.default.createFile(atPath: d + "/data", contents: Data(bad.flatMap { $0 }))
        let fail = try Support.run(["veritysetup", "verify", "--no-superblock", "--data-blocks=\(blocks)",
                                    "--salt=\(tree.saltHex)", d + "/data", d + "/hash", tree.rootHashHex])
        #expect(fail.status != 0)
    }
}

