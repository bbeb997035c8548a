// The release key's approvals for the vault, one per slot, as the builder
// writes them into a bundle's manifest (`vault`) and onto a factory image's
// CONFIG (`vault.json`). JSON, sorted keys:
//
//   {
//     "floorHandle": 25165872,                       VaultPolicy.floorHandle (0x01800030)
//     "formatVersion": 1,
//     "keyID": "0123456789abcdef",                   KeyID of publicKey (the trust store's name)
//     "osVersion": "1.2.0",
//     "publicKey": "-----BEGIN PUBLIC KEY-----\n…",   the release key, PEM (SubjectPublicKeyInfo)
//     "securityVersion": 3,
//     "slots": {
//       "IMGA": { "approvedPolicy": 64 hex,           VaultPolicy.approved(slot, securityVersion, floorIndex)
//                 "pcr8": 64 hex, "pcr9": 64 hex,     the builder's predictions for the slot
//                 "signature": 128 hex },            r ‖ s, ECDSA P-256 over approvedPolicy ‖ "outpost-vault-v1"
//       "IMGB": { … }
//     }
//   }
//
// Every reader recomputes approvedPolicy from pcr8, pcr9 and securityVersion
// and refuses a file where they differ, so a stored digest is never trusted
// on its own; `check(trust:)` verifies each signature in software, so a broken
// file is refused with one line before the TPM is ever asked.

import Crypto
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The release key's signed approved policies for every slot of one OS version.
public struct VaultApprovals: Codable, Sendable {
    /// One slot's predicted PCRs, its approved policy and the release key's signature over it.
    public struct Slot: Codable, Equatable, Sendable {
        public var pcr8: String
        public var pcr9: String
        /// The policy digest, lower-case hex.
        public var approvedPolicy: String
        /// ECDSA P-256 r ‖ s, lower-case hex (128 digits).
        public var signature: String

        public init(pcr8: String, pcr9: String, approvedPolicy: String, signature: String) {
            self.pcr8 = pcr8
            self.pcr9 = pcr9
            self.approvedPolicy = approvedPolicy
            self.signature = signature
        }
    }

    /// The file format this code writes and reads.
    public static let currentFormatVersion = 1
    /// The name of the file on CONFIG (`/config/vault.json` on the device).
    public static let configFileName = "vault.json"

    public var formatVersion: Int
    public var securityVersion: UInt64
    public var osVersion: String
    /// The release key's key ID, as the trust store names it.
    public var keyID: String
    /// The release key's public key, PEM, as in the trust directory.
    public var publicKey: String
    /// The NV index of the security-version floor the policies check.
    public var floorHandle: UInt32
    /// By slot partition name (IMGA, IMGB).
    public var slots: [String: Slot]

    /// Where these approvals came from, for error lines (not encoded).
    public var source: String = ""

    enum CodingKeys: String, CodingKey {
        case formatVersion, securityVersion, osVersion, keyID, publicKey, floorHandle, slots
    }

    public init(securityVersion: UInt64, osVersion: String, keyID: String, publicKey: String,
                floorHandle: UInt32 = VaultPolicy.floorHandle, slots: [String: Slot]) {
        formatVersion = Self.currentFormatVersion
        self.securityVersion = securityVersion
        self.osVersion = osVersion
        self.keyID = keyID
        self.publicKey = publicKey
        self.floorHandle = floorHandle
        self.slots = slots
    }

