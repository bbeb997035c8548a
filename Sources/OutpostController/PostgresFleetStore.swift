import Foundation
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import PostgresNIO
import Synchronization

/// The fleet in PostgreSQL, for fleets larger than one machine's SQLite file. Same semantics as
/// `SQLiteFleetStore`; every value goes to the server as a bind parameter ($1, $2…:
/// `PostgresQuery`'s interpolation binds, it never splices values into the SQL text).
/// Writes that read before they write (log marks, metrics trimming) run in one transaction and
/// lock the device's row, so concurrent requests, from one process or several, serialise.
public final class PostgresFleetStore: FleetStore {
    public let location: PostgresLocation
    let client: PostgresClient
    /// The pool's `run()`; cancelled by `close()` (or when the store goes away).
    private let runner: Task<Void, Never>
    let logger: Logger
    private let maximumConnections: Int
    private let stats = Mutex(PoolStatistics(maximumConnections: 0, inFlight: 0, succeeded: 0, failed: 0))

    /// What the metrics port shows of the pool: its size, the store operations holding or
    /// waiting for a connection now, and how many finished.
    public struct PoolStatistics: Sendable {
        public var maximumConnections: Int
        public var inFlight: Int
        public var succeeded: Int
        public var failed: Int
    }

    public var poolStatistics: PoolStatistics {
        var s = stats.withLock { $0 }
        s.maximumConnections = maximumConnections
        return s
    }

    private init(location: PostgresLocation, client: PostgresClient, logger: Logger, maximumConnections: Int) {
        self.location = location
        self.client = client
        self.logger = logger
        self.maximumConnections = maximumConnections
        runner = Task { await client.run() }
    }

    deinit { runner.cancel() }

    /// Connects once (so an unreachable or refusing database is one clear error, not a pool
    /// retrying in the background), migrates on that connection, then starts the pool.
    public static func open(_ location: PostgresLocation, logger: Logger, maximumConnections: Int = 20) async throws -> PostgresFleetStore {
        let tls: PostgresConnection.Configuration.TLS
        do {
            tls = location.requireTLS ? .require(try NIOSSLContext(configuration: .makeClientConfiguration())) : .disable
        } catch {
            throw ControllerError.store("\(location): TLS: \(error)")
        }
        let poolTLS: PostgresClient.Configuration.TLS = location.requireTLS ? .require(.makeClientConfiguration()) : .disable
        var connection: PostgresConnection.Configuration
        var pool: PostgresClient.Configuration
        switch location.endpoint {
        case let .tcp(host, port):
            connection = .init(host: host, port: port, username: location.user, password: location.password,
                               database: location.database, tls: tls)
            pool = .init(host: host, port: port, username: location.user, password: location.password,
                         database: location.database, tls: poolTLS)
        case let .socket(path):
            connection = .init(unixSocketPath: path, username: location.user, password: location.password, database: location.database)
            pool = .init(unixSocketPath: path, username: location.user, password: location.password, database: location.database)
        }
        connection.options.connectTimeout = .seconds(10)
        pool.options.maximumConnections = maximumConnections

        let first: PostgresConnection
        do {
            first = try await PostgresConnection.connect(configuration: connection, id: 0, logger: logger)
        } catch {
            throw ControllerError.store("cannot connect to \(location): \(reason(error))")
        }
        do {
            try await migrate(first, location: location, logger: logger)
            try? await first.close()
        } catch {
            try? await first.close()
            if let e = error as? ControllerError { throw e }
            throw ControllerError.store("\(location): migrating the schema: \(reason(error))")
        }
        return PostgresFleetStore(location: location, client: PostgresClient(configuration: pool, backgroundLogger: logger), logger: logger,
                                  maximumConnections: maximumConnections)
    }

    /// Stops the pool and waits for its connections to close.
    public func close() async {
        runner.cancel()
        await runner.value
    }

