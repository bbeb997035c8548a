// The vault at boot: a key sealed in the TPM opens an encrypted area of
// PERSIST (docs/vault.md). The key is sealed once, at enrolment, under a
// policy that trusts whatever the release key approves plus this firmware's
// PCR 0/7; each bundle carries the release key's approval of its slots' PCR
// 8/9 and security version, so an updated slot unseals at once, offline.
//
//   /persist/vault/
//     sealed.blob          the sealed key (TPM2B_PUBLIC + TPM2B_PRIVATE; useless off this TPM)
//     approvals-IMGB.json  the approvals of the bundle installed into IMGB (written before the
//                          slot is marked updating, by the update engine)
//     area.img             the encrypted area (dm-crypt over a loop device)
//     data/                where it is mounted; secrets/ holds `vault put` values
//
//   which approvals: approvals-<booted slot>.json when it is for the running version, else
//   /config/vault.json (the factory image's). Both are checked against the slot's trust
//   anchors in software before the TPM is asked.
//
// Nothing here ever formats an existing area or replaces a sealed key: a
// vault that does not open stays locked and says why, with its data intact.

#if canImport(Glibc)
import Glibc
#endif
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import OutpostBundle
import OutpostPlatform
import OutpostEarlyBoot
import OutpostTrust
import Synchronization

/// Where the vault's files are, and the TPM it uses.
public struct VaultPaths: Sendable {
    public var directory = "/persist/vault"
    public var configApprovals = "/config/" + VaultApprovals.configFileName
    public var trustDirectory = UpdatePaths().trustDirectory
    public var tpmDevice = "/dev/tpmrm0"
    public var tcti: String? = nil
    /// A new area: a quarter of PERSIST's free space, at most this (VaultVolume's default, 4 GiB).
    public var maximumAreaBytes: UInt64 = VaultVolume.defaultSize
    /// The device-mapper name (tests use their own).
    public var mappingName = VaultVolume.defaultMappingName

    public init() {}

    var sealedKey: String { directory + "/sealed.blob" }
    var enrolment: String { directory + "/enrolment.json" }
    var area: String { directory + "/area.img" }
    public var mountPoint: String { directory + "/data" }
    func approvals(slot: String) -> String { directory + "/approvals-\(slot).json" }
}

/// What the vault is doing, for the console and `status`.
public enum VaultState: Sendable, Equatable {
    /// Open: the area is mounted.
    case unlocked(detail: String)
    /// The device has a TPM but the vault does not open; the data stays where it is.
    case locked(reason: String)
    /// No vault on this device (no TPM, or no PERSIST), and why.
    case unavailable(reason: String)

    public var line: String {
        switch self {
        case .unlocked(let detail): return "vault: unlocked: \(detail)"
        case .locked(let reason): return "vault: locked: \(reason)"
        case .unavailable(let reason): return "vault: unavailable: \(reason)"
        }
    }
}

/// The device's vault, opened once at boot; PID 1 closes it before PERSIST is unmounted.
public final class VaultService: Sendable {
    public let paths: VaultPaths
    public let slot: String
    public let version: String
    private let inner = Mutex<(state: VaultState, volume: VaultVolume?, floor: UInt64?)>(
        (.unavailable(reason: "not opened"), nil, nil))

    public var state: VaultState { inner.withLock { $0.state } }
    /// The floor the TPM held when it was last read (nil: unknown).
    public var floor: UInt64? { inner.withLock { $0.floor } }

    init(paths: VaultPaths, slot: String, version: String) {
        self.paths = paths
        self.slot = slot
        self.version = version
    }

    /// Opens (or, the first time, creates) the vault for the booted slot and
    /// says how it went on the console. Never throws: a vault that cannot
    /// open leaves the device running, with its state saying why.
    public static func open(slot: String, version: String, paths: VaultPaths = VaultPaths()) -> VaultService {
        let service = VaultService(paths: paths, slot: slot, version: version)
        let state = service.bringUp()
        service.inner.withLock { $0.state = state }
        Console.line(state.line)
        return service
    }

