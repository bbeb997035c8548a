import Foundation
import OutpostBundle
import OutpostTestSupport
import OutpostTrust
import Testing
@testable import OutpostAgent

/// The agent's vault service against swtpm: which approvals it takes, enrolment, unsealing
/// with another slot's or another key's approvals, the floor. The area itself (dm-crypt)
/// needs device-mapper, which this host's kernel lacks; VaultVolumeTests and the QEMU
/// test cover it. Each test runs its own swtpm.
@Suite("Vault service: approvals, enrolment, unseal (swtpm)", .serialized)
struct VaultServiceTests {
    /// A device's files: trust anchors (the release key and `others`), CONFIG's
    /// vault.json, PERSIST's vault directory, and a swtpm whose firmware PCRs hold values.
    final class Device {
        let tmp: TemporaryDirectory
        let tpm: SoftwareTPM
        let release = SigningKey.generate()
        var paths = VaultPaths()

        init(others: [SigningKey] = [], firmware: Bool = true) throws {
            tmp = try TemporaryDirectory("vault-service")
            tpm = try SoftwareTPM(stateDirectory: tmp.path + "/tpm")
            if firmware { for pcr in [0, 7] { try extend(pcr, "firmware \(pcr)") } }
            for pcr in [8, 9] { try extend(pcr, "slot A \(pcr)") }
            let trust = tmp.path + "/trust"
            try FileManager.default.createDirectory(atPath: trust, withIntermediateDirectories: true)
            for (n, key) in ([release] + others).enumerated() {
                try key.publicPEM.write(toFile: trust + "/key\(n).pem", atomically: true, encoding: .utf8)
            }
            paths.directory = tmp.path + "/persist/vault"
            paths.configApprovals = tmp.path + "/config/vault.json"
            paths.trustDirectory = trust
            paths.tcti = tpm.tcti
            for dir in ["/config", "/persist"] {   // mounted on a device; the vault makes its own directory
                try FileManager.default.createDirectory(atPath: tmp.path + dir, withIntermediateDirectories: true)
            }
        }

        func extend(_ pcr: Int, _ text: String) throws {
            let digest = hex((Array(text.utf8) + [UInt8](repeating: 0x5A, count: 32)).prefix(32))
            let run = try runCommand(["tpm2_pcrextend", "-T", tpm.tcti, "\(pcr):sha256=\(digest)"], timeout: .seconds(20))
            guard run.status == 0 else { throw TestSupportError.failed(command: "tpm2_pcrextend", status: run.status, output: run.output) }
        }

        /// Approvals for the TPM's current PCR 8/9 as `slot`, signed by `key`.
        func approvals(slot: String = "IMGA", version: String = "1.0.0", securityVersion: UInt64 = 1,
                       key: SigningKey? = nil) throws -> VaultApprovals {
            let pcrs = try TPMVault(tcti: tpm.tcti).readPCRs([8, 9])
            let slotPCRs = BundleManifest.SlotPCRs(pcr8: hex(pcrs[8] ?? []), pcr9: hex(pcrs[9] ?? []))
            return try VaultApprovals.sign(pcrs: [slot: slotPCRs], securityVersion: securityVersion, osVersion: version,
                                           key: key ?? release)
        }

        func write(_ approvals: VaultApprovals, to path: String) throws {
            try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent,
                                                    withIntermediateDirectories: true)
            try Data(try approvals.encoded()).write(to: URL(fileURLWithPath: path))
        }