    /// Applies the missing versions in one transaction, under an advisory lock so that
    /// replicas starting together migrate once.
    static func migrate(_ c: PostgresConnection, location: PostgresLocation, logger: Logger) async throws {
        try await c.query("BEGIN", logger: logger)
        do {
            try await c.query("SELECT pg_advisory_xact_lock(\(Int64(0x6f7574706f7374)))", logger: logger)
            try await c.query(PostgresQuery(unsafeSQL: SchemaMigrations.createTableSQL), logger: logger)
            var version = 0
            for try await v in try await c.query("SELECT COALESCE(max(version), 0)::bigint FROM schema_migrations", logger: logger).decode(Int64.self) {
                version = Int(v)
            }
            guard version <= SchemaMigrations.current else {
                throw ControllerError.schemaTooNew(database: location.description, version: version, known: SchemaMigrations.current)
            }
            for v in stride(from: version + 1, through: SchemaMigrations.current, by: 1) {
                for statement in SchemaMigrations.postgres[v - 1] {
                    try await c.query(PostgresQuery(unsafeSQL: statement), logger: logger)
                }
                try await c.query("INSERT INTO schema_migrations (version, applied_ms) VALUES (\(v), \(nowMs()))", logger: logger)
            }
            try await c.query("COMMIT", logger: logger)
        } catch {
            try? await c.query("ROLLBACK", logger: logger)
            throw error
        }
    }

    /// One line for a PostgresNIO error: `PSQLError`'s own description hides everything.
    static func reason(_ error: any Error) -> String {
        if let e = error as? ControllerError { return e.description }
        if let e = error as? PSQLError {
            if let message = e.serverInfo?[.message] {
                return message + (e.serverInfo?[.sqlState].map { " (SQLSTATE \($0))" } ?? "")
            }
            if let underlying = e.underlying { return reason(underlying) }
            return "\(e.code)"
        }
        if let e = error as? IOError { return errnoString(e.errnoCode).lowercased() }
        if let e = error as? NIOConnectionError, let first = e.connectionErrors.first { return reason(first.error) }
        return "\(error)"
    }

    func run<T>(_ what: String, _ body: () async throws -> T) async throws -> T {
        stats.withLock { $0.inFlight += 1 }
        var ok = false
        defer { stats.withLock { s in
            s.inFlight -= 1
            if ok { s.succeeded += 1 } else { s.failed += 1 }
        } }
        do {
            let result = try await body()
            ok = true
            return result
        } catch let e as ControllerError {
            // Already one line with its context (or a caller's own refusal from a closure).
            throw e
        } catch {
            throw ControllerError.store("\(what): \(Self.reason(error))")
        }
    }

    /// `body` in one transaction on one pooled connection; rolled back when it throws.
    func transaction<T: Sendable>(_ what: String, _ body: (PostgresConnection) async throws -> T) async throws -> T {
        let logger = self.logger
        return try await run(what) {
            try await client.withConnection { c in
                try await c.query("BEGIN", logger: logger)
                do {
                    let result = try await body(c)
                    try await c.query("COMMIT", logger: logger)
                    return result
                } catch {
                    try? await c.query("ROLLBACK", logger: logger)
                    throw error
                }
            }
        }
    }

    public func allowOnboarding(fingerprint: String, serial: String, note: String) async throws {
        let logger = self.logger
        try await transaction("allow onboarding") { c in
            try await c.query("""
                INSERT INTO onboarding (fingerprint, serial, note) VALUES (\(fingerprint), \(serial), \(note))
                ON CONFLICT (fingerprint, serial) DO UPDATE SET note = EXCLUDED.note
                """, logger: logger)
            try await c.query("UPDATE fleet_clock SET onboarding = onboarding + 1 WHERE id = 1", logger: logger)
        }
    }

    public func removeOnboarding(fingerprint: String, serial: String?) async throws -> Int {
        let logger = self.logger
        return try await transaction("remove onboarding") { c in
            let rows = try await c.query("""
                DELETE FROM onboarding WHERE fingerprint = \(fingerprint) AND (\(serial)::text IS NULL OR serial = \(serial))
                RETURNING 1
                """, logger: logger)
            var n = 0
            for try await _ in rows { n += 1 }
            if n > 0 { try await c.query("UPDATE fleet_clock SET onboarding = onboarding + 1 WHERE id = 1", logger: logger) }
            return n
        }
    }

