// Slot attributes: bits 48-63 of a slot partition's GPT attribute field, in
// the ChromeOS layout so `cgpt` reads and writes them.
//
//   63        57  56  55   52  51   48  47                 0
//   +-----------+---+-------+-------+--------------------+
//   | reserved  | S | tries | prio  | (other attributes) |
//   +-----------+---+-------+-------+--------------------+

/// The priority/tries/successful triple of one slot.
public struct SlotAttributes: Equatable, Hashable, Sendable, Codable {
    public var priority: UInt8
    public var tries: UInt8
    public var successful: Bool

    public init(priority: UInt8, tries: UInt8, successful: Bool) {
        self.priority = priority & 0xF
        self.tries = tries & 0xF
        self.successful = successful
    }

    /// Decodes the slot bits of a full 64-bit attribute value.
    public init(attributes: UInt64) {
        self.init(priority: UInt8((attributes >> 48) & 0xF), tries: UInt8((attributes >> 52) & 0xF),
                  successful: (attributes >> 56) & 1 == 1)
    }

    /// The 16-bit value `cgpt add -A` takes (bits 48-63 shifted down).
    public var raw16: UInt16 {
        UInt16(priority) | UInt16(tries) << 4 | (successful ? 1 << 8 : 0)
    }

    /// Replaces bits 48-56 of `attributes`, keeping every other bit.
    public func applied(to attributes: UInt64) -> UInt64 {
        let mask: UInt64 = 0x1FF << 48
        return (attributes & ~mask) | (UInt64(raw16) << 48)
    }

    /// Bootable by the rule in ARCHITECTURE.md.
    public var isCandidate: Bool { tries > 0 || successful }

    /// The named state these attributes are, or nil for any other combination.
    public var state: SlotState? { SlotState.allCases.first { $0.attributes == self } }
}

/// The four named slot states of the update flow.
public enum SlotState: String, CaseIterable, Sendable, Codable {
    case active, updating, inprogress, unused

    public var attributes: SlotAttributes {
        switch self {
        case .active: return SlotAttributes(priority: 2, tries: 0, successful: true)
        case .updating: return SlotAttributes(priority: 3, tries: 1, successful: false)
        case .inprogress: return SlotAttributes(priority: 3, tries: 0, successful: false)
        case .unused: return SlotAttributes(priority: 0, tries: 0, successful: false)
        }
    }

    /// The raw 16-bit value for `cgpt add -A`.
    public var raw16: UInt16 { attributes.raw16 }
}

extension GPTPartition {
    public var isSlot: Bool { typeGUID == PartitionType.slot }
    public var slotAttributes: SlotAttributes { SlotAttributes(attributes: attributes) }
}
