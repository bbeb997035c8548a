import Crypto
import Foundation
import OutpostProto
import SwiftProtobuf
import Synchronization

/// The controller's view of its fleet: the store behind it, and in memory
/// what every request needs (certificate → device, the current config and
/// its hash), so that an unchanged-config poll never touches the store.
public final class Fleet: Sendable {
    /// What a config poll needs, precomputed when the config changes.
    public struct Entry: Sendable {
        public var record: DeviceRecord
        /// ConfigResponse's encoding for a device that does not have the config yet.
        public var response: Data
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
    }

    public let store: any FleetStore
    /// The URL devices use (bundle URLs are made from it).
    public let url: String
    private let state = Mutex(State())
    private let writer = SerialWriter()

    public init(store: any FleetStore, url: String) async throws {
        self.store = store
        self.url = url
        let devices = try await store.allDevices()
        let onboarding = try await store.onboardingEntries()
        var s = State()
        for d in devices {
            s.byFingerprint[d.fingerprint] = d.id
            s.entries[d.id] = try Self.entry(d)
        }
        for o in onboarding { s.onboarding[o.fingerprint, default: []].insert(o.serial) }
        state.withLock { $0 = s }
    }

    static func entry(_ d: DeviceRecord) throws -> Entry {
        var r = ConfigResponse()
        r.config = try DeviceConfig(serializedBytes: d.config)
        r.configHash = d.configHash
        return Entry(record: d, response: try r.serializedBytes())
    }

    /// The deterministic encoding and its hex SHA-256: the config hash.
    public static func encode(_ c: DeviceConfig) throws -> (Data, String) {
        var o = BinaryEncodingOptions()
        o.useDeterministicOrdering = true
        let bytes: Data = try c.serializedBytes(options: o)
        return (bytes, SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined())
    }

    public func identify(fingerprint: String) -> Caller {
        state.withLock { s in
            if let id = s.byFingerprint[fingerprint], let e = s.entries[id] { return .device(e) }
            if s.onboarding[fingerprint] != nil { return .onboarding(fingerprint: fingerprint) }
            return .unknown(fingerprint: fingerprint)
        }
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
    /// answers with the same device.
    public func register(clientFingerprint: String, request: RegisterRequest) async throws(APIError) -> Registration {
        let der: [UInt8]
        do { der = try PKI.checkDeviceCertificate(pem: request.deviceCertPem) } catch {
            throw .malformed("RegisterRequest.device_cert_pem: \(error.description.replacingOccurrences(of: "device_cert_pem: ", with: ""))")
        }
        let deviceFP = PKI.fingerprint(der: der)
        // The device may repeat registration with its own certificate.
        let caller = identify(fingerprint: clientFingerprint)
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
        return try await writer.run { () throws(APIError) -> Registration in
            if let id = state.withLock({ $0.byFingerprint[deviceFP] }) {
                var r = RegisterResponse()
                r.deviceID = id
                r.alreadyRegistered = true
                return Registration(response: r, created: false)
            }
            let id = UUID().uuidString.lowercased()
            var config = DeviceConfig()
            config.deviceID = id
            do {
                let (bytes, hash) = try Self.encode(config)
                let now = nowMs()
                let record = DeviceRecord(id: id, fingerprint: deviceFP, certificatePEM: request.deviceCertPem, serial: request.serial,
                                          onboardFingerprint: clientFingerprint, registeredMs: now, lastSeenMs: now,
                                          config: bytes, configHash: hash)
                try await store.insertDevices([record])
                let e = try Self.entry(record)
                state.withLock { s in
                    s.byFingerprint[deviceFP] = id
                    s.entries[id] = e
                }
            } catch {
                throw APIError(500, "cannot register: \(error)")
            }
            var r = RegisterResponse()
            r.deviceID = id
            return Registration(response: r, created: true)
        }
    }

    // MARK: onboarding allow-list

    public func allowOnboarding(certificatePEM: String, serial: String) async throws -> String {
        let fp = try PKI.fingerprint(pem: certificatePEM, what: "--cert")
        if serial != "*" {
            do { try WireCheck.serial(serial, "--serial") } catch { throw ControllerError.invalidInput(error.message) }
        }
        if state.withLock({ $0.byFingerprint[fp] != nil }) {
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

    /// A device by id, serial, or an unambiguous id prefix (4+ characters).
    public func resolve(_ ref: String) throws(ControllerError) -> DeviceRecord {
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

    /// Changes a device's config (one change at a time for the whole fleet,
    /// so two administrators never lose each other's change) and returns the
    /// new record. The new hash makes the device's next poll fetch it.
    @discardableResult
    public func updateConfig(_ ref: String, _ change: @Sendable @escaping (inout DeviceConfig) throws -> Void) async throws -> DeviceRecord {
        try await writer.run { () throws -> DeviceRecord in
            let d = try resolve(ref)
            var c = try DeviceConfig(serializedBytes: d.config)
            try change(&c)
            let (bytes, hash) = try Self.encode(c)
            if hash == d.configHash { return d }
            try await store.updateConfig(deviceID: d.id, config: bytes, hash: hash)
            var r = d
            r.config = bytes
            r.configHash = hash
            let e = try Self.entry(r)
            state.withLock { $0.entries[d.id] = e }
            return r
        }
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

/// Runs bodies one at a time, in arrival order: registration and config
/// changes are read-modify-write, and an actor alone would interleave them
/// at every `await` on the store.
actor SerialWriter {
    private var busy = false
    private var waiters: [CheckedContinuation<Void, Never>] = []

    func run<T: Sendable, E: Error>(_ body: @Sendable () async throws(E) -> T) async throws(E) -> T {
        while busy { await withCheckedContinuation { waiters.append($0) } }
        busy = true
        defer {
            busy = false
            if !waiters.isEmpty { waiters.removeFirst().resume() }
        }
        return try await body()
    }
}

public func nowMs() -> Int64 { Int64(Date().timeIntervalSince1970 * 1000) }
