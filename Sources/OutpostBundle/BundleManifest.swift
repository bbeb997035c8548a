#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

// The signed manifest: what the payload is and where it may be installed.
// Serialised as JSON with sorted keys, so the same inputs give the same
// bytes; the signature covers the bytes as stored, and they are decoded only
// after a trust anchor's signature over them has verified.

/// What a bundle promises about its payload.
public struct BundleManifest: Codable, Equatable, Sendable {
    /// The dm-verity parameters of the payload's root (docs/boot.md).
    public struct Verity: Codable, Equatable, Sendable {
        public var rootHash: String
        public var salt: String
        public var rootOffset: UInt64
        public var rootDataBlocks: UInt64
        public var hashOffset: UInt64
        public init(rootHash: String, salt: String, rootOffset: UInt64, rootDataBlocks: UInt64, hashOffset: UInt64) {
            self.rootHash = rootHash
            self.salt = salt
            self.rootOffset = rootOffset
            self.rootDataBlocks = rootDataBlocks
            self.hashOffset = hashOffset
        }
    }

    /// PCR 8 and 9 (SHA-256 bank) predicted after GRUB boots the payload from one slot.
    public struct SlotPCRs: Codable, Equatable, Sendable {
        public var pcr8: String
        public var pcr9: String
        public init(pcr8: String, pcr9: String) {
            self.pcr8 = pcr8
            self.pcr9 = pcr9
        }
    }

    public var formatVersion: Int
    public var osVersion: String
    /// Monotonic: a device refuses bundles below the highest it committed.
    public var securityVersion: UInt64
    public var board: String
    public var arch: String
    public var payloadSize: UInt64
    public var payloadSHA256: String
    public var verity: Verity
    /// By slot partition name (IMGA, IMGB).
    public var pcrs: [String: SlotPCRs]
    /// The release key's approved vault policies for the slots in `pcrs`
    /// (docs/vault.md). Optional, so manifests made before the vault still
    /// decode (and encode to the same bytes); covered by the bundle signature.
    public var vault: VaultApprovals?

    public init(osVersion: String, securityVersion: UInt64, board: String, arch: String, payloadSize: UInt64,
                payloadSHA256: String, verity: Verity, pcrs: [String: SlotPCRs], vault: VaultApprovals? = nil) {
        formatVersion = Int(BundleFormat.version)
        self.osVersion = osVersion
        self.securityVersion = securityVersion
        self.board = board
        self.arch = arch
        self.payloadSize = payloadSize
        self.payloadSHA256 = payloadSHA256
        self.verity = verity
        self.pcrs = pcrs
        self.vault = vault
    }

    /// The canonical bytes: JSON, sorted keys, no insignificant whitespace.
    public func encoded() throws(BundleError) -> [UInt8] {
        try validate()
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        do { return Array(try enc.encode(self)) } catch {
            throw .manifestInvalid(field: "(manifest)", reason: "cannot encode: \(error)")
        }
    }

    /// Decodes and range-checks a manifest.
    public static func decode(_ bytes: [UInt8]) throws(BundleError) -> BundleManifest {
        var m: BundleManifest
        do { m = try JSONDecoder().decode(BundleManifest.self, from: Data(bytes)) } catch let e as DecodingError {
            throw .manifestInvalid(field: e.fieldPath, reason: "does not decode (\(e.shortReason))")
        } catch {
            throw .manifestInvalid(field: "(manifest)", reason: "does not decode (\(error))")
        }
        m.vault?.source = "in the manifest"
        try m.validate()
        return m
    }

    /// The checks a decoded manifest must pass beyond its JSON shape.
    public func validate() throws(BundleError) {
        guard formatVersion == Int(BundleFormat.version) else {
            throw .manifestInvalid(field: "formatVersion", reason: "\(formatVersion) is not \(BundleFormat.version)")
        }
        for (field, value) in [("osVersion", osVersion), ("board", board), ("arch", arch)] {
            guard !value.isEmpty, value.utf8.count <= 128, value.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
                throw .manifestInvalid(field: field, reason: "must be 1-128 printable ASCII characters without spaces")
            }
        }
        guard payloadSize > 0 else { throw .manifestInvalid(field: "payloadSize", reason: "is zero") }
        for (field, value, length) in [("payloadSHA256", payloadSHA256, 64), ("verity.rootHash", verity.rootHash, 64)] {
            guard value.utf8.count == length, value == value.lowercased(), bytes(fromHex: value) != nil else {
                throw .manifestInvalid(field: field, reason: "must be \(length) lower-case hex digits")
            }
        }
        guard verity.salt.utf8.count <= 512, bytes(fromHex: verity.salt) != nil else {
            throw .manifestInvalid(field: "verity.salt", reason: "must be hex")
        }
        guard verity.hashOffset <= payloadSize, verity.rootOffset <= verity.hashOffset else {
            throw .manifestInvalid(field: "verity.hashOffset", reason: "offsets lie outside the payload")
        }
        if let vault { try validate(vault) }
    }

    /// The vault approvals must be for this bundle: its versions and exactly the PCRs it predicts.
    func validate(_ vault: VaultApprovals) throws(BundleError) {
        try vault.validate()
        guard vault.securityVersion == securityVersion else {
            throw .manifestInvalid(field: "vault.securityVersion", reason: "\(vault.securityVersion) is not the manifest's \(securityVersion)")
        }
        guard vault.osVersion == osVersion else {
            throw .manifestInvalid(field: "vault.osVersion", reason: "'\(vault.osVersion)' is not the manifest's '\(osVersion)'")
        }
        for (name, slot) in vault.slots.sorted(by: { $0.key < $1.key }) {
            guard let p = pcrs[name] else {
                throw .manifestInvalid(field: "vault.slots.\(name)", reason: "the manifest predicts no PCRs for this slot")
            }
            guard p.pcr8.lowercased() == slot.pcr8, p.pcr9.lowercased() == slot.pcr9 else {
                throw .manifestInvalid(field: "vault.slots.\(name).\(p.pcr8.lowercased() == slot.pcr8 ? "pcr9" : "pcr8")",
                                       reason: "differs from the manifest's pcrs.\(name)")
            }
        }
    }
}

extension DecodingError {
    /// The dotted path of the field a decoding error is about.
    var fieldPath: String {
        let path: [CodingKey]
        switch self {
        case let .typeMismatch(_, c), let .valueNotFound(_, c), let .dataCorrupted(c): path = c.codingPath
        case let .keyNotFound(k, c): path = c.codingPath + [k]
        @unknown default: path = []
        }
        let s = path.map { $0.intValue.map(String.init) ?? $0.stringValue }.joined(separator: ".")
        return s.isEmpty ? "(manifest)" : s
    }

    var shortReason: String {
        switch self {
        case let .typeMismatch(_, c), let .valueNotFound(_, c), let .dataCorrupted(c), let .keyNotFound(_, c):
            return c.debugDescription
        @unknown default: return "\(self)"
        }
    }
}
