import Foundation
import GRDB

/// SQLite: device labels, rollouts and leases (schema versions 3 and 4).
extension SQLiteFleetStore {
    public func setLabels(deviceID: String, set: [String: String], remove: [String]) async throws {
        try await wrap("set labels") {
            try await db.write { db in
                for k in remove {
                    try db.execute(sql: "DELETE FROM device_labels WHERE device_id = ? AND key = ?", arguments: [deviceID, k])
                }
                for (k, v) in set.sorted(by: { $0.key < $1.key }) {
                    try db.execute(sql: "INSERT OR REPLACE INTO device_labels (device_id, key, value) VALUES (?, ?, ?)",
                                   arguments: [deviceID, k, v])
                }
            }
        }
    }

    public func labels() async throws -> [String: [String: String]] {
        try await wrap("read labels") {
            try await db.read { db in
                var out: [String: [String: String]] = [:]
                for r in try Row.fetchAll(db, sql: "SELECT device_id, key, value FROM device_labels") {
                    out[r["device_id"] as String, default: [:]][r["key"] as String] = r["value"] as String
                }
                return out
            }
        }
    }

    // MARK: rollouts

    static func wavesText(_ w: [Double]) -> String { w.map { String($0) }.joined(separator: ",") }
    static func waves(_ t: String) -> [Double] { t.split(separator: ",").compactMap { Double($0) } }

    static func rollout(_ r: Row) -> RolloutRecord {
        RolloutRecord(id: r["id"], createdMs: r["created_ms"], selector: r["selector"], version: r["version"], baseOS: r["base_os"],
                      waves: waves(r["waves"]), soakMs: r["soak_ms"], deadlineMs: r["deadline_ms"], maxFailuresPercent: r["max_failures"],
                      state: r["state"], wave: r["wave"], waveStartedMs: r["wave_started_ms"], waveDoneMs: r["wave_done_ms"],
                      reason: r["reason"], revision: r["revision"])
    }

    static func insert(_ e: RolloutEvent, rolloutID: String, _ db: Database) throws {
        try db.execute(sql: "INSERT INTO rollout_events (rollout_id, at_ms, kind, wave, detail, holder) VALUES (?, ?, ?, ?, ?, ?)",
                       arguments: [rolloutID, e.atMs, e.kind, e.wave, e.detail, e.holder])
    }

    public func createRollout(_ r: RolloutRecord, devices: [RolloutDevice], event: RolloutEvent) async throws {
        try await wrap("create rollout") {
            try await db.write { db in
                try db.execute(sql: """
                    INSERT INTO rollouts (id, created_ms, selector, version, base_os, waves, soak_ms, deadline_ms, max_failures, state,
                                          wave, wave_started_ms, wave_done_ms, reason, revision)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """, arguments: [r.id, r.createdMs, r.selector, r.version, r.baseOS, Self.wavesText(r.waves), r.soakMs, r.deadlineMs,
                                     r.maxFailuresPercent, r.state, r.wave, r.waveStartedMs, r.waveDoneMs, r.reason, r.revision])
                for d in devices {
                    try db.execute(sql: """
                        INSERT INTO rollout_devices (rollout_id, device_id, wave, state, started_ms, done_ms, reason) VALUES (?, ?, ?, ?, ?, ?, ?)
                        """, arguments: [d.rolloutID, d.deviceID, d.wave, d.state, d.startedMs, d.doneMs, d.reason])
                }
                try Self.insert(event, rolloutID: r.id, db)
            }
        }
    }

    public func rollouts() async throws -> [RolloutRecord] {
        try await wrap("list rollouts") {
            try await db.read { db in
                try Row.fetchAll(db, sql: "SELECT * FROM rollouts ORDER BY created_ms DESC, id DESC").map(Self.rollout)
            }
        }
    }

    public func rolloutDevices(rolloutID: String) async throws -> [RolloutDevice] {
        try await wrap("list rollout devices") {
            try await db.read { db in
                try Row.fetchAll(db, sql: "SELECT * FROM rollout_devices WHERE rollout_id = ? ORDER BY wave, device_id", arguments: [rolloutID]).map {
                    RolloutDevice(rolloutID: $0["rollout_id"], deviceID: $0["device_id"], wave: $0["wave"], state: $0["state"],
                                  startedMs: $0["started_ms"], doneMs: $0["done_ms"], reason: $0["reason"])
                }
            }
        }
    }

    public func updateRolloutDevices(_ devices: [RolloutDevice]) async throws {
        guard !devices.isEmpty else { return }
        try await wrap("update rollout devices") {
            try await db.write { db in
                for d in devices {
                    try db.execute(sql: """
                        UPDATE rollout_devices SET state = ?, started_ms = ?, done_ms = ?, reason = ? WHERE rollout_id = ? AND device_id = ?
                        """, arguments: [d.state, d.startedMs, d.doneMs, d.reason, d.rolloutID, d.deviceID])
                }
            }
        }
    }

    public func saveRollout(_ r: RolloutRecord, expectedRevision: Int64, event: RolloutEvent?) async throws -> Bool {
        try await wrap("save rollout") {
            try await db.write { db in
                try db.execute(sql: """
                    UPDATE rollouts SET state = ?, wave = ?, wave_started_ms = ?, wave_done_ms = ?, reason = ?, revision = ?
                    WHERE id = ? AND revision = ?
                    """, arguments: [r.state, r.wave, r.waveStartedMs, r.waveDoneMs, r.reason, expectedRevision + 1, r.id, expectedRevision])
                guard db.changesCount == 1 else { return false }
                if let event { try Self.insert(event, rolloutID: r.id, db) }
                return true
            }
        }
    }

    public func rolloutEvents(rolloutID: String) async throws -> [RolloutEvent] {
        try await wrap("list rollout events") {
            try await db.read { db in
                try Row.fetchAll(db, sql: "SELECT * FROM rollout_events WHERE rollout_id = ? ORDER BY rowid", arguments: [rolloutID]).map {
                    RolloutEvent(atMs: $0["at_ms"], kind: $0["kind"], wave: $0["wave"], detail: $0["detail"], holder: $0["holder"])
                }
            }
        }
    }

    public func acquireLease(name: String, holder: String, nowMs: Int64, ttlMs: Int64) async throws -> Bool {
        try await wrap("lease") {
            try await db.write { db in
                try db.execute(sql: """
                    INSERT INTO leases (name, holder, expires_ms) VALUES (?, ?, ?)
                    ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_ms = excluded.expires_ms
                    WHERE leases.holder = excluded.holder OR leases.expires_ms < ?
                    """, arguments: [name, holder, nowMs + ttlMs, nowMs])
                return db.changesCount == 1
            }
        }
    }
}
