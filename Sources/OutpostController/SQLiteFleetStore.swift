import Foundation
import GRDB

/// The embedded store: one SQLite file in WAL mode, so the admin CLI's reads
/// never wait for the device API's writes.
public final class SQLiteFleetStore: FleetStore {
    let db: DatabasePool
    public let path: String

    public init(path: String) throws(ControllerError) {
        self.path = path
        do {
            var config = Configuration()
            config.busyMode = .timeout(10)
            config.prepareDatabase { db in
                // WAL + NORMAL: a commit survives a crash of the controller;
                // a power cut may lose the last commits, never corrupt the file.
                try db.execute(sql: "PRAGMA synchronous = NORMAL")
            }
            db = try DatabasePool(path: path, configuration: config)
            try db.write { try SchemaMigrations.migrate(sqlite: $0, name: path) }
        } catch let e as ControllerError {
            throw e
        } catch {
            throw .store("cannot open \(path): \(error)")
        }
    }

    func wrap<T>(_ what: String, _ body: () async throws -> T) async throws -> T {
        do { return try await body() } catch let e as ControllerError { throw e } catch {
            throw ControllerError.store("\(what): \(error)")
        }
    }

    public func allowOnboarding(fingerprint: String, serial: String, note: String) async throws {
        try await wrap("allow onboarding") {
            try await db.write { db in
                try db.execute(sql: "INSERT OR REPLACE INTO onboarding (fingerprint, serial, note) VALUES (?, ?, ?)",
                               arguments: [fingerprint, serial, note])
                try db.execute(sql: "UPDATE fleet_clock SET onboarding = onboarding + 1")
            }
        }
    }

    public func removeOnboarding(fingerprint: String, serial: String?) async throws -> Int {
        try await wrap("remove onboarding") {
            try await db.write { db in
                if let serial {
                    try db.execute(sql: "DELETE FROM onboarding WHERE fingerprint = ? AND serial = ?", arguments: [fingerprint, serial])
                } else {
                    try db.execute(sql: "DELETE FROM onboarding WHERE fingerprint = ?", arguments: [fingerprint])
                }
                let n = db.changesCount
                if n > 0 { try db.execute(sql: "UPDATE fleet_clock SET onboarding = onboarding + 1") }
                return n
            }
        }
    }

    public func onboardingEntries() async throws -> [OnboardingEntry] {
        try await wrap("list onboarding") {
            try await db.read { db in
                try Row.fetchAll(db, sql: "SELECT fingerprint, serial, note FROM onboarding ORDER BY fingerprint, serial").map {
                    OnboardingEntry(fingerprint: $0["fingerprint"], serial: $0["serial"], note: $0["note"])
                }
            }
        }
    }

    static func record(_ r: Row) -> DeviceRecord {
        DeviceRecord(id: r["id"], fingerprint: r["fingerprint"], certificatePEM: r["cert_pem"], serial: r["serial"],
                     onboardFingerprint: r["onboard_fingerprint"], registeredMs: r["registered_ms"],
                     lastSeenMs: r["last_seen_ms"], config: r["config"], configHash: r["config_hash"])
    }

    static func change(_ r: Row) -> DeviceChange { DeviceChange(record: record(r), seq: r["change_seq"]) }

    /// The next device clock value; SQLite runs one write at a time, so it is taken in commit order.
    static func tick(_ db: Database) throws -> Int64 {
        try db.execute(sql: "UPDATE fleet_clock SET devices = devices + 1")
        return try Int64.fetchOne(db, sql: "SELECT devices FROM fleet_clock") ?? 0
    }

    public func allDevices() async throws -> [DeviceRecord] {
        try await wrap("list devices") {
            try await db.read { db in
                try Row.fetchAll(db, sql: "SELECT * FROM devices ORDER BY registered_ms, id").map(Self.record)
            }
        }
    }

    public func insertDevices(_ devices: [DeviceRecord]) async throws {
        try await wrap("register device") {
            try await db.write { db in
                let seq = try Self.tick(db)
                for d in devices {
                    try db.execute(sql: """
                        INSERT INTO devices (id, fingerprint, cert_pem, serial, onboard_fingerprint, registered_ms,
                                             last_seen_ms, config, config_hash, change_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                        """, arguments: [d.id, d.fingerprint, d.certificatePEM, d.serial, d.onboardFingerprint,
                                         d.registeredMs, d.lastSeenMs, d.config, d.configHash, seq])
                }
            }
        }
    }

    public func updateConfig(deviceID: String, config: Data, hash: String) async throws {
        _ = try await changeConfig(deviceID: deviceID) { _ in (config, hash) }
    }

    public func changeMark() async throws -> ChangeMark {
        try await wrap("read the fleet clock") {
            try await db.read { db in
                let r = try Row.fetchOne(db, sql: "SELECT devices, onboarding FROM fleet_clock")
                return ChangeMark(devices: r?["devices"] ?? 0, onboarding: r?["onboarding"] ?? 0)
            }
        }
    }