    public func onboardingEntries() async throws -> [OnboardingEntry] {
        try await run("list onboarding") {
            var out: [OnboardingEntry] = []
            let rows = try await client.query("SELECT fingerprint, serial, note FROM onboarding ORDER BY fingerprint, serial", logger: logger)
            for try await (f, s, n) in rows.decode((String, String, String).self) {
                out.append(OnboardingEntry(fingerprint: f, serial: s, note: n))
            }
            return out
        }
    }

    public func allDevices() async throws -> [DeviceRecord] {
        try await run("list devices") {
            var out: [DeviceRecord] = []
            let rows = try await client.query("""
                SELECT id, fingerprint, cert_pem, serial, onboard_fingerprint, registered_ms, last_seen_ms, config, config_hash
                FROM devices ORDER BY registered_ms, id
                """, logger: logger)
            for try await (id, fp, pem, serial, onboard, registered, seen, config, hash)
                in rows.decode((String, String, String, String, String, Int64, Int64, Data, String).self) {
                out.append(DeviceRecord(id: id, fingerprint: fp, certificatePEM: pem, serial: serial, onboardFingerprint: onboard,
                                        registeredMs: registered, lastSeenMs: seen, config: config, configHash: hash))
            }
            return out
        }
    }

    static let deviceColumns = "id, fingerprint, cert_pem, serial, onboard_fingerprint, registered_ms, last_seen_ms, config, config_hash, change_seq"

    /// Rows selected with `deviceColumns`.
    static func changes(_ rows: PostgresRowSequence) async throws -> [DeviceChange] {
        var out: [DeviceChange] = []
        for try await (id, fp, pem, serial, onboard, registered, seen, config, hash, seq)
            in rows.decode((String, String, String, String, String, Int64, Int64, Data, String, Int64).self) {
            out.append(DeviceChange(record: DeviceRecord(id: id, fingerprint: fp, certificatePEM: pem, serial: serial, onboardFingerprint: onboard,
                                                         registeredMs: registered, lastSeenMs: seen, config: config, configHash: hash),
                                    seq: seq))
        }
        return out
    }

    /// The next device clock value. The clock row stays locked until the transaction ends, so
    /// values commit in the order they are taken (see `ChangeMark`).
    static func tick(_ c: PostgresConnection, logger: Logger) async throws -> Int64 {
        for try await v in try await c.query("UPDATE fleet_clock SET devices = devices + 1 WHERE id = 1 RETURNING devices",
                                             logger: logger).decode(Int64.self) { return v }
        throw ControllerError.store("the fleet clock row is missing")
    }

    public func insertDevices(_ devices: [DeviceRecord]) async throws {
        guard !devices.isEmpty else { return }
        let logger = self.logger
        try await transaction("register device") { c in
            let seq = try await Self.tick(c, logger: logger)
            for d in devices {
                try await c.query("""
                    INSERT INTO devices (id, fingerprint, cert_pem, serial, onboard_fingerprint, registered_ms, last_seen_ms,
                                         config, config_hash, change_seq)
                    VALUES (\(d.id), \(d.fingerprint), \(d.certificatePEM), \(d.serial), \(d.onboardFingerprint),
                            \(d.registeredMs), \(d.lastSeenMs), \(d.config), \(d.configHash), \(seq))
                    """, logger: logger)
            }
        }
    }

    public func updateConfig(deviceID: String, config: Data, hash: String) async throws {
        _ = try await changeConfig(deviceID: deviceID) { _ in (config, hash) }
    }

    public func changeMark() async throws -> ChangeMark {
        try await run("read the fleet clock") {
            for try await (d, o) in try await client.query("SELECT devices, onboarding FROM fleet_clock WHERE id = 1",
                                                           logger: logger).decode((Int64, Int64).self) {
                return ChangeMark(devices: d, onboarding: o)
            }
            return ChangeMark(devices: 0, onboarding: 0)
        }
    }