    func bringUp() -> VaultState {
        guard access(paths.tpmDevice, F_OK) == 0 || paths.tcti != nil else {
            return .unavailable(reason: "no TPM (\(paths.tpmDevice) missing); nothing is sealed")
        }
        do {
            let (key, approvals, enrolled) = try obtainKey()
            let floor = try TPMVault(tcti: tcti).readFloor()
            let volume = try VaultVolume.open(key: key, configuration: VaultVolume.Configuration(
                backingFile: paths.area, mountPoint: paths.mountPoint, mappingName: paths.mappingName,
                sizeBytes: paths.maximumAreaBytes, quarterOfFreeSpace: true))
            inner.withLock { $0.volume = volume; $0.floor = floor }
            let what = enrolled ? "enrolled and opened" : "opened"
            return .unlocked(detail: "\(what) for \(slot) version \(version) (security version \(approvals.securityVersion), "
                             + "floor \(floor.map(String.init) ?? "unset"), release key \(approvals.keyID)) at \(paths.mountPoint)")
        } catch {
            // TPMVault's and VaultVolume's lines start with "vault: " already.
            let text = "\(error)"
            return .locked(reason: text.hasPrefix("vault: ") ? String(text.dropFirst("vault: ".count)) : text)
        }
    }

    var tcti: String { paths.tcti ?? "device:" + paths.tpmDevice }

    /// The area's key: unsealed with the booted slot's approvals, or, on the
    /// first boot with a TPM, made and sealed (enrolment).
    func obtainKey() throws -> (key: [UInt8], approvals: VaultApprovals, enrolled: Bool) {
        let approvals = try chooseApprovals()
        let tpm: TPMVault
        do { tpm = try TPMVault(tcti: tcti) } catch { throw VaultServiceError.tpm("\(error)") }
        if access(paths.sealedKey, F_OK) == 0 { return (try unseal(tpm, approvals), approvals, false) }
        guard access(paths.area, F_OK) != 0 else {
            throw VaultServiceError.sealedKeyMissing(area: paths.area, sealedKey: paths.sealedKey)
        }
        return (try enrol(tpm, approvals), approvals, true)
    }

    /// The approvals for the booted slot and the running version, checked in software.
    func chooseApprovals() throws -> VaultApprovals {
        let trust = try TrustStore.load(directory: paths.trustDirectory)
        var notes: [String] = []
        for path in [paths.approvals(slot: slot), paths.configApprovals] where access(path, F_OK) == 0 {
            do {
                let approvals = try VaultApprovals.load(path: path)
                guard approvals.osVersion == version else {
                    notes.append("\(path) is for version \(approvals.osVersion)")
                    continue
                }
                guard approvals.slots[slot] != nil else {
                    notes.append("\(path) approves no \(slot)")
                    continue
                }
                try approvals.check(trust: trust)
                return approvals
            } catch {
                notes.append("\(error)")
            }
        }
        throw VaultServiceError.noApprovals(slot: slot, version: version,
                                     why: notes.isEmpty ? "no approvals on PERSIST or CONFIG" : notes.joined(separator: "; "))
    }

    /// First boot with a TPM: the floor, a fresh key sealed to the release
    /// key and this firmware, proven to unseal before anything depends on it.
    func enrol(_ tpm: TPMVault, _ approvals: VaultApprovals) throws -> [UInt8] {
        let pcrs = try tpm.readPCRs([0, 7])
        guard let pcr0 = pcrs[0], let pcr7 = pcrs[7] else { throw VaultServiceError.enrolment("the TPM returned no PCR 0/7") }
        guard pcr0.contains(where: { $0 != 0 }) else {
            throw VaultServiceError.enrolment("PCR 0 is all zero (the firmware measured nothing); sealing to it would trust any firmware")
        }
        var floor = try tpm.readFloor() ?? tpm.defineFloor()
        guard floor <= approvals.securityVersion else {
            throw VaultServiceError.enrolment("the TPM's floor counter is at \(floor), above this image's security version "
                                       + "\(approvals.securityVersion) (a TPM counter starts at the highest value it ever held)")
        }
        floor = try tpm.raiseFloor(to: approvals.securityVersion)
        var key = [UInt8](repeating: 0, count: VaultVolume.keyLength)
        var generator = SystemRandomNumberGenerator()
        for i in key.indices { key[i] = UInt8.random(in: 0...255, using: &generator) }
        let policy = try VaultPolicy.sealing(releaseKey: TPMVerificationKey(try approvals.releaseKey()), pcr0: pcr0, pcr7: pcr7)
        let blob = try tpm.seal(secret: key, authPolicy: policy)
        // Proven before the blob is kept and the area made: a key that would not unseal is never used.
        let back = try unseal(tpm, approvals, blob: blob)
        guard back == key else { throw VaultServiceError.enrolment("the sealed key came back different") }
        try? Sys.mkdir(paths.directory, 0o700)
        try blob.save(to: paths.sealedKey)
        // What it was sealed to, for explaining a later refusal (the TPM only says "policy fail").
        let record = Enrolment(keyID: approvals.keyID, pcr0: hex(pcr0), pcr7: hex(pcr7), version: version)
        try? FileIO.writeAtomically(Array(try JSONDocument.indented(record).utf8), to: paths.enrolment, mode: 0o644)
        return key
    }

