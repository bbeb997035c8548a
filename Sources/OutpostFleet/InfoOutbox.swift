// Info that must reach the controller: one pending message per object, on
// PERSIST, so a reboot or a controller outage loses nothing, and a newer state
// of the same object replaces the older one instead of queueing behind it.
//
//   PERSIST/fleet/outbox/KEY.pb    the newest undelivered payload for KEY
//
// A file exists exactly while its payload is undelivered. Retries back off
// exponentially with jitter; a new payload for a key is due at once.

import OutpostPlatform
import Synchronization

public final class InfoOutbox: Sendable {
    public struct Item: Sendable, Equatable {
        public var key: String
        public var payload: [UInt8]
        /// Changes with every `put`; `delivered` with an older one is ignored.
        public var generation: UInt64
    }

    private struct Entry {
        var payload: [UInt8]
        var generation: UInt64
        var attempts = 0
        var due: MonotonicClock.Instant
    }

    private struct State {
        var entries: [String: Entry] = [:]
        var nextGeneration: UInt64 = 1
        var random = SystemRandomNumberGenerator()
    }

    private let directory: String
    private let retryMinimum: Duration
    private let retryMaximum: Duration
    private let state = Mutex(State())

    /// Opens the outbox and loads what an earlier run left undelivered; all of it is due now.
    public init(directory: String, retryMinimum: Duration = .seconds(5), retryMaximum: Duration = .seconds(900)) throws(FleetError) {
        self.directory = directory
        self.retryMinimum = retryMinimum
        self.retryMaximum = retryMaximum
        try FleetFiles.makeDirectory(directory)
        let now = MonotonicClock.now()
        var loaded: [String: Entry] = [:]
        var generation: UInt64 = 1
        for name in try FleetFiles.list(directory) where name.hasSuffix(".pb") && !name.hasPrefix(".") {
            guard let payload = try FleetFiles.read(directory + "/" + name, limit: 4 << 20) else { continue }
            loaded[String(name.dropLast(3))] = Entry(payload: payload, generation: generation, due: now)
            generation += 1
        }
        state.withLock { s in
            s.entries = loaded
            s.nextGeneration = generation
        }
    }

    /// Keys are file names: letters, digits, '-' and '_'.
    static func isValidKey(_ key: String) -> Bool {
        !key.isEmpty && key.count <= 64 && key.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }
    }

    /// Makes `payload` the pending state of `key`, durably, replacing any older
    /// pending one. Returns false when it equals what is already pending.
    @discardableResult
    public func put(key: String, payload: [UInt8]) throws(FleetError) -> Bool {
        guard Self.isValidKey(key) else { throw .configuration(item: "outbox key", reason: "'\(key.prefix(64))' is not a file name") }
        // The file first: once put returns, a power cut cannot lose it.
        let unchanged = state.withLock { $0.entries[key]?.payload == payload }
        if unchanged { return false }
        try FleetFiles.write(payload, to: path(key))
        state.withLock { s in
            s.entries[key] = Entry(payload: payload, generation: s.nextGeneration, due: MonotonicClock.now())
            s.nextGeneration += 1
        }
        return true
    }

    /// The items whose (re)try is due at `now`.
    public func due(at now: MonotonicClock.Instant = MonotonicClock.now()) -> [Item] {
        state.withLock { s in
            s.entries.filter { $0.value.due <= now }.map { Item(key: $0.key, payload: $0.value.payload, generation: $0.value.generation) }
                .sorted { $0.key < $1.key }
        }
    }

    /// When the next item falls due, if any is pending.
    public var nextDue: MonotonicClock.Instant? { state.withLock { $0.entries.values.map(\.due).min() } }

    public var pendingCount: Int { state.withLock { $0.entries.count } }

    /// The controller stored `item`: forget it, unless a newer state was put meanwhile.
    public func delivered(_ item: Item) throws(FleetError) {
        let current = state.withLock { s -> Bool in
            guard s.entries[item.key]?.generation == item.generation else { return false }
            s.entries[item.key] = nil
            return true
        }
        if current { try FleetFiles.remove(path(item.key)) }
    }

    /// Sending `item` failed: try again after a jittered, growing wait.
    public func failed(_ item: Item, now: MonotonicClock.Instant = MonotonicClock.now()) {
        state.withLock { s in
            guard var entry = s.entries[item.key], entry.generation == item.generation else { return }
            entry.attempts += 1
            entry.due = now.advanced(by: Jitter.backoff(attempt: entry.attempts, minimum: retryMinimum, maximum: retryMaximum, using: &s.random))
            s.entries[item.key] = entry
        }
    }

    private func path(_ key: String) -> String { directory + "/" + key + ".pb" }
}
