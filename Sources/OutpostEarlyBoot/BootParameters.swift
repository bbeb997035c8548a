// The outpost.* parameters stage-2 GRUB writes on the kernel command line
// (docs/boot.md). Parsing is pure so that unit tests cover every malformed
// input without booting anything.

/// Why the kernel command line cannot drive early boot.
public enum BootParameterError: Error, Equatable, CustomStringConvertible {
    case missing(parameter: String)
    case malformed(parameter: String, value: String, reason: String)

    public var description: String {
        switch self {
        case .missing(let parameter):
            return "kernel command line has no \(parameter)="
        case .malformed(let parameter, let value, let reason):
            return "kernel command line \(parameter)=\(value) is invalid: \(reason)"
        }
    }
}

/// Where the verified root lives inside the slot partition and how to check it.
public struct BootParameters: Equatable, Sendable {
    /// PARTUUID of the slot GRUB chose, upper-case.
    public var slotPartUUID: String
    /// Byte offset R of the root squashfs inside the slot (4 KiB aligned).
    public var rootOffset: UInt64
    /// Number D of 4 KiB data blocks of the root squashfs.
    public var rootBlocks: UInt64
    /// Byte offset H of the dm-verity hash tree inside the slot (4 KiB aligned).
    public var hashOffset: UInt64
    /// Lower-case hex SHA-256 root hash.
    public var rootHash: String
    /// Lower-case hex salt ("-" for none, as dm-verity spells it).
    public var salt: String
    /// Set when stage 1 found no bootable slot; the value is the reason.
    public var rescueReason: String?

    public static let blockSize: UInt64 = 4096

    /// Parses the content of /proc/cmdline. Unrelated parameters are ignored.
    public init(commandLine: String) throws(BootParameterError) {
        var values: [String: String] = [:]
        for word in commandLine.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" }) {
            guard word.hasPrefix("outpost.") else { continue }
            let parts = word.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            values[String(parts[0])] = parts.count > 1 ? String(parts[1]) : ""
        }

        func required(_ key: String) throws(BootParameterError) -> String {
            guard let value = values[key], !value.isEmpty else { throw .missing(parameter: key) }
            return value
        }
        func number(_ key: String, _ text: Substring, _ whole: String) throws(BootParameterError) -> UInt64 {
            guard let value = UInt64(text) else {
                throw .malformed(parameter: key, value: whole, reason: "'\(text)' is not a decimal number")
            }
            return value
        }
        func aligned(_ key: String, _ value: UInt64, _ whole: String) throws(BootParameterError) {
            if value % Self.blockSize != 0 {
                throw .malformed(parameter: key, value: whole, reason: "offset \(value) is not 4096-byte aligned")
            }
        }

        let slot = try required("outpost.slot")
        guard isGUID(slot) else {
            throw .malformed(parameter: "outpost.slot", value: slot, reason: "not a GUID")
        }
        slotPartUUID = slot.uppercased()

        let root = try required("outpost.root")
        let rootParts = root.split(separator: ":", omittingEmptySubsequences: false)
        guard rootParts.count == 2 else {
            throw .malformed(parameter: "outpost.root", value: root, reason: "expected R:D")
        }
        rootOffset = try number("outpost.root", rootParts[0], root)
        rootBlocks = try number("outpost.root", rootParts[1], root)
        try aligned("outpost.root", rootOffset, root)
        guard rootBlocks > 0 else {
            throw .malformed(parameter: "outpost.root", value: root, reason: "root has zero blocks")
        }

        let verity = try required("outpost.verity")
        let verityParts = verity.split(separator: ":", omittingEmptySubsequences: false)
        guard verityParts.count == 3 else {
            throw .malformed(parameter: "outpost.verity", value: verity, reason: "expected H:ROOTHASH:SALT")
        }
        hashOffset = try number("outpost.verity", verityParts[0], verity)
        try aligned("outpost.verity", hashOffset, verity)
        let (end, overflow) = rootOffset.addingReportingOverflow(rootBlocks &* Self.blockSize)
        guard !overflow, rootBlocks <= UInt64.max / Self.blockSize, hashOffset >= end else {
            throw .malformed(parameter: "outpost.verity", value: verity,
                             reason: "hash tree offset overlaps the root [\(rootOffset), R+D*4096)")
        }
        rootHash = verityParts[1].lowercased()
        guard rootHash.count == 64, isHex(rootHash) else {
            throw .malformed(parameter: "outpost.verity", value: verity, reason: "root hash is not 64 hex digits")
        }
        let saltText = verityParts[2].lowercased()
        guard saltText == "-" || (!saltText.isEmpty && saltText.count % 2 == 0 && saltText.count <= 512 && isHex(saltText)) else {
            throw .malformed(parameter: "outpost.verity", value: verity, reason: "salt is not hex")
        }
        salt = saltText

        if let reason = values["outpost.rescue"] {
            rescueReason = reason.isEmpty ? "unspecified" : reason
        } else {
            rescueReason = nil
        }
    }
}

func isHex<S: StringProtocol>(_ text: S) -> Bool {
    text.utf8.allSatisfy { (48...57).contains($0) || (97...102).contains($0) || (65...70).contains($0) }
}

/// True for the 8-4-4-4-12 textual form of a GUID.
func isGUID(_ text: String) -> Bool {
    let groups = text.split(separator: "-", omittingEmptySubsequences: false)
    return groups.map(\.count) == [8, 4, 4, 4, 12] && groups.allSatisfy { isHex($0) }
}