    /// Written at enrolment beside the sealed key; only ever read to explain.
    struct Enrolment: Codable {
        var keyID: String
        var pcr0: String
        var pcr7: String
        var version: String
    }

    /// The TPM refuses Unseal alike for another release key and for moved PCR
    /// 0/7; the enrolment record tells which.
    func explainUnsealFailure(_ tpm: TPMVault, _ approvals: VaultApprovals) -> String? {
        guard let bytes = try? FileIO.read(paths.enrolment),
              let record = try? JSONDecoder().decode(Enrolment.self, from: Data(bytes)) else { return nil }
        if record.keyID != approvals.keyID {
            return "the vault was sealed to release key \(record.keyID) at enrolment (version \(record.version)); "
                + "these approvals are signed by key \(approvals.keyID)"
        }
        guard let now = try? tpm.readPCRs([0, 7]) else { return nil }
        let moved = [(0, record.pcr0), (7, record.pcr7)].filter { hex(now[$0.0] ?? []) != $0.1 }
        guard !moved.isEmpty else { return nil }
        return "the firmware changed since enrolment: " + moved.map { "PCR \($0.0): enrolled \($0.1.prefix(16))…, now \(hex(now[$0.0] ?? []).prefix(16))…" }
            .joined(separator: "; ")
    }

    func unseal(_ tpm: TPMVault, _ approvals: VaultApprovals, blob: SealedBlob? = nil) throws -> [UInt8] {
        guard let sealed = try blob ?? SealedBlob.load(from: paths.sealedKey) else {
            throw VaultServiceError.enrolment("\(paths.sealedKey) is gone")
        }
        let (approved, signature) = try approvals.approval(forSlot: slot)
        do {
            return try tpm.unseal(sealed, approved: approved, signature: signature,
                                  releaseKey: TPMVerificationKey(try approvals.releaseKey()),
                                  securityVersion: approvals.securityVersion)
        } catch let error as TPMError {
            guard "\(error)".contains("Unseal:"), let why = explainUnsealFailure(tpm, approvals) else { throw error }
            throw VaultServiceError.unsealRefused(why)
        }
    }

    /// Tests only: the state as if bringUp had mounted the area at `paths.mountPoint`, which
    /// is then a plain directory on the host (dm-crypt needs a kernel this host may lack).
    func assumeOpened(detail: String) {
        inner.withLock { $0.state = .unlocked(detail: detail) }
    }

    /// After a commit: the TPM floor follows the committed security version,
    /// so no older slot's approvals unseal from now on.
    public func raiseFloor(to securityVersion: UInt64) {
        guard case .unlocked = state else { return }
        do {
            let tpm = try TPMVault(tcti: tcti)
            let before = try tpm.readFloor()
            let now = try tpm.raiseFloor(to: securityVersion)
            inner.withLock { $0.floor = now }
            if before != now { Console.line("vault: security floor raised from \(before.map(String.init) ?? "unset") to \(now)") }
        } catch {
            Console.line("warning: vault: cannot raise the security floor to \(securityVersion): \(error)")
        }
    }

    /// Unmounts the area and removes its mappings (before PERSIST is unmounted).
    public func close() {
        let volume = inner.withLock { s -> VaultVolume? in
            let v = s.volume
            s.volume = nil
            return v
        }
        guard let volume else { return }
        do { try volume.close() } catch { Console.line("warning: vault: \(error)") }
    }
}

/// Why the vault did not open, in one line (VaultError covers the area itself).
public enum VaultServiceError: Error, CustomStringConvertible {
    case noApprovals(slot: String, version: String, why: String)
    case enrolment(String)
    case tpm(String)
    case sealedKeyMissing(area: String, sealedKey: String)
    case unsealRefused(String)

    public var description: String {
        switch self {
        case .noApprovals(let slot, let version, let why):
            return "no approved policy for \(slot) version \(version): \(why)"
        case .enrolment(let why):
            return "enrolment refused: \(why)"
        case .tpm(let why):
            return "the TPM does not answer: \(why)"
        case .unsealRefused(let why):
            return "Unseal refused: \(why)"
        case .sealedKeyMissing(let area, let sealedKey):
            return "\(area) exists but \(sealedKey) is missing; the area is kept, not formatted"
        }
    }
}
