#if canImport(Glibc)
import Glibc
#endif
import OutpostBundle
import OutpostDisk
import OutpostPlatform
import Synchronization

// The device update engine over a BlockDevice. Pure Swift and no clock but
// the monotonic one, so the agent, the tests and the power-cut simulator all
// run this same code. The order of operations is the safety argument:
//
//   1. read the GPT; refuse if the booted slot is not committed
//   2. verify the bundle: signature, key, revocation, floor, board, arch,
//      slot size, then the payload's SHA-256 in a full read pass
//      ------------------------- nothing written before this line ----------
//   3. the target slot → unused (if it was not), so a torn payload is never bootable
//   4. stream the payload to the target, hashing in the same pass; fsync
//   5. drop cached pages, read the slot back, compare the digest
//   6. target → updating (GPTDisk.write: backup copy first, then primary)
//
// A power cut anywhere before 6 completes leaves the old table (target
// unused); after it, the target holds a verified payload.

/// What the device is, for the bundle's compatibility check.
public struct DeviceIdentity: Sendable, Equatable {
    public var board: String
    public var arch: String
    public init(board: String, arch: String) {
        self.board = board
        self.arch = arch
    }
}

/// Knobs of an install.
public struct InstallOptions: Sendable {
    /// Bytes per read and per device write; a multiple of the sector size.
    public var chunkSize = 1 << 20
    /// Install even a version that failed its test before.
    public var force = false
    /// Skip the full payload pass before writing (the write pass still
    /// hashes and the slot is never marked bootable on a mismatch). Only for
    /// sources that cannot be read twice.
    public var skipPayloadPrepass = false
    public init() {}
}

public enum InstallPhase: String, Sendable {
    case verifying, writing, readingBack
}

/// What an install did, and how long each pass took.
public struct InstallReport: Sendable {
    public var version: String
    public var securityVersion: UInt64
    public var slot: String
    public var slotNumber: Int
    public var signedBy: KeyID
    public var payloadSize: UInt64
    public var verifyTime: Duration
    public var writeTime: Duration
    public var readbackTime: Duration
}

/// A device whose read cache can be dropped, so a read-back reaches the medium.
public protocol CacheDroppingDevice {
    func dropCache(offset: UInt64, length: UInt64) throws
}

/// Installs bundles to the inactive slot, and commits or falls back after the reboot.
public final class UpdateEngine {
    public let device: BlockDevice
    public let store: UpdateStateStore
    public let trust: TrustStore
    public let identity: DeviceIdentity
    /// Where a bundle's vault approvals are kept for the slot it was written to
    /// (`approvals-IMGB.json`), so that slot's first boot unseals the vault
    /// offline. nil: not kept (hosts, tests without a vault).
    public let vaultDirectory: String?

    public init(device: BlockDevice, store: UpdateStateStore, trust: TrustStore, identity: DeviceIdentity,
                vaultDirectory: String? = nil) {
        self.device = device
        self.store = store
        self.trust = trust
        self.identity = identity
        self.vaultDirectory = vaultDirectory
    }

