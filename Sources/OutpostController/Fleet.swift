import Crypto
import Foundation
import OutpostProto
import SwiftProtobuf
import Synchronization

/// The controller's view of its fleet: the store behind it, and in memory
/// what every request needs (certificate → device, the current config and
/// its hash), so that an unchanged-config poll never touches the store.
///
/// Several replicas may serve one database. The memory is then a cache the
/// database decides for: a fingerprint this process does not know is looked up
/// in the store, a device polling with a hash this process does not hold reads its
/// row, and `refresh()` (every ~500 ms, `ChangeFollower`) pulls what other replicas
/// changed. It polls the fleet clock (`ChangeMark`, one row) rather than using
/// PostgreSQL's LISTEN/NOTIFY: it works the same on SQLite, a notification sent while
/// a listener reconnects is lost while a clock value is not, and the cost is one
/// single-row read per replica per interval whatever the fleet's size. Counters,
/// registrations, log acknowledgements and update steps are written by the store
/// in transactions, never decided from this memory.
public final class Fleet: Sendable {
    /// What a config poll needs, precomputed when the config changes.
    public struct Entry: Sendable {
        public var record: DeviceRecord
        /// ConfigResponse's encoding for a device that does not have the config yet.
        public var response: Data
        /// The fleet clock value of the change this entry reflects.
        public var seq: Int64
    }

    /// Who is calling, decided by the TLS client certificate's fingerprint.
    public enum Caller: Sendable {
        case device(Entry)
        case onboarding(fingerprint: String)
        case unknown(fingerprint: String)
    }

    struct State {
        var byFingerprint: [String: String] = [:]
        var entries: [String: Entry] = [:]
        var onboarding: [String: Set<String>] = [:]
        var lastSeen: [String: Int64] = [:]
        /// Every device change up to here is in `entries`.
        var devicesMark: Int64 = 0
        var onboardingMark: Int64 = 0
    }

    public let store: any FleetStore
    /// The URL devices use (bundle URLs are made from it).
    public let url: String
    private let state = Mutex(State())

    public init(store: any FleetStore, url: String) async throws {
        self.store = store
        self.url = url
        try await reload()
    }

    /// Everything from the store, replacing the memory.
    private func reload() async throws {
        let mark = try await store.changeMark()
        let devices = try await store.devices(changedAfter: Int64.min)
        let onboarding = try await store.onboardingEntries()
        var s = State()
        for d in devices {
            s.byFingerprint[d.record.fingerprint] = d.record.id
            s.entries[d.record.id] = try Self.entry(d)
        }
        for o in onboarding { s.onboarding[o.fingerprint, default: []].insert(o.serial) }
        s.devicesMark = max(mark.devices, devices.map(\.seq).max() ?? 0)
        s.onboardingMark = mark.onboarding
        let fresh = s
        state.withLock { old in
            var n = fresh
            n.lastSeen = old.lastSeen
            old = n
        }
    }

    /// Pulls what other replicas changed since the last call: nothing but the clock row when
    /// nothing changed.
    public func refresh() async throws {
        let mark = try await store.changeMark()
        let (devicesMark, onboardingMark) = state.withLock { ($0.devicesMark, $0.onboardingMark) }
        if mark.devices > devicesMark {
            let changed = try await store.devices(changedAfter: devicesMark)
            for d in changed { try apply(d) }
            // Every change up to the mark read first had committed when it was read (ChangeMark).
            state.withLock { $0.devicesMark = max($0.devicesMark, mark.devices, changed.map(\.seq).max() ?? 0) }
        }
        if mark.onboarding > onboardingMark {
            let entries = try await store.onboardingEntries()
            var map: [String: Set<String>] = [:]
            for o in entries { map[o.fingerprint, default: []].insert(o.serial) }
            state.withLock { s in
                s.onboarding = map
                s.onboardingMark = max(s.onboardingMark, mark.onboarding)
            }
        }
    }

    /// Puts a device row in memory unless memory holds a newer change of it; returns the newer.
    @discardableResult
    func apply(_ d: DeviceChange) throws -> Entry {
        let e = try Self.entry(d)
        return state.withLock { s in
            if let old = s.entries[d.record.id], old.seq > d.seq { return old }
            var n = e
            if let old = s.entries[d.record.id] { n.record.lastSeenMs = max(n.record.lastSeenMs, old.record.lastSeenMs) }
            s.byFingerprint[d.record.fingerprint] = d.record.id
            s.entries[d.record.id] = n
            return n
        }
    }

    static func entry(_ d: DeviceChange) throws -> Entry {
        var r = ConfigResponse()
        r.config = try DeviceConfig(serializedBytes: d.record.config)
        r.configHash = d.record.configHash
        return Entry(record: d.record, response: try r.serializedBytes(), seq: d.seq)
    }

    /// The deterministic encoding and its hex SHA-256: the config hash.
    public static func encode(_ c: DeviceConfig) throws -> (Data, String) {
        var o = BinaryEncodingOptions()
        o.useDeterministicOrdering = true
        let bytes: Data = try c.serializedBytes(options: o)
        return (bytes, SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined())
    }