    /// Signs the approved policy of every slot in `pcrs` with the release key
    /// (build host); deterministic (RFC 6979), so the same inputs give the same file.
    public static func sign(pcrs: [String: BundleManifest.SlotPCRs], securityVersion: UInt64, osVersion: String,
                            key: SigningKey) throws(BundleError) -> VaultApprovals {
        guard !pcrs.isEmpty else { throw .vaultInvalid(source: "", field: "slots", reason: "no slot PCR predictions to sign") }
        var slots: [String: Slot] = [:]
        for (name, p) in pcrs.sorted(by: { $0.key < $1.key }) {
            let field = "slots.\(name)"
            do {
                let approved = try ApprovedPolicy(policy: try VaultPolicy.approved(
                    slot: p, securityVersion: securityVersion, floorIndex: try VaultPolicy.floorIndex))
                let signature = try approved.signDeterministically(with: key)
                slots[name] = Slot(pcr8: p.pcr8.lowercased(), pcr9: p.pcr9.lowercased(),
                                   approvedPolicy: approved.policy.description, signature: hex(signature.r + signature.s))
            } catch {
                throw .vaultInvalid(source: "", field: field, reason: error.description)
            }
        }
        let approvals = VaultApprovals(securityVersion: securityVersion, osVersion: osVersion, keyID: key.keyID.description,
                                       publicKey: key.publicPEM, slots: slots)
        try approvals.validate()
        return approvals
    }

    /// The release key, parsed; its key ID must be the one stored.
    public func releaseKey() throws(BundleError) -> P256.Signing.PublicKey {
        let key: P256.Signing.PublicKey
        do { key = try P256.Signing.PublicKey(pemRepresentation: publicKey) } catch {
            throw .vaultInvalid(source: source, field: "publicKey", reason: "not a P-256 public key in PEM")
        }
        guard KeyID(publicKey: key).description == keyID else {
            throw .vaultInvalid(source: source, field: "keyID", reason: "'\(keyID)' is not the ID of publicKey (\(KeyID(publicKey: key)))")
        }
        return key
    }

    /// One slot's approved policy, recomputed from its PCRs and the security
    /// version, and its signature; refuses a stored policy that differs.
    public func approval(forSlot name: String) throws(BundleError) -> (ApprovedPolicy, ApprovedPolicySignature) {
        guard let slot = slots[name] else {
            throw .vaultInvalid(source: source, field: "slots.\(name)", reason: "no approval for this slot (have \(slots.keys.sorted().joined(separator: ", ")))")
        }
        let field = "slots.\(name)"
        guard floorHandle == VaultPolicy.floorHandle else {
            throw .vaultInvalid(source: source, field: "floorHandle", reason: "0x\(String(floorHandle, radix: 16)) is not the vault floor 0x\(String(VaultPolicy.floorHandle, radix: 16))")
        }
        for (sub, value) in [("pcr8", slot.pcr8), ("pcr9", slot.pcr9)] {
            guard isLowerHex(value, digits: 64) else { throw .vaultInvalid(source: source, field: "\(field).\(sub)", reason: "must be 64 lower-case hex digits") }
        }
        guard isLowerHex(slot.approvedPolicy, digits: 64) else {
            throw .vaultInvalid(source: source, field: "\(field).approvedPolicy", reason: "must be 64 lower-case hex digits")
        }
        guard isLowerHex(slot.signature, digits: 128), let raw = bytes(fromHex: slot.signature) else {
            throw .vaultInvalid(source: source, field: "\(field).signature", reason: "must be 128 lower-case hex digits (r ‖ s)")
        }
        let approved: ApprovedPolicy
        let signature: ApprovedPolicySignature
        do {
            approved = try ApprovedPolicy(policy: try VaultPolicy.approved(
                slot: BundleManifest.SlotPCRs(pcr8: slot.pcr8, pcr9: slot.pcr9), securityVersion: securityVersion,
                floorIndex: try VaultPolicy.floorIndex))
            signature = try ApprovedPolicySignature(raw: raw)
        } catch {
            throw .vaultInvalid(source: source, field: field, reason: error.description)
        }
        guard approved.policy.description == slot.approvedPolicy else {
            throw .vaultInvalid(source: source, field: "\(field).approvedPolicy",
                                reason: "\(slot.approvedPolicy) is not the policy of pcr8, pcr9 and security version \(securityVersion) (\(approved.policy))")
        }
        return (approved, signature)
    }

