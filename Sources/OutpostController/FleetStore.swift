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

/// A device row with the fleet-clock value its last registration or config change took:
/// replicas compare it to decide which of two copies of a device is newer.
public struct DeviceChange: Sendable, Equatable {
    public var record: DeviceRecord
    public var seq: Int64
}

/// The fleet clock: the last value handed to a device change, and the onboarding list's
/// change counter. A value read here is committed, and so is every change below it
/// (the clock row is locked from the bump to the commit), so a replica that reads the mark
/// and then the rows past its own mark can never skip a change.
public struct ChangeMark: Sendable, Equatable {
    public var devices: Int64
    public var onboarding: Int64
}

/// A staged rollout as the store keeps it (see `RolloutAdvancer` for how it moves).
public struct RolloutRecord: Codable, Sendable, Equatable {
    public var id: String
    public var createdMs: Int64
    public var selector: String
    public var version: String
    /// The BaseOS message every device of the rollout gets (its binary encoding).
    public var baseOS: Data
    /// Cumulative percentages of the selected devices, increasing, the last 100.
    public var waves: [Double]
    public var soakMs: Int64
    public var deadlineMs: Int64
    public var maxFailuresPercent: Double
    /// running, paused, halted, aborted, completed.
    public var state: String
    /// The wave under way (0-based); -1 before the first starts.
    public var wave: Int
    public var waveStartedMs: Int64
    /// When every device of the current wave had an outcome (0: not yet); its soak runs from here.
    public var waveDoneMs: Int64
    /// Why the rollout halted (or was aborted).
    public var reason: String
    /// Bumped by every save: a save names the revision it read, so two writers never both win.
    public var revision: Int64
}

/// One device of a rollout: its wave and how it fared.
public struct RolloutDevice: Codable, Sendable, Equatable {
    public var rolloutID: String
    public var deviceID: String
    public var wave: Int
    /// pending (its wave has not started), updating, committed, failed.
    public var state: String
    public var startedMs: Int64
    public var doneMs: Int64
    public var reason: String
}

/// A line of a rollout's history: created, wave-started, wave-done, halted, paused, resumed, aborted, completed.
public struct RolloutEvent: Codable, Sendable, Equatable {
    public var atMs: Int64
    public var kind: String
    public var wave: Int
    public var detail: String
    /// The controller process that wrote it.
    public var holder: String
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
    /// Inserts the devices as one change (all or none).
    func insertDevices(_ devices: [DeviceRecord]) async throws
    func updateConfig(deviceID: String, config: Data, hash: String) async throws

    // Replicas: what several controller processes on one database decide through it.

    func changeMark() async throws -> ChangeMark
    /// Devices whose change sequence is above `seq`.
    func devices(changedAfter seq: Int64) async throws -> [DeviceChange]
    func device(fingerprint: String) async throws -> DeviceChange?
    func device(id: String) async throws -> DeviceChange?
    /// The serials an onboarding certificate may enrol (empty: not an onboarding certificate).
    func onboardingSerials(fingerprint: String) async throws -> Set<String>
    /// Registers `device` unless its fingerprint is registered already: then the existing
    /// device, `created` false. Two replicas registering one certificate at once make one device.
    func register(_ device: DeviceRecord) async throws -> (device: DeviceChange, created: Bool)
    /// Reads the device's row locked, hands it to `change`, and writes the config `change`
    /// returns (nil: nothing to change) with the next clock value: read-modify-write decided
    /// by the database, so two administrators on two replicas bumping one counter bump it twice.
    /// nil when there is no such device.
    func changeConfig(deviceID: String, _ change: @Sendable (DeviceRecord) throws -> (config: Data, hash: String)?) async throws -> DeviceChange?
    /// Last-seen times, flushed in batches so that polling never waits on a write.
    func touch(lastSeen: [String: Int64]) async throws
    /// Devices whose last-seen time is at or after `sinceMs`, across every replica's flushes.
    func countSeen(sinceMs: Int64) async throws -> Int