        func service(slot: String = "IMGA", version: String = "1.0.0") -> VaultService {
            VaultService(paths: paths, slot: slot, version: version)
        }
    }

    static func reason(_ body: () throws -> Any) -> String {
        do { _ = try body(); return "no error" } catch { return "\(error)" }
    }

    @Test func enrolsOnceAndUnsealsTheSameKeyWithTheSlotsApprovals() throws {
        let d = try Device()
        try d.write(try d.approvals(), to: d.paths.configApprovals)
        let first = try d.service().obtainKey()
        #expect(first.enrolled && first.key.count == VaultVolume.keyLength)
        #expect(FileManager.default.fileExists(atPath: d.paths.directory + "/sealed.blob"))
        #expect(try TPMVault(tcti: d.tpm.tcti).readFloor() == 1)
        let again = try d.service().obtainKey()
        #expect(!again.enrolled && again.key == first.key)
        // Other firmware (PCR 7, the Secure Boot state, moved): refused, and said which PCR.
        try d.extend(7, "secure boot off")
        let moved = Self.reason { try d.service().obtainKey() }
        #expect(moved.hasPrefix("Unseal refused: the firmware changed since enrolment: PCR 7: enrolled "), "\(moved)")
    }

    @Test func theUpdatedSlotUnsealsWithItsKeptApprovalsAndTheConfigOnesAreForAnotherVersion() throws {
        let d = try Device()
        try d.write(try d.approvals(), to: d.paths.configApprovals)
        let key = try d.service().obtainKey().key
        // "IMGB" boots: its GRUB measured other PCR 8/9, and its bundle's approvals were kept on PERSIST.
        try d.extend(9, "slot B kernel")
        try d.write(try d.approvals(slot: "IMGB", version: "2.0.0", securityVersion: 2), to: d.paths.directory + "/approvals-IMGB.json")
        let b = try d.service(slot: "IMGB", version: "2.0.0").obtainKey()
        #expect(!b.enrolled && b.key == key)
        // Without them, nothing on PERSIST or CONFIG approves IMGB 2.0.0: said in one line.
        try FileManager.default.removeItem(atPath: d.paths.directory + "/approvals-IMGB.json")
        let none = Self.reason { try d.service(slot: "IMGB", version: "2.0.0").obtainKey() }
        #expect(none.hasPrefix("no approved policy for IMGB version 2.0.0: ") && none.contains("is for version 1.0.0"), "\(none)")
    }

    @Test func approvalsByAnotherTrustedKeyDoNotUnseal() throws {
        let other = SigningKey.generate()
        let d = try Device(others: [other])
        try d.write(try d.approvals(), to: d.paths.configApprovals)
        _ = try d.service().obtainKey()
        // Another release key the slot trusts (bundles signed by it install) signs approvals
        // for the very same PCRs: the TPM still refuses, the vault was sealed to the first key.
        try d.write(try d.approvals(key: other), to: d.paths.configApprovals)
        let refused = Self.reason { try d.service().obtainKey() }
        #expect(refused == "Unseal refused: the vault was sealed to release key \(d.release.keyID) at enrolment "
                + "(version 1.0.0); these approvals are signed by key \(other.keyID)", "\(refused)")
        // A key the slot does not trust is refused in software, before the TPM.
        let stranger = SigningKey.generate()
        try d.write(try d.approvals(key: stranger), to: d.paths.configApprovals)
        let untrusted = Self.reason { try d.service().obtainKey() }
        #expect(untrusted.contains("is not a trust anchor"), "\(untrusted)")
    }

    @Test func afterTheFloorRisesTheOlderSecurityVersionNoLongerUnseals() throws {
        let d = try Device()
        try d.write(try d.approvals(), to: d.paths.configApprovals)
        let key = try d.service().obtainKey().key
        #expect(try TPMVault(tcti: d.tpm.tcti).raiseFloor(to: 2) == 2)
        let refused = Self.reason { try d.service().obtainKey() }
        #expect(refused.hasPrefix("vault: PolicyNV: the security floor 2 is above this slot's security version 1 (rollback refused)"), "\(refused)")
        try d.write(try d.approvals(securityVersion: 2), to: d.paths.configApprovals)
        #expect(try d.service().obtainKey().key == key)
    }

    @Test func enrolmentRefusesFirmwareThatMeasuredNothingAndAFloorAboveTheImage() throws {
        let blank = try Device(firmware: false)
        try blank.write(try blank.approvals(), to: blank.paths.configApprovals)
        let zero = Self.reason { try blank.service().obtainKey() }
        #expect(zero.hasPrefix("enrolment refused: PCR 0 is all zero"), "\(zero)")
        #expect(!FileManager.default.fileExists(atPath: blank.paths.directory + "/sealed.blob"))

        let d = try Device()
        _ = try TPMVault(tcti: d.tpm.tcti).defineFloor()
        _ = try TPMVault(tcti: d.tpm.tcti).raiseFloor(to: 3)
        try d.write(try d.approvals(securityVersion: 2), to: d.paths.configApprovals)
        let above = Self.reason { try d.service().obtainKey() }
        #expect(above.hasPrefix("enrolment refused: the TPM's floor counter is at 3, above this image's security version 2"), "\(above)")
        #expect(!FileManager.default.fileExists(atPath: d.paths.directory + "/sealed.blob"))
    }

    @Test func anAreaWithoutItsSealedKeyIsKeptAndNoTPMMeansNoVault() throws {
        let d = try Device()
        try d.write(try d.approvals(), to: d.paths.configApprovals)
        try FileManager.default.createDirectory(atPath: d.paths.directory, withIntermediateDirectories: true)
        try Data("existing data".utf8).write(to: URL(fileURLWithPath: d.paths.directory + "/area.img"))
        let kept = Self.reason { try d.service().obtainKey() }
        #expect(kept.contains("area.img exists but") && kept.contains("sealed.blob is missing; the area is kept, not formatted"), "\(kept)")
        #expect(try String(contentsOfFile: d.paths.directory + "/area.img", encoding: .utf8) == "existing data")

        var paths = d.paths
        paths.tcti = nil
        paths.tpmDevice = d.tmp.path + "/no-tpmrm0"
        let state = VaultService(paths: paths, slot: "IMGA", version: "1.0.0").bringUp()
        #expect(state == .unavailable(reason: "no TPM (\(paths.tpmDevice) missing); nothing is sealed"))
    }

    @Test func secretNamesAndTheConsoleValue() {
        #expect(VaultService.validName("wifi.psk") && VaultService.validName("A_b-9"))
        #expect(!VaultService.validName("") && !VaultService.validName(".hidden") && !VaultService.validName("a/b")
                && !VaultService.validName(String(repeating: "x", count: 65)))
        #expect(VaultCommands.valueAfter(name: "greeting", in: "  vault put greeting hello  from v1") == "hello  from v1")
    }
}
