import Foundation
import Logging
import PostgresNIO

/// PostgreSQL: device labels, rollouts and leases (schema versions 3 and 4).
extension PostgresFleetStore {
    public func setLabels(deviceID: String, set: [String: String], remove: [String]) async throws {
        let logger = self.logger
        try await transaction("set labels") { c in
            if !remove.isEmpty {
                try await c.query("DELETE FROM device_labels WHERE device_id = \(deviceID) AND key = ANY(\(remove)::text[])", logger: logger)
            }
            for (k, v) in set.sorted(by: { $0.key < $1.key }) {
                try await c.query("""
                    INSERT INTO device_labels (device_id, key, value) VALUES (\(deviceID), \(k), \(v))
                    ON CONFLICT (device_id, key) DO UPDATE SET value = EXCLUDED.value
                    """, logger: logger)
            }
        }
    }

    public func labels() async throws -> [String: [String: String]] {
        try await run("read labels") {
            var out: [String: [String: String]] = [:]
            for try await (id, k, v) in try await client.query("SELECT device_id, key, value FROM device_labels",
                                                               logger: logger).decode((String, String, String).self) {
                out[id, default: [:]][k] = v
            }
            return out
        }
    }

    // MARK: rollouts

    static let rolloutColumns = """
        id, created_ms, selector, version, base_os, waves, soak_ms, deadline_ms, max_failures, state, wave, wave_started_ms,
        wave_done_ms, reason, revision
        """

    static func insert(_ e: RolloutEvent, rolloutID: String, _ c: PostgresConnection, logger: Logger) async throws {
        try await c.query("""
            INSERT INTO rollout_events (rollout_id, at_ms, kind, wave, detail, holder)
            VALUES (\(rolloutID), \(e.atMs), \(e.kind), \(Int64(e.wave)), \(e.detail), \(e.holder))
            """, logger: logger)
    }

    public func createRollout(_ r: RolloutRecord, devices: [RolloutDevice], event: RolloutEvent) async throws {
        let logger = self.logger
        try await transaction("create rollout") { c in
            try await c.query("""
                INSERT INTO rollouts (\(unescaped: Self.rolloutColumns))
                VALUES (\(r.id), \(r.createdMs), \(r.selector), \(r.version), \(r.baseOS), \(SQLiteFleetStore.wavesText(r.waves)),
                        \(r.soakMs), \(r.deadlineMs), \(r.maxFailuresPercent), \(r.state), \(Int64(r.wave)), \(r.waveStartedMs),
                        \(r.waveDoneMs), \(r.reason), \(r.revision))
                """, logger: logger)
            if !devices.isEmpty {
                try await c.query("""
                    INSERT INTO rollout_devices (rollout_id, device_id, wave, state, started_ms, done_ms, reason)
                    SELECT \(r.id), * FROM unnest(\(devices.map(\.deviceID))::text[], \(devices.map { Int64($0.wave) })::bigint[],
                                                   \(devices.map(\.state))::text[], \(devices.map(\.startedMs))::bigint[],
                                                   \(devices.map(\.doneMs))::bigint[], \(devices.map(\.reason))::text[])
                    """, logger: logger)
            }
            try await Self.insert(event, rolloutID: r.id, c, logger: logger)
        }
    }

    public func rollouts() async throws -> [RolloutRecord] {
        try await run("list rollouts") {
            var out: [RolloutRecord] = []
            let rows = try await client.query("SELECT \(unescaped: Self.rolloutColumns) FROM rollouts ORDER BY created_ms DESC, id DESC",
                                              logger: logger)
            for try await (id, created, selector, version, base, waves, soak, deadline, maxFailures, state, wave, started, done, reason, revision)
                in rows.decode((String, Int64, String, String, Data, String, Int64, Int64, Double, String, Int64, Int64, Int64, String, Int64).self) {
                out.append(RolloutRecord(id: id, createdMs: created, selector: selector, version: version, baseOS: base,
                                         waves: SQLiteFleetStore.waves(waves), soakMs: soak, deadlineMs: deadline, maxFailuresPercent: maxFailures,
                                         state: state, wave: Int(wave), waveStartedMs: started, waveDoneMs: done, reason: reason, revision: revision))
            }
            return out
        }
    }

    public func rolloutDevices(rolloutID: String) async throws -> [RolloutDevice] {
        try await run("list rollout devices") {
            var out: [RolloutDevice] = []
            let rows = try await client.query("""
                SELECT device_id, wave, state, started_ms, done_ms, reason FROM rollout_devices WHERE rollout_id = \(rolloutID)
                ORDER BY wave, device_id
                """, logger: logger)
            for try await (device, wave, state, started, done, reason) in rows.decode((String, Int64, String, Int64, Int64, String).self) {
                out.append(RolloutDevice(rolloutID: rolloutID, deviceID: device, wave: Int(wave), state: state, startedMs: started,
                                         doneMs: done, reason: reason))
            }
            return out
        }
    }

    public func updateRolloutDevices(_ devices: [RolloutDevice]) async throws {
        guard !devices.isEmpty else { return }
        _ = try await run("update rollout devices") {
            try await client.query("""
                UPDATE rollout_devices SET state = t.state, started_ms = t.started, done_ms = t.done, reason = t.reason
                FROM unnest(\(devices.map(\.rolloutID))::text[], \(devices.map(\.deviceID))::text[], \(devices.map(\.state))::text[],
                            \(devices.map(\.startedMs))::bigint[], \(devices.map(\.doneMs))::bigint[], \(devices.map(\.reason))::text[])
                    AS t(rollout, device, state, started, done, reason)
                WHERE rollout_devices.rollout_id = t.rollout AND rollout_devices.device_id = t.device
                """, logger: logger)
        }
    }

    public func saveRollout(_ r: RolloutRecord, expectedRevision: Int64, event: RolloutEvent?) async throws -> Bool {
        let logger = self.logger
        return try await transaction("save rollout") { c in
            var saved = false
            for try await _ in try await c.query("""
                UPDATE rollouts SET state = \(r.state), wave = \(Int64(r.wave)), wave_started_ms = \(r.waveStartedMs),
                                    wave_done_ms = \(r.waveDoneMs), reason = \(r.reason), revision = \(expectedRevision + 1)
                WHERE id = \(r.id) AND revision = \(expectedRevision) RETURNING 1
                """, logger: logger) { saved = true }
            if saved, let event { try await Self.insert(event, rolloutID: r.id, c, logger: logger) }
            return saved
        }
    }

    public func rolloutEvents(rolloutID: String) async throws -> [RolloutEvent] {
        try await run("list rollout events") {
            var out: [RolloutEvent] = []
            let rows = try await client.query("""
                SELECT at_ms, kind, wave, detail, holder FROM rollout_events WHERE rollout_id = \(rolloutID) ORDER BY id
                """, logger: logger)
            for try await (at, kind, wave, detail, holder) in rows.decode((Int64, String, Int64, String, String).self) {
                out.append(RolloutEvent(atMs: at, kind: kind, wave: Int(wave), detail: detail, holder: holder))
            }
            return out
        }
    }

    public func acquireLease(name: String, holder: String, nowMs: Int64, ttlMs: Int64) async throws -> Bool {
        try await run("lease") {
            var held = false
            for try await _ in try await client.query("""
                INSERT INTO leases (name, holder, expires_ms) VALUES (\(name), \(holder), \(nowMs + ttlMs))
                ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_ms = EXCLUDED.expires_ms
                WHERE leases.holder = EXCLUDED.holder OR leases.expires_ms < \(nowMs)
                RETURNING 1
                """, logger: logger) { held = true }
            return held
        }
    }
}
