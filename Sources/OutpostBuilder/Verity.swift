import Crypto
import OutpostDisk

// The dm-verity hash tree (kernel format version 1, SHA-256, 4 KiB data and
// hash blocks, no superblock), computed in Swift so the builder knows the root
// hash it puts on the kernel command line. `veritysetup verify` checks it.
//
//   data:  | d0 | d1 | d2 | ... | dN-1 |          level 0 digests: H(salt || d_i)
//   tree:  | top level | ... | level 1 | level 0 |  stored top level first;
//          each hash block holds 128 digests, zero padded to 4096 bytes
//   root:  H(salt || the single top-level block)

/// A computed hash tree ready to be written after the data.
public struct VerityTree: Sendable {
    public static let blockSize = 4096
    public var rootHash: [UInt8]
    public var salt: [UInt8]
    public var dataBlocks: UInt64
    /// The tree, top level first, as it goes on disk.
    public var tree: [UInt8]

    public var rootHashHex: String { hexString(rootHash) }
    public var saltHex: String { hexString(salt) }

    /// Hashes `dataBlocks` blocks read through `readBlock` (block index → 4096 bytes).
    public static func compute(dataBlocks: UInt64, salt: [UInt8], readBlock: (UInt64) throws -> [UInt8]) rethrows -> VerityTree {
        let perBlock = blockSize / SHA256.byteCount
        func digest(_ block: [UInt8]) -> [UInt8] {
            var h = SHA256()
            h.update(data: salt)
            h.update(data: block)
            return Array(h.finalize())
        }
        func pack(_ digests: [[UInt8]]) -> [[UInt8]] {
            stride(from: 0, to: digests.count, by: perBlock).map { start in
                var block = digests[start..<min(start + perBlock, digests.count)].flatMap { $0 }
                block += repeatElement(0, count: blockSize - block.count)
                return block
            }
        }
        var level = [[UInt8]]()
        level.reserveCapacity(Int(dataBlocks))
        for i in 0..<dataBlocks { level.append(digest(try readBlock(i))) }
        // One data block needs no tree at all: the root is that block's digest.
        guard dataBlocks > 1 else {
            return VerityTree(rootHash: level.first ?? digest([UInt8](repeating: 0, count: blockSize)), salt: salt,
                              dataBlocks: dataBlocks, tree: [])
        }
        var levels: [[[UInt8]]] = []
        var blocks = pack(level)
        levels.append(blocks)
        while blocks.count > 1 {
            blocks = pack(blocks.map(digest))
            levels.append(blocks)
        }
        let root = digest(blocks[0])
        return VerityTree(rootHash: root, salt: salt, dataBlocks: dataBlocks,
                          tree: levels.reversed().flatMap { $0.flatMap { $0 } })
    }
}

func hexString(_ bytes: [UInt8]) -> String {
    bytes.map { b in
        let s = String(b, radix: 16)
        return s.count == 1 ? "0" + s : s
    }.joined()
}
