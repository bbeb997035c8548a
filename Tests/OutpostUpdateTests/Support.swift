import Crypto
import OutpostBundle
import OutpostDisk
import OutpostTestSupport
import OutpostUpdate

/// A disk that loses power during its k-th write (0-based): that write lands
/// not at all or, when tearing, only as a prefix that ends mid-sector; every
/// later operation fails as well.
final class PowerCutDevice: BlockDevice {
    let inner: MemoryBlockDevice
    let cutAt: Int?
    let tear: Bool
    private(set) var writes = 0
    private(set) var cut = false
    var sectorSize: Int { inner.sectorSize }
    var sectorCount: UInt64 { inner.sectorCount }

    init(_ inner: MemoryBlockDevice, cutAt: Int?, tear: Bool) {
        self.inner = inner
        self.cutAt = cutAt
        self.tear = tear
    }

    func read(lba: UInt64, count: Int) throws -> [UInt8] {
        if cut { throw BlockDeviceError.powerCut(afterWrites: writes) }
        return try inner.read(lba: lba, count: count)
    }

    func write(lba: UInt64, bytes: [UInt8]) throws {
        if cut { throw BlockDeviceError.powerCut(afterWrites: writes) }
        if writes == cutAt {
            cut = true
            if tear {
                // Whole sectors before the tear land; the torn sector keeps its old tail.
                let landed = min(bytes.count - 1, (bytes.count / sectorSize / 2) * sectorSize + sectorSize / 2 + writes % 97)
                var merged = try inner.read(lba: lba, count: bytes.count / sectorSize)
                merged.replaceSubrange(0..<landed, with: bytes[0..<landed])
                try inner.write(lba: lba, bytes: merged)
            }
            throw BlockDeviceError.powerCut(afterWrites: writes)
        }
        writes += 1
        try inner.write(lba: lba, bytes: bytes)
    }

    func flush() throws {
        if cut { throw BlockDeviceError.powerCut(afterWrites: writes) }
    }
}

/// Counts writes, so a test can prove a refused install wrote nothing.
final class CountingDevice: BlockDevice {
    let inner: BlockDevice
    private(set) var writes = 0
    var sectorSize: Int { inner.sectorSize }
    var sectorCount: UInt64 { inner.sectorCount }
    init(_ inner: BlockDevice) { self.inner = inner }
    func read(lba: UInt64, count: Int) throws -> [UInt8] { try inner.read(lba: lba, count: count) }
    func write(lba: UInt64, bytes: [UInt8]) throws {
        writes += 1
        try inner.write(lba: lba, bytes: bytes)
    }
    func flush() throws { try inner.flush() }
}

/// Bytes that are the same on every run.
func randomBytes(_ n: Int, seed: UInt64) -> [UInt8] {
    var g = SplitMix64(seed: seed)
    return g.bytes(n)
}

func sha(_ b: [UInt8]) -> String { hex(Array(SHA256.hash(data: b))) }

/// A small two-slot disk: IMGA (partition 1, active, holding `old`) and IMGB
/// (partition 2, unused), 600 sectors (300 KiB) each.
struct Fixture {
    static let slotSectors: UInt64 = 600
    static let a: (first: UInt64, number: Int) = (40, 1)
    static let b: (first: UInt64, number: Int) = (40 + slotSectors, 2)
    static let identity = DeviceIdentity(board: "generic-efi", arch: "x86_64")

    let key = SigningKey.generate()
    let old = randomBytes(200 * 1024, seed: 1)
    let new = randomBytes(250 * 1024 + 100, seed: 2)
    var trust: TrustStore { TrustStore(anchors: [key.key.publicKey]) }

    func disk() throws -> MemoryBlockDevice {
        let dev = MemoryBlockDevice(sectorCount: 1400)
        var gpt = try GPT.empty(sectorCount: dev.sectorCount, diskGUID: GUID(diskBytes: Array(repeating: 7, count: 16)))
        gpt.entries[0] = GPTPartition(typeGUID: PartitionType.slot, uniqueGUID: GUID(diskBytes: Array(repeating: 1, count: 16)),
                                      firstLBA: Fixture.a.first, lastLBA: Fixture.a.first + Fixture.slotSectors - 1,
                                      attributes: SlotState.active.attributes.applied(to: 0), name: "IMGA")
        gpt.entries[1] = GPTPartition(typeGUID: PartitionType.slot, uniqueGUID: GUID(diskBytes: Array(repeating: 2, count: 16)),
                                      firstLBA: Fixture.b.first, lastLBA: Fixture.b.first + Fixture.slotSectors - 1,
                                      attributes: SlotState.unused.attributes.applied(to: 0), name: "IMGB")
        try GPTDisk.write(gpt, to: dev, writeMBR: true)
        try dev.write(lba: Fixture.a.first, bytes: old + Array(repeating: 0, count: (512 - old.count % 512) % 512))
        return dev
    }

    func bundle(version: String = "2.0.0", security: UInt64 = 3, payload: [UInt8]? = nil, keys: [SigningKey]? = nil) throws -> [UInt8] {
        let p = payload ?? new
        let m = BundleManifest(osVersion: version, securityVersion: security, board: "generic-efi", arch: "x86_64",
                               payloadSize: UInt64(p.count), payloadSHA256: sha(p),
                               verity: .init(rootHash: String(repeating: "cd", count: 32), salt: "00", rootOffset: 0,
                                             rootDataBlocks: 1, hashOffset: UInt64(p.count)),
                               pcrs: [:])
        return try BundleWriter.prologue(manifest: m, keys: keys ?? [key]) + p
    }

    func engine(_ dev: BlockDevice, _ store: UpdateStateStore, trust: TrustStore? = nil) -> UpdateEngine {
        UpdateEngine(device: dev, store: store, trust: trust ?? self.trust, identity: Fixture.identity)
    }
}

func slotBytes(_ dev: BlockDevice, first: UInt64, count: Int) throws -> [UInt8] {
    Array(try dev.read(lba: first, count: (count + 511) / 512)[..<count])
}