    /// Memory only: the hot path.
    func cached(fingerprint: String) -> Caller? {
        state.withLock { s in
            if let id = s.byFingerprint[fingerprint], let e = s.entries[id] { return .device(e) }
            if s.onboarding[fingerprint] != nil { return .onboarding(fingerprint: fingerprint) }
            return nil
        }
    }

    /// Memory first; a miss asks the store, since another replica may have just registered
    /// the device or allowed the onboarding certificate.
    public func identify(fingerprint: String) async throws -> Caller {
        if let c = cached(fingerprint: fingerprint) { return c }
        if let d = try await store.device(fingerprint: fingerprint) { return .device(try apply(d)) }
        let serials = try await store.onboardingSerials(fingerprint: fingerprint)
        if !serials.isEmpty {
            state.withLock { $0.onboarding[fingerprint, default: []].formUnion(serials) }
            return .onboarding(fingerprint: fingerprint)
        }
        return .unknown(fingerprint: fingerprint)
    }

    /// The device's row as the store has it now (nil: no such device), put in memory.
    public func current(_ id: String) async throws -> Entry? {
        guard let d = try await store.device(id: id) else { return nil }
        return try apply(d)
    }

    /// Remembers that a device called; flushed to the store by `flushLastSeen`.
    public func seen(_ id: String, now: Int64 = nowMs()) {
        state.withLock { $0.lastSeen[id] = now }
    }

    public func flushLastSeen() async throws {
        let pending = state.withLock { s -> [String: Int64] in
            let p = s.lastSeen
            s.lastSeen = [:]
            for (id, ms) in p { s.entries[id]?.record.lastSeenMs = ms }
            return p
        }
        try await store.touch(lastSeen: pending)
    }

    // MARK: registration

    public struct Registration: Sendable {
        public var response: RegisterResponse
        public var created: Bool
    }

    /// Registers the certificate in `request` for a caller with
    /// `clientFingerprint`. Idempotent: the same device certificate again
    /// answers with the same device, whichever replica registered it.
    public func register(clientFingerprint: String, request: RegisterRequest) async throws(APIError) -> Registration {
        let der: [UInt8]
        do { der = try PKI.checkDeviceCertificate(pem: request.deviceCertPem) } catch {
            throw .malformed("RegisterRequest.device_cert_pem: \(error.description.replacingOccurrences(of: "device_cert_pem: ", with: ""))")
        }
        let deviceFP = PKI.fingerprint(der: der)
        let caller: Caller
        do { caller = try await identify(fingerprint: clientFingerprint) } catch { throw APIError(500, "cannot register: \(error)") }
        // The device may repeat registration with its own certificate.
        if case .device(let e) = caller {
            guard e.record.fingerprint == deviceFP else {
                throw APIError(403, "a registered device may only re-register its own certificate")
            }
        } else {
            guard case .onboarding = caller else { throw APIError(403, "not an onboarding certificate this controller accepts") }
            let serials = state.withLock { $0.onboarding[clientFingerprint] ?? [] }
            guard serials.contains("*") || serials.contains(request.serial) else {
                throw APIError(403, "serial '\(request.serial)' is not allowed for this onboarding certificate")
            }
        }
        guard state.withLock({ $0.onboarding[deviceFP] == nil }) else {
            throw .malformed("RegisterRequest.device_cert_pem is an onboarding certificate, not the device's own")
        }
        if case .device(let e)? = cached(fingerprint: deviceFP) {
            var r = RegisterResponse()
            r.deviceID = e.record.id
            r.alreadyRegistered = true
            return Registration(response: r, created: false)
        }
        let id = UUID().uuidString.lowercased()
        var config = DeviceConfig()
        config.deviceID = id
        let result: (device: DeviceChange, created: Bool)
        do {
            let (bytes, hash) = try Self.encode(config)
            let now = nowMs()
            let record = DeviceRecord(id: id, fingerprint: deviceFP, certificatePEM: request.deviceCertPem, serial: request.serial,
                                      onboardFingerprint: clientFingerprint, registeredMs: now, lastSeenMs: now,
                                      config: bytes, configHash: hash)
            result = try await store.register(record)
            try apply(result.device)
        } catch {
            throw APIError(500, "cannot register: \(error)")
        }
        var r = RegisterResponse()
        r.deviceID = result.device.record.id
        r.alreadyRegistered = !result.created
        return Registration(response: r, created: result.created)
    }

    // MARK: onboarding allow-list

    public func allowOnboarding(certificatePEM: String, serial: String) async throws -> String {
        let fp = try PKI.fingerprint(pem: certificatePEM, what: "--cert")
        if serial != "*" {
            do { try WireCheck.serial(serial, "--serial") } catch { throw ControllerError.invalidInput(error.message) }
        }
        if try await store.device(fingerprint: fp) != nil {
            throw ControllerError.invalidInput("that certificate belongs to a registered device, not an onboarding batch")
        }
        try await store.allowOnboarding(fingerprint: fp, serial: serial, note: "")
        state.withLock { _ = $0.onboarding[fp, default: []].insert(serial) }
        return fp
    }