    /// Whether the slot's signature verifies with the key the approvals name
    /// (`check(trust:)` also requires that key to be a trust anchor).
    public func signatureVerifies(forSlot name: String) throws(BundleError) -> Bool {
        let (approved, signature) = try approval(forSlot: name)
        return approved.isSigned(by: try releaseKey(), signature)
    }

    /// Refuses approvals whose key is not an unrevoked trust anchor or whose
    /// signatures do not verify: what TPM2_VerifySignature would decide, said in one line first.
    public func check(trust: TrustStore) throws(BundleError) {
        try validate()
        let key = try releaseKey()
        let id = KeyID(publicKey: key)
        guard let anchor = trust.anchors[id], anchor.rawRepresentation == key.rawRepresentation else {
            throw .vaultInvalid(source: source, field: "publicKey", reason: "key \(id) is not a trust anchor")
        }
        guard !trust.revoked.contains(id) else {
            throw .vaultInvalid(source: source, field: "publicKey", reason: "key \(id) is revoked")
        }
        for name in slots.keys.sorted() {
            let (approved, signature) = try approval(forSlot: name)
            guard approved.isSigned(by: anchor, signature) else {
                throw .vaultInvalid(source: source, field: "slots.\(name).signature", reason: "does not verify with key \(id)")
            }
        }
    }

    /// The checks every decoded file must pass: its version, its key and every slot's recomputed policy.
    public func validate() throws(BundleError) {
        guard formatVersion == Self.currentFormatVersion else {
            throw .vaultInvalid(source: source, field: "formatVersion", reason: "\(formatVersion) is not \(Self.currentFormatVersion)")
        }
        guard !osVersion.isEmpty, osVersion.utf8.count <= 128, osVersion.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
            throw .vaultInvalid(source: source, field: "osVersion", reason: "must be 1-128 printable ASCII characters without spaces")
        }
        guard !slots.isEmpty else { throw .vaultInvalid(source: source, field: "slots", reason: "is empty") }
        _ = try releaseKey()
        for name in slots.keys.sorted() { _ = try approval(forSlot: name) }
    }

    /// The file's bytes: JSON, sorted keys, indented, with a final newline.
    public func encoded() throws(BundleError) -> [UInt8] {
        try validate()
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        do { return Array(try enc.encode(self)) + [0x0A] } catch {
            throw .vaultInvalid(source: source, field: "(file)", reason: "cannot encode: \(error)")
        }
    }

    /// Decodes and validates approvals; `source` names them in errors (a path).
    public static func decode(_ data: [UInt8], source: String) throws(BundleError) -> VaultApprovals {
        var approvals: VaultApprovals
        do { approvals = try JSONDecoder().decode(VaultApprovals.self, from: Data(data)) } catch let e as DecodingError {
            let field = e.fieldPath == "(manifest)" ? "(file)" : e.fieldPath
            throw .vaultInvalid(source: source, field: field, reason: "does not decode (\(e.shortReason))")
        } catch {
            throw .vaultInvalid(source: source, field: "(file)", reason: "does not decode (\(error))")
        }
        approvals.source = source
        try approvals.validate()
        return approvals
    }

    /// Reads and validates a vault.json.
    public static func load(path: String) throws(BundleError) -> VaultApprovals {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw .vaultInvalid(source: path, field: "(file)", reason: "cannot read the file")
        }
        return try decode(Array(data), source: path)
    }
}

extension VaultApprovals: Equatable {
    /// Equal content; where the approvals were read from does not matter.
    public static func == (a: VaultApprovals, b: VaultApprovals) -> Bool {
        a.formatVersion == b.formatVersion && a.securityVersion == b.securityVersion && a.osVersion == b.osVersion
            && a.keyID == b.keyID && a.publicKey == b.publicKey && a.floorHandle == b.floorHandle && a.slots == b.slots
    }
}

private func isLowerHex(_ s: String, digits: Int) -> Bool {
    s.utf8.count == digits && s.utf8.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
}