    /// Verifies `source` completely, then writes it to the slot that is not
    /// `booted` (a partition number) and marks that slot `updating`. The
    /// caller reboots afterwards.
    @discardableResult
    public func install(_ source: PayloadSource, booted: Int, options: InstallOptions = InstallOptions(),
                        progress: ((InstallPhase, UInt64, UInt64) -> Void)? = nil) throws(UpdateError) -> InstallReport {
        let clock = ContinuousClock()
        let t0 = clock.now
        var state = try store.load()
        let table = try io("reading the partition table", offset: 0) { try GPTDisk.read(device) }
        let pair = try SlotPair(table.gpt, booted: booted)
        if pair.booted.slotAttributes.state == .inprogress { throw .uncommittedBoot(slot: pair.booted.name) }
        let ss = UInt64(device.sectorSize)
        let slotSize = (pair.other.lastLBA - pair.other.firstLBA + 1) * ss

        let bundle: VerifiedBundle
        do {
            bundle = try BundleVerifier.verify(source, trust: trust, policy: BundlePolicy(
                deviceFloor: state.securityFloor, board: identity.board, arch: identity.arch, slotSize: slotSize))
            if !options.force, let f = state.failure(of: bundle.manifest.osVersion) {
                throw UpdateError.previouslyFailed(version: f.version, reason: f.reason)
            }
            if !options.skipPayloadPrepass {
                try BundleVerifier.verifyPayload(source, bundle, chunkSize: options.chunkSize) { progress?(.verifying, $0, $1) }
            }
        } catch let e as BundleError {
            try? recordRefusal(&state, reason: e.description)
            throw .bundle(e)
        } catch let e as UpdateError {
            try? recordRefusal(&state, reason: e.description)
            throw e
        } catch {
            throw .deviceOther(phase: "verifying", offset: 0, reason: "\(error)")
        }
        let m = bundle.manifest
        let t1 = clock.now

        // ---- first write ----
        if pair.other.slotAttributes.state != .unused {
            var gpt = table.gpt
            try setState(&gpt, pair.otherNumber, .unused)
            try io("retiring slot \(pair.other.name)", offset: 0) { try GPTDisk.write(gpt, to: device, backupLBA: table.backupLBA) }
        }
        state.pending = .init(version: m.osVersion, securityVersion: m.securityVersion, slot: pair.other.name,
                              payloadSHA256: m.payloadSHA256)
        state.lastResult = .init(outcome: .installing, version: m.osVersion, reason: nil)
        try store.save(state)

        do {
            try writePayload(source, bundle, to: pair.other, chunkSize: options.chunkSize, progress: progress)
            let t2 = clock.now
            try readBack(bundle, slot: pair.other, chunkSize: options.chunkSize, progress: progress)
            let t3 = clock.now
            // Before the slot is marked: a slot that boots always finds its own approvals (or none).
            try keepVaultApprovals(m.vault, slot: pair.other.name)
            // Re-read: the table on disk is the one to change, not our older copy.
            let now = try io("reading the partition table", offset: 0) { try GPTDisk.read(device) }
            var gpt = now.gpt
            try setState(&gpt, pair.otherNumber, .updating)
            try io("marking \(pair.other.name) updating", offset: 0) { try GPTDisk.write(gpt, to: device, backupLBA: now.backupLBA) }
            state.lastResult = .init(outcome: .installed, version: m.osVersion, reason: "reboot to test \(pair.other.name)")
            try store.save(state)
            return InstallReport(version: m.osVersion, securityVersion: m.securityVersion, slot: pair.other.name,
                                 slotNumber: pair.otherNumber, signedBy: bundle.signedBy, payloadSize: m.payloadSize,
                                 verifyTime: t1 - t0, writeTime: t2 - t1, readbackTime: t3 - t2)
        } catch {
            state.pending = nil
            state.lastResult = .init(outcome: .failed, version: m.osVersion, reason: error.description)
            try? store.save(state)
            throw error
        }
    }

    /// Streams the payload to the slot and hashes the same bytes; a source
    /// that changed since the verify pass fails here, before the slot is marked.
    private func writePayload(_ source: PayloadSource, _ bundle: VerifiedBundle, to slot: GPTPartition, chunkSize: Int,
                              progress: ((InstallPhase, UInt64, UInt64) -> Void)?) throws(UpdateError) {
        let ss = device.sectorSize
        let chunk = max(ss, chunkSize / ss * ss)
        let total = bundle.manifest.payloadSize
        let digest = DigestBox(PayloadDigest(bundle.manifest))
        var done: UInt64 = 0
        let device = self.device
        let writer = try PipelineStage(name: "update-write") { (lba, bytes) throws(UpdateError) in
            try io("writing slot \(slot.name)", offset: lba * UInt64(ss)) { try device.writeBulk(lba: lba, bytes: bytes) }
        }
        let hasher: PipelineStage
        do {
            hasher = try PipelineStage(name: "update-hash") { (lba, bytes) throws(UpdateError) in
                let useful = min(UInt64(bytes.count), total - (lba - slot.firstLBA) * UInt64(ss))
                digest.value.withLock { $0.update(useful == UInt64(bytes.count) ? bytes : Array(bytes[..<Int(useful)])) }
                try writer.submit(lba: lba, bytes: bytes)
            }
        } catch {
            try writer.finish()
            throw error
        }
        func stop() throws(UpdateError) {
            // The hash stage feeds the writer: stop it first. A write failure takes precedence.
            let hashFailure: UpdateError?
            do { try hasher.finish(); hashFailure = nil } catch { hashFailure = error }
            try writer.finish()
            if let hashFailure { throw hashFailure }
        }
        do {
            while done < total {
                let n = Int(min(UInt64(chunk), total - done))
                var bytes: [UInt8]
                do { bytes = try source.read(offset: bundle.payloadOffset + done, count: n) } catch let e as BundleError {
                    throw UpdateError.bundle(e)
                } catch { throw UpdateError.bundle(.source(offset: bundle.payloadOffset + done, reason: "\(error)")) }
                guard bytes.count == n else {
                    throw UpdateError.bundle(.source(offset: bundle.payloadOffset + done, reason: "short read: \(bytes.count) of \(n) bytes"))
                }
                if bytes.count % ss != 0 { bytes += repeatElement(0, count: ss - bytes.count % ss) }
                try hasher.submit(lba: slot.firstLBA + done / UInt64(ss), bytes: bytes)
                done += UInt64(n)
                progress?(.writing, done, total)
            }
        } catch {
            try stop()
            throw error as? UpdateError ?? .deviceOther(phase: "writing slot \(slot.name)", offset: done, reason: "\(error)")
        }
        try stop()
        let digestValue = digest.value.withLock { $0 }
        do { try digestValue.finish() } catch { throw .bundle(error) }
        try io("flushing slot \(slot.name)", offset: slot.firstLBA * UInt64(ss)) { try device.flush() }
    }