    public func devices(changedAfter seq: Int64) async throws -> [DeviceChange] {
        try await run("list changed devices") {
            try await Self.changes(try await client.query(
                "SELECT \(unescaped: Self.deviceColumns) FROM devices WHERE change_seq > \(seq) ORDER BY change_seq", logger: logger))
        }
    }

    public func device(fingerprint: String) async throws -> DeviceChange? {
        try await run("find device") {
            try await Self.changes(try await client.query(
                "SELECT \(unescaped: Self.deviceColumns) FROM devices WHERE fingerprint = \(fingerprint)", logger: logger)).first
        }
    }

    public func device(id: String) async throws -> DeviceChange? {
        try await run("find device") {
            try await Self.changes(try await client.query(
                "SELECT \(unescaped: Self.deviceColumns) FROM devices WHERE id = \(id)", logger: logger)).first
        }
    }

    public func onboardingSerials(fingerprint: String) async throws -> Set<String> {
        try await run("find onboarding") {
            var out: Set<String> = []
            for try await s in try await client.query("SELECT serial FROM onboarding WHERE fingerprint = \(fingerprint)",
                                                      logger: logger).decode(String.self) { out.insert(s) }
            return out
        }
    }

    public func register(_ d: DeviceRecord) async throws -> (device: DeviceChange, created: Bool) {
        let logger = self.logger
        return try await transaction("register device") { c in
            // The clock first: it also serialises registrations, so a second replica registering
            // the same certificate waits here and then finds the first one's row.
            let seq = try await Self.tick(c, logger: logger)
            let inserted = try await c.query("""
                INSERT INTO devices (id, fingerprint, cert_pem, serial, onboard_fingerprint, registered_ms, last_seen_ms,
                                     config, config_hash, change_seq)
                VALUES (\(d.id), \(d.fingerprint), \(d.certificatePEM), \(d.serial), \(d.onboardFingerprint),
                        \(d.registeredMs), \(d.lastSeenMs), \(d.config), \(d.configHash), \(seq))
                ON CONFLICT (fingerprint) DO NOTHING RETURNING 1
                """, logger: logger)
            var created = false
            for try await _ in inserted { created = true }
            if created { return (DeviceChange(record: d, seq: seq), true) }
            guard let existing = try await Self.changes(try await c.query(
                "SELECT \(unescaped: Self.deviceColumns) FROM devices WHERE fingerprint = \(d.fingerprint)", logger: logger)).first else {
                throw ControllerError.store("register device: fingerprint conflict without a row")
            }
            return (existing, false)
        }
    }

    public func changeConfig(deviceID: String, _ change: @Sendable (DeviceRecord) throws -> (config: Data, hash: String)?) async throws -> DeviceChange? {
        let logger = self.logger
        return try await transaction("update config") { c -> DeviceChange? in
                // NO KEY UPDATE: other devices' rows and foreign-key checks (info) are not blocked.
                guard var current = try await Self.changes(try await c.query(
                    "SELECT \(unescaped: Self.deviceColumns) FROM devices WHERE id = \(deviceID) FOR NO KEY UPDATE", logger: logger)).first else {
                    return nil
                }
                guard let (config, hash) = try change(current.record) else { return current }
                let seq = try await Self.tick(c, logger: logger)
                try await c.query("UPDATE devices SET config = \(config), config_hash = \(hash), change_seq = \(seq) WHERE id = \(deviceID)",
                                  logger: logger)
                current.record.config = config
                current.record.configHash = hash
                current.seq = seq
                return current
        }
    }

    public func touch(lastSeen: [String: Int64]) async throws {
        guard !lastSeen.isEmpty else { return }
        let ids = Array(lastSeen.keys)
        let times = ids.map { lastSeen[$0] ?? 0 }
        let logger = self.logger
        try await transaction("last seen") { c in
            // Rows locked in id order first: two replicas flushing overlapping batches would
            // otherwise lock them in join order and could deadlock each other.
            for try await _ in try await c.query("SELECT 1 FROM devices WHERE id = ANY(\(ids)::text[]) ORDER BY id FOR NO KEY UPDATE",
                                                 logger: logger) {}
            // One statement for the whole batch: the arrays travel as two parameters.
            try await c.query("""
                UPDATE devices SET last_seen_ms = GREATEST(devices.last_seen_ms, t.ms)
                FROM unnest(\(ids)::text[], \(times)::bigint[]) AS t(id, ms) WHERE devices.id = t.id
                """, logger: logger)
        }
    }