    public func devices(changedAfter seq: Int64) async throws -> [DeviceChange] {
        try await wrap("list changed devices") {
            try await db.read { db in
                try Row.fetchAll(db, sql: "SELECT * FROM devices WHERE change_seq > ? ORDER BY change_seq", arguments: [seq]).map(Self.change)
            }
        }
    }

    public func device(fingerprint: String) async throws -> DeviceChange? {
        try await wrap("find device") {
            try await db.read { db in
                try Row.fetchOne(db, sql: "SELECT * FROM devices WHERE fingerprint = ?", arguments: [fingerprint]).map(Self.change)
            }
        }
    }

    public func device(id: String) async throws -> DeviceChange? {
        try await wrap("find device") {
            try await db.read { db in
                try Row.fetchOne(db, sql: "SELECT * FROM devices WHERE id = ?", arguments: [id]).map(Self.change)
            }
        }
    }

    public func onboardingSerials(fingerprint: String) async throws -> Set<String> {
        try await wrap("find onboarding") {
            try await db.read { db in
                Set(try String.fetchAll(db, sql: "SELECT serial FROM onboarding WHERE fingerprint = ?", arguments: [fingerprint]))
            }
        }
    }

    public func register(_ d: DeviceRecord) async throws -> (device: DeviceChange, created: Bool) {
        try await wrap("register device") {
            try await db.write { db in
                if let existing = try Row.fetchOne(db, sql: "SELECT * FROM devices WHERE fingerprint = ?", arguments: [d.fingerprint]) {
                    return (Self.change(existing), false)
                }
                let seq = try Self.tick(db)
                try db.execute(sql: """
                    INSERT INTO devices (id, fingerprint, cert_pem, serial, onboard_fingerprint, registered_ms,
                                         last_seen_ms, config, config_hash, change_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """, arguments: [d.id, d.fingerprint, d.certificatePEM, d.serial, d.onboardFingerprint,
                                     d.registeredMs, d.lastSeenMs, d.config, d.configHash, seq])
                return (DeviceChange(record: d, seq: seq), true)
            }
        }
    }

    public func changeConfig(deviceID: String, _ change: @Sendable (DeviceRecord) throws -> (config: Data, hash: String)?) async throws -> DeviceChange? {
        do {
            return try await db.write { db -> DeviceChange? in
                guard let row = try Row.fetchOne(db, sql: "SELECT * FROM devices WHERE id = ?", arguments: [deviceID]) else { return nil }
                var current = Self.change(row)
                guard let (config, hash) = try change(current.record) else { return current }
                let seq = try Self.tick(db)
                try db.execute(sql: "UPDATE devices SET config = ?, config_hash = ?, change_seq = ? WHERE id = ?",
                               arguments: [config, hash, seq, deviceID])
                current.record.config = config
                current.record.configHash = hash
                current.seq = seq
                return current
            }
        } catch let e as DatabaseError {
            throw ControllerError.store("update config: \(e)")
        }
    }

    public func touch(lastSeen: [String: Int64]) async throws {
        guard !lastSeen.isEmpty else { return }
        try await wrap("last seen") {
            try await db.write { db in
                for (id, ms) in lastSeen {
                    try db.execute(sql: "UPDATE devices SET last_seen_ms = max(last_seen_ms, ?) WHERE id = ?", arguments: [ms, id])
                }
            }
        }
    }

    public func countSeen(sinceMs: Int64) async throws -> Int {
        try await wrap("count seen") {
            try await db.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM devices WHERE last_seen_ms >= ?", arguments: [sinceMs]) ?? 0 }
        }
    }

    public func putInfo(deviceID: String, body: Data, receivedMs: Int64, step: @Sendable (Data?) -> UpdateStepRecord?) async throws {
        try await wrap("store info") {
            try await db.write { db in
                let previous = try Data.fetchOne(db, sql: "SELECT body FROM info WHERE device_id = ?", arguments: [deviceID])
                try db.execute(sql: "INSERT OR REPLACE INTO info (device_id, body, received_ms) VALUES (?, ?, ?)",
                               arguments: [deviceID, body, receivedMs])
                if let s = step(previous) {
                    try db.execute(sql: """
                        INSERT INTO update_steps (device_id, step, version, reason, device_time_ms, received_ms)
                        VALUES (?, ?, ?, ?, ?, ?)
                        """, arguments: [deviceID, s.step, s.version, s.reason, s.deviceTimeMs, s.receivedMs])
                }
            }
        }
    }

    public func info(deviceID: String) async throws -> StoredBlob? {
        try await wrap("read info") {
            try await db.read { db in
                try Row.fetchOne(db, sql: "SELECT body, received_ms FROM info WHERE device_id = ?", arguments: [deviceID]).map {
                    StoredBlob(body: $0["body"], receivedMs: $0["received_ms"])
                }
            }
        }
    }

