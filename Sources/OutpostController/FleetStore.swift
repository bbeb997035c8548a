import Foundation

/// A registered device as the store keeps it. The fingerprint (SHA-256 of
/// the device certificate's DER) is the identity TLS proves; the id is the
/// name people and the CLI use.
public struct DeviceRecord: Codable, Sendable, Equatable {
    public var id: String
    public var fingerprint: String
    public var certificatePEM: String
    public var serial: String
    public var onboardFingerprint: String
    public var registeredMs: Int64
    public var lastSeenMs: Int64
    /// The device's desired state: DeviceConfig's deterministic binary encoding.
    public var config: Data
    /// Hex SHA-256 of `config`.
    public var configHash: String

    public init(id: String, fingerprint: String, certificatePEM: String, serial: String, onboardFingerprint: String,
                registeredMs: Int64, lastSeenMs: Int64, config: Data, configHash: String) {
        self.id = id
        self.fingerprint = fingerprint
        self.certificatePEM = certificatePEM
        self.serial = serial
        self.onboardFingerprint = onboardFingerprint
        self.registeredMs = registeredMs
        self.lastSeenMs = lastSeenMs
        self.config = config
        self.configHash = configHash
    }
}

/// One allow-list entry: this onboarding certificate may enrol this serial
/// (`*`: any serial).
public struct OnboardingEntry: Codable, Sendable, Equatable {
    public var fingerprint: String
    public var serial: String
    public var note: String
}

/// A base-OS update step as the device reported it, kept as a history so
/// `device show` can say which steps an update went through.
public struct UpdateStepRecord: Codable, Sendable, Equatable {
    public var step: String
    public var version: String
    public var reason: String
    public var deviceTimeMs: Int64
    public var receivedMs: Int64
}

public struct StoredBlob: Sendable, Equatable {
    /// The message's binary encoding, as received.
    public var body: Data
    public var receivedMs: Int64
}

public struct LogRow: Codable, Sendable, Equatable {
    public var sequence: UInt64
    public var timeMs: Int64
    public var source: String
    public var severity: Int
    public var message: String
}

/// How much the store holds for a device; tests use it to prove that a
/// refused request stored nothing.
public struct StoredCounts: Sendable, Equatable {
    public var info: Int
    public var metrics: Int
    public var logs: Int
}

/// Where the controller keeps its fleet: SQLite (GRDB, `SQLiteFleetStore`) is the embedded
/// default, PostgreSQL (`PostgresFleetStore`) the shared one; the HTTP and admin layers only see
/// this protocol, and one test suite (FleetStoreTests) holds both to the same behaviour.
public protocol FleetStore: Sendable {
    func allowOnboarding(fingerprint: String, serial: String, note: String) async throws
    /// Removes entries for `fingerprint` (one serial, or all when nil); returns how many.
    func removeOnboarding(fingerprint: String, serial: String?) async throws -> Int
    func onboardingEntries() async throws -> [OnboardingEntry]

    func allDevices() async throws -> [DeviceRecord]
    func insertDevices(_ devices: [DeviceRecord]) async throws
    func updateConfig(deviceID: String, config: Data, hash: String) async throws
    /// Last-seen times, flushed in batches so that polling never waits on a write.
    func touch(lastSeen: [String: Int64]) async throws

    /// Replaces the device's info; appends `step` to its update history when given.
    func putInfo(deviceID: String, body: Data, receivedMs: Int64, step: UpdateStepRecord?) async throws
    func info(deviceID: String) async throws -> StoredBlob?
    func updateHistory(deviceID: String) async throws -> [UpdateStepRecord]

    /// Adds a metrics report and keeps only the newest `keep`.
    func putMetrics(deviceID: String, body: Data, receivedMs: Int64, keep: Int) async throws
    /// Newest first.
    func metrics(deviceID: String, limit: Int) async throws -> [StoredBlob]

    /// Stores entries by sequence (duplicates ignored) and returns the highest
    /// sequence up to which every entry is held (or declared dropped).
    func appendLogs(deviceID: String, entries: [LogRow], droppedBefore: UInt64) async throws -> UInt64
    func logs(deviceID: String, after: UInt64, limit: Int) async throws -> [LogRow]
    func logAck(deviceID: String) async throws -> UInt64

    func counts(deviceID: String) async throws -> StoredCounts
}