    /// Reads the written bytes back from the medium and compares their digest.
    private func readBack(_ bundle: VerifiedBundle, slot: GPTPartition, chunkSize: Int,
                          progress: ((InstallPhase, UInt64, UInt64) -> Void)?) throws(UpdateError) {
        let ss = device.sectorSize
        let total = bundle.manifest.payloadSize
        let start = slot.firstLBA * UInt64(ss)
        if let d = device as? CacheDroppingDevice {
            try io("dropping cached pages of \(slot.name)", offset: start) { try d.dropCache(offset: start, length: total) }
        }
        let chunkSectors = max(1, chunkSize / ss)
        var digest = PayloadDigest(bundle.manifest)
        var done: UInt64 = 0
        while done < total {
            let sectors = Int(min(UInt64(chunkSectors), (total - done + UInt64(ss) - 1) / UInt64(ss)))
            let lba = slot.firstLBA + done / UInt64(ss)
            let bytes = try io("reading back slot \(slot.name)", offset: lba * UInt64(ss)) { try device.read(lba: lba, count: sectors) }
            let useful = Int(min(UInt64(bytes.count), total - done))
            digest.update(useful == bytes.count ? bytes : Array(bytes[..<useful]))
            done += UInt64(useful)
            progress?(.readingBack, done, total)
        }
        do { try digest.finish() } catch {
            if case let .payloadDigestMismatch(e, a) = error { throw .readbackMismatch(slot: slot.name, expected: e, actual: a) }
            throw .bundle(error)
        }
    }

    private func recordRefusal(_ state: inout DeviceUpdateState, reason: String) throws(UpdateError) {
        state.lastResult = .init(outcome: .refused, version: nil, reason: reason)
        try store.save(state)
    }

    func setState(_ gpt: inout GPT, _ number: Int, _ s: SlotState) throws(UpdateError) {
        let a = s.attributes.applied(to: gpt.entries[number - 1].attributes)
        gpt.entries[number - 1].attributes = a
    }
}

/// The booted slot and the other one; the layout has exactly two slot partitions.
struct SlotPair {
    let bootedNumber: Int
    let otherNumber: Int
    let booted: GPTPartition
    let other: GPTPartition

    init(_ gpt: GPT, booted: Int) throws(UpdateError) {
        let slots = gpt.partitions.filter { $0.partition.isSlot }
        guard slots.count == 2 else { throw .slotLayout("expected 2 slot partitions, found \(slots.count)") }
        guard let b = slots.first(where: { $0.number == booted }), let o = slots.first(where: { $0.number != booted }) else {
            throw .slotLayout("partition \(booted) is not a slot partition")
        }
        bootedNumber = b.number
        otherNumber = o.number
        self.booted = b.partition
        other = o.partition
    }
}

/// The running payload digest: updated on the hash stage's thread, read by
/// the engine after the pipeline is joined.
final class DigestBox: Sendable {
    let value: Mutex<PayloadDigest>
    init(_ value: PayloadDigest) { self.value = Mutex(value) }
}

extension UpdateEngine {
    /// Writes `approvals` (verified with the bundle) as the slot's, or removes
    /// an older bundle's file when this one carries none.
    func keepVaultApprovals(_ approvals: VaultApprovals?, slot: String) throws(UpdateError) {
        guard let vaultDirectory else { return }
        let path = vaultDirectory + "/approvals-\(slot).json"
        do throws(SystemError) {
            guard let approvals else {
                if access(path, F_OK) == 0 { try systemCall("unlink", path) { unlink(path) } }
                return
            }
            let bytes: [UInt8]
            do { bytes = try approvals.encoded() } catch {
                throw SystemError(call: "encoding the approvals (\(error))", object: path, code: EINVAL)
            }
            if access(vaultDirectory, F_OK) != 0 { try systemCall("mkdir", vaultDirectory) { mkdir(vaultDirectory, 0o700) } }
            try FileIO.writeAtomically(bytes, to: path, mode: 0o644)
        } catch {
            throw .deviceOther(phase: "keeping the vault approvals", offset: 0, reason: "\(error)")
        }
    }
}