    public func updateHistory(deviceID: String) async throws -> [UpdateStepRecord] {
        try await wrap("read update history") {
            try await db.read { db in
                try Row.fetchAll(db, sql: "SELECT * FROM update_steps WHERE device_id = ? ORDER BY rowid", arguments: [deviceID]).map {
                    UpdateStepRecord(step: $0["step"], version: $0["version"], reason: $0["reason"],
                                     deviceTimeMs: $0["device_time_ms"], receivedMs: $0["received_ms"])
                }
            }
        }
    }

    public func putMetrics(deviceID: String, body: Data, receivedMs: Int64, keep: Int) async throws {
        try await wrap("store metrics") {
            try await db.write { db in
                try db.execute(sql: "INSERT INTO metrics (device_id, received_ms, body) VALUES (?, ?, ?)",
                               arguments: [deviceID, receivedMs, body])
                try db.execute(sql: """
                    DELETE FROM metrics WHERE device_id = ? AND rowid NOT IN
                        (SELECT rowid FROM metrics WHERE device_id = ? ORDER BY received_ms DESC, rowid DESC LIMIT ?)
                    """, arguments: [deviceID, deviceID, keep])
            }
        }
    }

    public func metrics(deviceID: String, limit: Int) async throws -> [StoredBlob] {
        try await wrap("read metrics") {
            try await db.read { db in
                try Row.fetchAll(db, sql: "SELECT body, received_ms FROM metrics WHERE device_id = ? ORDER BY received_ms DESC, rowid DESC LIMIT ?",
                                 arguments: [deviceID, limit]).map { StoredBlob(body: $0["body"], receivedMs: $0["received_ms"]) }
            }
        }
    }

    public func appendLogs(deviceID: String, entries: [LogRow], droppedBefore: UInt64) async throws -> UInt64 {
        try await wrap("store logs") {
            try await db.write { db in
                var mark = try Int64.fetchOne(db, sql: "SELECT acked FROM log_marks WHERE device_id = ?", arguments: [deviceID]) ?? 0
                for e in entries {
                    try db.execute(sql: """
                        INSERT OR IGNORE INTO logs (device_id, sequence, time_ms, source, severity, message) VALUES (?, ?, ?, ?, ?, ?)
                        """, arguments: [deviceID, Int64(e.sequence), e.timeMs, e.source, e.severity, e.message])
                }
                // Entries the device declared dropped will never come: the
                // contiguous mark may pass them.
                if droppedBefore > 0, Int64(droppedBefore) - 1 > mark { mark = Int64(droppedBefore) - 1 }
                // Walk forward while the next sequence is present.
                while true {
                    let next = try Int64.fetchAll(db, sql: "SELECT sequence FROM logs WHERE device_id = ? AND sequence > ? ORDER BY sequence LIMIT 1024",
                                                  arguments: [deviceID, mark])
                    var advanced = 0
                    for s in next {
                        guard s == mark + 1 else { break }
                        mark = s
                        advanced += 1
                    }
                    if advanced < 1024 { break }
                }
                try db.execute(sql: "INSERT OR REPLACE INTO log_marks (device_id, acked) VALUES (?, ?)", arguments: [deviceID, mark])
                return UInt64(mark)
            }
        }
    }

    public func logs(deviceID: String, after: UInt64, limit: Int) async throws -> [LogRow] {
        try await wrap("read logs") {
            try await db.read { db in
                try Row.fetchAll(db, sql: "SELECT * FROM logs WHERE device_id = ? AND sequence > ? ORDER BY sequence LIMIT ?",
                                 arguments: [deviceID, Int64(clamping: after), limit]).map {
                    LogRow(sequence: UInt64(max(0, $0["sequence"] as Int64)), timeMs: $0["time_ms"], source: $0["source"],
                           severity: $0["severity"], message: $0["message"])
                }
            }
        }
    }

    public func logAck(deviceID: String) async throws -> UInt64 {
        try await wrap("read log mark") {
            try await db.read { db in
                UInt64(max(0, try Int64.fetchOne(db, sql: "SELECT acked FROM log_marks WHERE device_id = ?", arguments: [deviceID]) ?? 0))
            }
        }
    }

    public func counts(deviceID: String) async throws -> StoredCounts {
        try await wrap("count") {
            try await db.read { db in
                StoredCounts(
                    info: try Int.fetchOne(db, sql: "SELECT count(*) FROM info WHERE device_id = ?", arguments: [deviceID]) ?? 0,
                    metrics: try Int.fetchOne(db, sql: "SELECT count(*) FROM metrics WHERE device_id = ?", arguments: [deviceID]) ?? 0,
                    logs: try Int.fetchOne(db, sql: "SELECT count(*) FROM logs WHERE device_id = ?", arguments: [deviceID]) ?? 0)
            }
        }
    }
}