    public func removeOnboarding(certificatePEM: String, serial: String?) async throws -> Int {
        let fp = try PKI.fingerprint(pem: certificatePEM, what: "--cert")
        let n = try await store.removeOnboarding(fingerprint: fp, serial: serial)
        state.withLock { s in
            if let serial { s.onboarding[fp]?.remove(serial) } else { s.onboarding[fp] = nil }
            if s.onboarding[fp]?.isEmpty == true { s.onboarding[fp] = nil }
        }
        return n
    }

    // MARK: devices and their config

    public func devices() -> [DeviceRecord] {
        state.withLock { s in s.entries.values.map { e in
            var r = e.record
            if let seen = s.lastSeen[r.id] { r.lastSeenMs = max(r.lastSeenMs, seen) }
            return r
        } }.sorted { ($0.registeredMs, $0.id) < ($1.registeredMs, $1.id) }
    }

    /// Every device as the store has it, with the last-seen times this process has not flushed
    /// yet: what the admin list shows, whichever replica devices call.
    public func storedDevices() async throws -> [DeviceRecord] {
        let pending = state.withLock { $0.lastSeen }
        return try await store.allDevices().map { d in
            var r = d
            if let seen = pending[r.id] { r.lastSeenMs = max(r.lastSeenMs, seen) }
            return r
        }
    }

    /// A device by id, serial, or an unambiguous id prefix (4+ characters). A reference
    /// memory does not know is tried again after a refresh: another replica may have just
    /// registered the device.
    public func resolve(_ ref: String) async throws -> DeviceRecord {
        do { return try resolveCached(ref) } catch ControllerError.unknownDevice {
            try await refresh()
            return try resolveCached(ref)
        }
    }

    func resolveCached(_ ref: String) throws(ControllerError) -> DeviceRecord {
        let all = devices()
        if let d = all.first(where: { $0.id == ref }) { return d }
        let bySerial = all.filter { $0.serial == ref }
        if bySerial.count == 1 { return bySerial[0] }
        if bySerial.count > 1 { throw .ambiguousDevice(ref, matches: bySerial.map(\.id)) }
        guard ref.count >= 4 else { throw .unknownDevice(ref) }
        let byPrefix = all.filter { $0.id.hasPrefix(ref.lowercased()) }
        if byPrefix.count == 1 { return byPrefix[0] }
        if byPrefix.isEmpty { throw .unknownDevice(ref) }
        throw .ambiguousDevice(ref, matches: byPrefix.map(\.id))
    }

    public func config(of id: String) throws -> DeviceConfig {
        guard let e = state.withLock({ $0.entries[id] }) else { throw ControllerError.unknownDevice(id) }
        return try DeviceConfig(serializedBytes: e.record.config)
    }

    /// Changes a device's config and returns the new record. The store applies `change` to
    /// the row it holds, locked, so two administrators (on one replica or several) never lose
    /// each other's change and a counter bumped twice is bumped twice. The new hash makes the
    /// device's next poll fetch it.
    @discardableResult
    public func updateConfig(_ ref: String, _ change: @Sendable @escaping (inout DeviceConfig) throws -> Void) async throws -> DeviceRecord {
        let d = try await resolve(ref)
        let changed = try await store.changeConfig(deviceID: d.id) { current in
            var c = try DeviceConfig(serializedBytes: current.config)
            try change(&c)
            try WireCheck.secrets(c.secrets)
            let (bytes, hash) = try Self.encode(c)
            return hash == current.configHash ? nil : (bytes, hash)
        }
        guard let changed else { throw ControllerError.unknownDevice(ref) }
        return try apply(changed).record
    }

    /// Test and benchmark support: devices written straight to the store
    /// (the controller must not be serving the same data directory).
    public static func seed(store: any FleetStore, count: Int, onboardFingerprint: String) async throws {
        var batch: [DeviceRecord] = []
        let now = nowMs()
        for n in 0..<count {
            let id = UUID().uuidString.lowercased()
            var c = DeviceConfig()
            c.deviceID = id
            let (bytes, hash) = try encode(c)
            let fp = SHA256.hash(data: Data(id.utf8)).map { String(format: "%02x", $0) }.joined()
            batch.append(DeviceRecord(id: id, fingerprint: fp, certificatePEM: "", serial: "seed-\(n)", onboardFingerprint: onboardFingerprint,
                                      registeredMs: now, lastSeenMs: now, config: bytes, configHash: hash))
            if batch.count == 1000 {
                try await store.insertDevices(batch)
                batch.removeAll(keepingCapacity: true)
            }
        }
        if !batch.isEmpty { try await store.insertDevices(batch) }
    }
}

public func nowMs() -> Int64 { Int64(Date().timeIntervalSince1970 * 1000) }
