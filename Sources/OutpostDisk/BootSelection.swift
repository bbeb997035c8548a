// The boot-selection rule of ARCHITECTURE.md. The project's GRUB module
// implements the same rule in C; QEMU tests check that both agree.

/// What the boot loader does with a given table.
public enum BootDecision: Equatable, Sendable {
    /// Boot partition `number`. If `decrementTries`, tries is decremented and
    /// the GPT written (backup, then primary) before booting.
    case boot(number: Int, decrementTries: Bool)
    /// No slot qualified: boot the lowest-numbered slot in rescue mode
    /// without touching the GPT (see docs/boot.md).
    case rescue(number: Int)
    /// The disk has no slot partitions at all.
    case none

    public var number: Int? {
        switch self {
        case let .boot(n, _), let .rescue(n): return n
        case .none: return nil
        }
    }
}

/// The boot selection, as a pure function and as its effect on a table.
public enum BootSelection {
    /// Among slot partitions, candidates have tries > 0 or successful; the
    /// highest priority wins and a tie goes to the lower partition number.
    public static func decide(_ gpt: GPT) -> BootDecision {
        let slots = gpt.partitions.filter { $0.partition.isSlot }
        guard let lowest = slots.first else { return .none }
        var best: (number: Int, attrs: SlotAttributes)?
        for (n, p) in slots {
            let a = p.slotAttributes
            guard a.isCandidate else { continue }
            if best == nil || a.priority > best?.attrs.priority ?? 0 { best = (n, a) }
        }
        guard let winner = best else { return .rescue(number: lowest.number) }
        return .boot(number: winner.number, decrementTries: winner.attrs.tries > 0)
    }

    /// The table after the boot loader acted on `decision`.
    public static func apply(_ decision: BootDecision, to gpt: GPT) -> GPT {
        guard case let .boot(n, true) = decision else { return gpt }
        var out = gpt
        var a = out.entries[n - 1].slotAttributes
        a.tries -= 1
        out.entries[n - 1].attributes = a.applied(to: out.entries[n - 1].attributes)
        return out
    }

    /// Runs the selection against a device, writing the decrement exactly as
    /// the GRUB module does. Used by the agent's tests and the power-cut simulator.
    public static func bootOnce(_ device: BlockDevice) throws -> BootDecision {
        let found = try GPTDisk.read(device)
        let decision = decide(found.gpt)
        if case .boot(_, true) = decision {
            try GPTDisk.write(apply(decision, to: found.gpt), to: device, backupLBA: found.backupLBA)
        }
        return decision
    }
}

extension GPT {
    /// Sets the slot named `name` to `state`, keeping the other attribute bits.
    public mutating func setSlot(_ name: String, to state: SlotState) throws(GPTError) {
        guard let n = number(named: name), entries[n - 1].isSlot else {
            throw .layout("no slot partition named \(name)")
        }
        entries[n - 1].attributes = state.attributes.applied(to: entries[n - 1].attributes)
    }
}
