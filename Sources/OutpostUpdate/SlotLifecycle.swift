import OutpostDisk

// After the reboot: test, commit, or notice the fallback. GRUB has already
// decremented the new slot's tries, so it is `inprogress`; if it fails or the
// device reboots during the test window it is no longer a boot candidate and
// the committed slot boots again by itself. The agent only records that and
// tidies the table. Each step is idempotent, so a power cut between the GPT
// write and the state write is finished by the next `afterBoot`.

/// What the agent must do after booting.
public enum BootStatus: Equatable, Sendable {
    /// The booted slot is on trial: run the test window, then `commit` or `recordTestFailure` + reboot.
    case testing(slot: String, version: String?)
    /// A new slot failed and the old one booted again; it was recorded and the failed slot retired.
    case fellBack(failedSlot: String, version: String?, reason: String)
    /// An installed update waits for the reboot.
    case rebootPending(slot: String)
    /// The booted slot is committed and nothing is in flight.
    case idle(slot: String)
    /// The booted slot is not a boot candidate (GRUB's rescue path): wait for an update.
    case rescue(slot: String)
}

/// The slots and the bookkeeping, for `update status`.
public struct UpdateStatus: Sendable {
    public var booted: String
    public var slots: [(name: String, number: Int, state: String)]
    public var state: DeviceUpdateState
}

extension UpdateEngine {
    /// Runs once per boot, before any test: detects a fallback (booted slot
    /// active, the other inprogress), records it and retires the failed slot,
    /// and finishes a commit that a power cut interrupted.
    public func afterBoot(booted: Int) throws(UpdateError) -> BootStatus {
        var state = try store.load()
        let table = try io("reading the partition table", offset: 0) { try GPTDisk.read(device) }
        let pair = try SlotPair(table.gpt, booted: booted)
        let mine = pair.booted.slotAttributes
        let other = pair.other.slotAttributes
        let name = pair.booted.name, otherName = pair.other.name

        if mine.state == .inprogress {
            let version = state.pending?.slot == name ? state.pending?.version : nil
            return .testing(slot: name, version: version)
        }
        guard mine.successful else { return .rescue(slot: name) }

        if other.state == .inprogress {
            let version = state.pending?.slot == otherName ? state.pending?.version : nil
            let reason = (state.testFailure?.slot == otherName ? state.testFailure?.reason : nil)
                ?? "\(otherName) did not commit: it failed to boot, or the device restarted during its test window"
            // State first: if the power goes before the table is fixed, this runs again and dedupes.
            if let version, state.failure(of: version) == nil {
                state.failed.append(.init(version: version, slot: otherName, reason: reason))
            }
            state.pending = nil
            state.testFailure = nil
            state.lastResult = .init(outcome: .fellBack, version: version, reason: reason)
            try store.save(state)
            var gpt = table.gpt
            try setState(&gpt, pair.otherNumber, .unused)
            try io("retiring slot \(otherName)", offset: 0) { try GPTDisk.write(gpt, to: device, backupLBA: table.backupLBA) }
            return .fellBack(failedSlot: otherName, version: version, reason: reason)
        }
        if other.state == .updating { return .rebootPending(slot: otherName) }
        if let p = state.pending, p.slot == otherName {
            // An install was cut short (power loss, restart) before it marked the slot.
            state.pending = nil
            state.lastResult = .init(outcome: .failed, version: p.version, reason: "the install was interrupted before it completed")
            try store.save(state)
        }
        if let p = state.pending, p.slot == name {
            try finishCommit(&state, pending: p)
        }
        return .idle(slot: name)
    }

    /// The test window passed: booted → active, other → unused (one table
    /// write, backup copy first), then raise the security floor.
    public func commit(booted: Int) throws(UpdateError) {
        var state = try store.load()
        let table = try io("reading the partition table", offset: 0) { try GPTDisk.read(device) }
        let pair = try SlotPair(table.gpt, booted: booted)
        let s = pair.booted.slotAttributes.state
        guard s == .inprogress || s == .active else {
            throw .notInProgress(slot: pair.booted.name, state: s?.rawValue ?? "0x\(String(pair.booted.slotAttributes.raw16, radix: 16))")
        }
        if s == .inprogress {
            var gpt = table.gpt
            try setState(&gpt, pair.bootedNumber, .active)
            try setState(&gpt, pair.otherNumber, .unused)
            try io("committing \(pair.booted.name)", offset: 0) { try GPTDisk.write(gpt, to: device, backupLBA: table.backupLBA) }
        }
        if let p = state.pending, p.slot == pair.booted.name {
            try finishCommit(&state, pending: p)
        }
    }

    /// The agent's test window failed: remember why, so the fallback boot can report it. The caller reboots.
    public func recordTestFailure(booted: Int, reason: String) throws(UpdateError) {
        var state = try store.load()
        let table = try io("reading the partition table", offset: 0) { try GPTDisk.read(device) }
        let pair = try SlotPair(table.gpt, booted: booted)
        let version = state.pending?.slot == pair.booted.name ? state.pending?.version ?? "unknown" : "unknown"
        state.testFailure = .init(version: version, slot: pair.booted.name, reason: reason)
        try store.save(state)
    }

    /// The slots as the GPT says and the stored bookkeeping.
    public func status(booted: Int) throws(UpdateError) -> UpdateStatus {
        let state = try store.load()
        let table = try io("reading the partition table", offset: 0) { try GPTDisk.read(device) }
        let pair = try SlotPair(table.gpt, booted: booted)
        let slots = [(pair.bootedNumber, pair.booted), (pair.otherNumber, pair.other)].sorted { $0.0 < $1.0 }.map {
            (name: $0.1.name, number: $0.0, state: $0.1.slotAttributes.state?.rawValue ?? "other")
        }
        return UpdateStatus(booted: pair.booted.name, slots: slots, state: state)
    }

    /// The partition number of the slot whose PARTUUID the kernel command line names.
    public func slotNumber(partUUID: String) throws(UpdateError) -> Int {
        let table = try io("reading the partition table", offset: 0) { try GPTDisk.read(device) }
        guard let n = table.gpt.partitions.first(where: {
            $0.partition.isSlot && $0.partition.uniqueGUID.description.uppercased() == partUUID.uppercased()
        })?.number else { throw .slotLayout("no slot partition has PARTUUID \(partUUID)") }
        return n
    }

    private func finishCommit(_ state: inout DeviceUpdateState, pending p: DeviceUpdateState.Pending) throws(UpdateError) {
        state.securityFloor = max(state.securityFloor, p.securityVersion)
        state.committedVersion = p.version
        state.pending = nil
        state.testFailure = nil
        state.lastResult = .init(outcome: .committed, version: p.version, reason: nil)
        try store.save(state)
    }
}