    public func countSeen(sinceMs: Int64) async throws -> Int {
        try await run("count seen") {
            for try await n in try await client.query("SELECT count(*) FROM devices WHERE last_seen_ms >= \(sinceMs)",
                                                      logger: logger).decode(Int64.self) { return Int(n) }
            return 0
        }
    }

    public func putInfo(deviceID: String, body: Data, receivedMs: Int64, step: @Sendable (Data?) -> UpdateStepRecord?) async throws {
        let logger = self.logger
        try await transaction("store info") { c in
            // One device's info writes, from any replica, one after the other (the info row may
            // not exist yet, so the lock is an advisory one on the device).
            for try await _ in try await c.query("SELECT pg_advisory_xact_lock(hashtext('info:' || \(deviceID)))", logger: logger) {}
            var previous: Data?
            for try await b in try await c.query("SELECT body FROM info WHERE device_id = \(deviceID)", logger: logger).decode(Data.self) {
                previous = b
            }
            try await c.query("""
                INSERT INTO info (device_id, body, received_ms) VALUES (\(deviceID), \(body), \(receivedMs))
                ON CONFLICT (device_id) DO UPDATE SET body = EXCLUDED.body, received_ms = EXCLUDED.received_ms
                """, logger: logger)
            if let s = step(previous) {
                try await c.query("""
                    INSERT INTO update_steps (device_id, step, version, reason, device_time_ms, received_ms)
                    VALUES (\(deviceID), \(s.step), \(s.version), \(s.reason), \(s.deviceTimeMs), \(s.receivedMs))
                    """, logger: logger)
            }
        }
    }

    public func info(deviceID: String) async throws -> StoredBlob? {
        try await run("read info") {
            let rows = try await client.query("SELECT body, received_ms FROM info WHERE device_id = \(deviceID)", logger: logger)
            for try await (body, ms) in rows.decode((Data, Int64).self) { return StoredBlob(body: body, receivedMs: ms) }
            return nil
        }
    }

    public func updateHistory(deviceID: String) async throws -> [UpdateStepRecord] {
        try await run("read update history") {
            var out: [UpdateStepRecord] = []
            let rows = try await client.query("""
                SELECT step, version, reason, device_time_ms, received_ms FROM update_steps WHERE device_id = \(deviceID) ORDER BY id
                """, logger: logger)
            for try await (step, version, reason, deviceMs, ms) in rows.decode((String, String, String, Int64, Int64).self) {
                out.append(UpdateStepRecord(step: step, version: version, reason: reason, deviceTimeMs: deviceMs, receivedMs: ms))
            }
            return out
        }
    }

    public func putMetrics(deviceID: String, body: Data, receivedMs: Int64, keep: Int) async throws {
        let logger = self.logger
        try await transaction("store metrics") { c in
            try await c.query("INSERT INTO metrics (device_id, received_ms, body) VALUES (\(deviceID), \(receivedMs), \(body))", logger: logger)
            try await c.query("""
                DELETE FROM metrics WHERE device_id = \(deviceID) AND id NOT IN
                    (SELECT id FROM metrics WHERE device_id = \(deviceID) ORDER BY received_ms DESC, id DESC LIMIT \(Int64(keep)))
                """, logger: logger)
        }
    }

    public func metrics(deviceID: String, limit: Int) async throws -> [StoredBlob] {
        try await run("read metrics") {
            var out: [StoredBlob] = []
            let rows = try await client.query("""
                SELECT body, received_ms FROM metrics WHERE device_id = \(deviceID)
                ORDER BY received_ms DESC, id DESC LIMIT \(Int64(limit))
                """, logger: logger)
            for try await (body, ms) in rows.decode((Data, Int64).self) { out.append(StoredBlob(body: body, receivedMs: ms)) }
            return out
        }
    }