    /// Replaces the device's info and appends what `step` makes of the previous info's body (nil:
    /// none yet) to the update history, when not nil. One device's info writes run one after the
    /// other across replicas, so one step is recorded once.
    func putInfo(deviceID: String, body: Data, receivedMs: Int64, step: @Sendable (Data?) -> UpdateStepRecord?) async throws
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

    /// Sets and removes a device's labels in one transaction.
    func setLabels(deviceID: String, set: [String: String], remove: [String]) async throws
    /// Every labelled device's labels, by device id (selectors are evaluated over them).
    func labels() async throws -> [String: [String: String]]

    // Rollouts.

    func createRollout(_ rollout: RolloutRecord, devices: [RolloutDevice], event: RolloutEvent) async throws
    /// Newest first.
    func rollouts() async throws -> [RolloutRecord]
    func rolloutDevices(rolloutID: String) async throws -> [RolloutDevice]
    func updateRolloutDevices(_ devices: [RolloutDevice]) async throws
    /// Writes `rollout` (revision `expectedRevision` + 1) and `event` only if the stored revision is
    /// still `expectedRevision`; false when another writer got there first.
    func saveRollout(_ rollout: RolloutRecord, expectedRevision: Int64, event: RolloutEvent?) async throws -> Bool
    func rolloutEvents(rolloutID: String) async throws -> [RolloutEvent]
    /// Takes or renews the lease `name` for `holder` until `nowMs + ttlMs`, if it is free,
    /// expired or already `holder`'s: one conditional write, so one holder at a time.
    func acquireLease(name: String, holder: String, nowMs: Int64, ttlMs: Int64) async throws -> Bool

    // Remote attestation (AttestationRecords.swift).

    /// Inserts or replaces the device's TPM keys (a registration with new keys starts over).
    func putAttestationKey(_ key: AttestationKeyRecord) async throws
    func attestationKey(deviceID: String) async throws -> AttestationKeyRecord?
    /// Read-modify-write under the row's lock (binding, first-use PCRs); nil: no such key.
    func changeAttestationKey(deviceID: String,
                              _ change: @Sendable (AttestationKeyRecord) throws -> AttestationKeyRecord?) async throws -> AttestationKeyRecord?
    /// The device's one outstanding nonce, replacing any earlier one.
    func putNonce(deviceID: String, nonce: Data, expiresMs: Int64) async throws
    /// Removes and returns the outstanding nonce in one step: a nonce is used at most once.
    func takeNonce(deviceID: String) async throws -> (nonce: Data, expiresMs: Int64)?
    /// Replaces the device's last attestation.
    func putAttestation(_ record: AttestationRecord) async throws
    func attestation(deviceID: String) async throws -> AttestationRecord?
    /// The operator's firmware PCRs (index → hex) for a hardware model (DeviceInfo.identity.board);
    /// nil removes the model's entry.
    func setFirmwareReference(model: String, pcrs: [String: String]?) async throws
    /// Every model's firmware PCRs.
    func firmwareReferences() async throws -> [String: [String: String]]
    /// The TPM makers' CAs EK certificates are verified against (EKCertificates.swift);
    /// adding one already held replaces it.
    func putEKCertificateAuthority(_ ca: EKCARecord) async throws
    /// false when no CA has that fingerprint.
    func removeEKCertificateAuthority(fingerprint: String) async throws -> Bool
    /// Oldest first.
    func ekCertificateAuthorities() async throws -> [EKCARecord]
}

extension FleetStore {
    /// Replaces the device's info; appends `step` to its update history when given.
    public func putInfo(deviceID: String, body: Data, receivedMs: Int64, step: UpdateStepRecord?) async throws {
        try await putInfo(deviceID: deviceID, body: body, receivedMs: receivedMs, step: { _ in step })
    }
}