    public func appendLogs(deviceID: String, entries: [LogRow], droppedBefore: UInt64) async throws -> UInt64 {
        let logger = self.logger
        return try await transaction("store logs") { c in
            // The device's mark row, locked: appends for one device run one after another, so
            // the mark below is computed over every entry committed before this one.
            try await c.query("INSERT INTO log_marks (device_id, acked) VALUES (\(deviceID), 0) ON CONFLICT (device_id) DO NOTHING",
                              logger: logger)
            var mark: Int64 = 0
            for try await m in try await c.query("SELECT acked FROM log_marks WHERE device_id = \(deviceID) FOR UPDATE",
                                                 logger: logger).decode(Int64.self) { mark = m }
            if !entries.isEmpty {
                let sequences = entries.map { Int64(clamping: $0.sequence) }
                let times = entries.map(\.timeMs)
                let sources = entries.map(\.source)
                let severities = entries.map { Int64($0.severity) }
                let messages = entries.map(\.message)
                try await c.query("""
                    INSERT INTO logs (device_id, sequence, time_ms, source, severity, message)
                    SELECT \(deviceID), * FROM unnest(\(sequences)::bigint[], \(times)::bigint[], \(sources)::text[],
                                                       \(severities)::bigint[], \(messages)::text[])
                    ON CONFLICT (device_id, sequence) DO NOTHING
                    """, logger: logger)
            }
            // Entries the device declared dropped will never come: the mark may pass them.
            if droppedBefore > 0, Int64(clamping: droppedBefore) - 1 > mark { mark = Int64(clamping: droppedBefore) - 1 }
            // The end of the run contiguous from mark + 1: there, sequence - row number == mark.
            for try await m in try await c.query("""
                SELECT COALESCE(max(sequence), \(mark)) FROM
                    (SELECT sequence, sequence - row_number() OVER (ORDER BY sequence) AS base
                     FROM logs WHERE device_id = \(deviceID) AND sequence > \(mark)) run
                WHERE base = \(mark)
                """, logger: logger).decode(Int64.self) { mark = m }
            try await c.query("UPDATE log_marks SET acked = \(mark) WHERE device_id = \(deviceID)", logger: logger)
            return UInt64(max(0, mark))
        }
    }

    public func logs(deviceID: String, after: UInt64, limit: Int) async throws -> [LogRow] {
        try await run("read logs") {
            var out: [LogRow] = []
            let rows = try await client.query("""
                SELECT sequence, time_ms, source, severity, message FROM logs
                WHERE device_id = \(deviceID) AND sequence > \(Int64(clamping: after)) ORDER BY sequence LIMIT \(Int64(limit))
                """, logger: logger)
            for try await (seq, time, source, severity, message) in rows.decode((Int64, Int64, String, Int64, String).self) {
                out.append(LogRow(sequence: UInt64(max(0, seq)), timeMs: time, source: source, severity: Int(severity), message: message))
            }
            return out
        }
    }

    public func logAck(deviceID: String) async throws -> UInt64 {
        try await run("read log mark") {
            for try await m in try await client.query("SELECT acked FROM log_marks WHERE device_id = \(deviceID)",
                                                      logger: logger).decode(Int64.self) { return UInt64(max(0, m)) }
            return 0
        }
    }

    public func counts(deviceID: String) async throws -> StoredCounts {
        try await run("count") {
            let rows = try await client.query("""
                SELECT (SELECT count(*) FROM info WHERE device_id = \(deviceID)),
                       (SELECT count(*) FROM metrics WHERE device_id = \(deviceID)),
                       (SELECT count(*) FROM logs WHERE device_id = \(deviceID))
                """, logger: logger)
            for try await (i, m, l) in rows.decode((Int64, Int64, Int64).self) {
                return StoredCounts(info: Int(i), metrics: Int(m), logs: Int(l))
            }
            return StoredCounts(info: 0, metrics: 0, logs: 0)
        }
    }
}
