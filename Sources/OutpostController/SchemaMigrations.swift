import Foundation
import GRDB

/// The stores' schema, as numbered versions applied in order at start. Each store records the
/// versions it has applied in `schema_migrations`, so reopening a current database changes
/// nothing, and a database written by a newer controller is refused before anything touches it.
/// A version is never edited once released: a change is a new version at the end of the list.
enum SchemaMigrations {
    /// SQLite: one script per version (SQLite runs several statements in one call).
    static let sqlite: [String] = [
        // 1: the schema GRDB's migrator created as "v1" before versions were numbered.
        """
        CREATE TABLE onboarding (
            fingerprint TEXT NOT NULL, serial TEXT NOT NULL, note TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (fingerprint, serial)) WITHOUT ROWID;
        CREATE TABLE devices (
            id TEXT PRIMARY KEY, fingerprint TEXT NOT NULL UNIQUE, cert_pem TEXT NOT NULL,
            serial TEXT NOT NULL, onboard_fingerprint TEXT NOT NULL,
            registered_ms INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL,
            config BLOB NOT NULL, config_hash TEXT NOT NULL);
        CREATE TABLE info (
            device_id TEXT PRIMARY KEY REFERENCES devices(id), body BLOB NOT NULL, received_ms INTEGER NOT NULL);
        CREATE TABLE update_steps (
            device_id TEXT NOT NULL, step TEXT NOT NULL, version TEXT NOT NULL, reason TEXT NOT NULL,
            device_time_ms INTEGER NOT NULL, received_ms INTEGER NOT NULL);
        CREATE INDEX update_steps_device ON update_steps(device_id);
        CREATE TABLE metrics (
            device_id TEXT NOT NULL, received_ms INTEGER NOT NULL, body BLOB NOT NULL);
        CREATE INDEX metrics_device ON metrics(device_id, received_ms);
        CREATE TABLE logs (
            device_id TEXT NOT NULL, sequence INTEGER NOT NULL, time_ms INTEGER NOT NULL,
            source TEXT NOT NULL, severity INTEGER NOT NULL, message TEXT NOT NULL,
            PRIMARY KEY (device_id, sequence)) WITHOUT ROWID;
        CREATE TABLE log_marks (device_id TEXT PRIMARY KEY, acked INTEGER NOT NULL) WITHOUT ROWID;
        """,
        // 2: replicas. Every registration and config change takes the next value of the fleet
        // clock (one row) and stamps it on the device row; onboarding changes bump their own
        // counter. Replicas poll the clock and fetch only the rows past what they hold.
        """
        ALTER TABLE devices ADD COLUMN change_seq INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX devices_change ON devices(change_seq);
        CREATE TABLE fleet_clock (
            id INTEGER PRIMARY KEY CHECK (id = 1), devices INTEGER NOT NULL, onboarding INTEGER NOT NULL);
        INSERT INTO fleet_clock (id, devices, onboarding) VALUES (1, 0, 0);
        """,
        // 3: device labels, for selectors.
        """
        CREATE TABLE device_labels (
            device_id TEXT NOT NULL REFERENCES devices(id), key TEXT NOT NULL, value TEXT NOT NULL,
            PRIMARY KEY (device_id, key)) WITHOUT ROWID;
        """,
        // 4: staged rollouts, their devices and history, and the leases that make one replica act.
        """
        CREATE TABLE rollouts (
            id TEXT PRIMARY KEY, created_ms INTEGER NOT NULL, selector TEXT NOT NULL, version TEXT NOT NULL,
            base_os BLOB NOT NULL, waves TEXT NOT NULL, soak_ms INTEGER NOT NULL, deadline_ms INTEGER NOT NULL,
            max_failures REAL NOT NULL, state TEXT NOT NULL, wave INTEGER NOT NULL, wave_started_ms INTEGER NOT NULL,
            wave_done_ms INTEGER NOT NULL, reason TEXT NOT NULL, revision INTEGER NOT NULL);
        CREATE TABLE rollout_devices (
            rollout_id TEXT NOT NULL REFERENCES rollouts(id), device_id TEXT NOT NULL, wave INTEGER NOT NULL,
            state TEXT NOT NULL, started_ms INTEGER NOT NULL, done_ms INTEGER NOT NULL, reason TEXT NOT NULL,
            PRIMARY KEY (rollout_id, device_id)) WITHOUT ROWID;
        CREATE TABLE rollout_events (
            rollout_id TEXT NOT NULL, at_ms INTEGER NOT NULL, kind TEXT NOT NULL, wave INTEGER NOT NULL,
            detail TEXT NOT NULL, holder TEXT NOT NULL);
        CREATE INDEX rollout_events_rollout ON rollout_events(rollout_id);
        CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_ms INTEGER NOT NULL) WITHOUT ROWID;
        """,
        // 5: remote attestation: each device's TPM keys (and first-use PCRs), its outstanding
        // nonce, and its last quote with the verdict (JSON records, AttestationRecords.swift); the
        // operator's PCR 0/4/7 per hardware model, which replace first use for that model.
        """
        CREATE TABLE attestation_keys (device_id TEXT PRIMARY KEY REFERENCES devices(id), body BLOB NOT NULL) WITHOUT ROWID;
        CREATE TABLE attestation_nonces (
            device_id TEXT PRIMARY KEY REFERENCES devices(id), nonce BLOB NOT NULL, expires_ms INTEGER NOT NULL) WITHOUT ROWID;
        CREATE TABLE attestations (
            device_id TEXT PRIMARY KEY REFERENCES devices(id), body BLOB NOT NULL, received_ms INTEGER NOT NULL) WITHOUT ROWID;
        CREATE TABLE firmware_references (model TEXT PRIMARY KEY, body BLOB NOT NULL) WITHOUT ROWID;
        """,
        // 6: the TPM makers' CAs EK certificates are verified against (EKCARecord as JSON).
        """
        CREATE TABLE ek_cas (fingerprint TEXT PRIMARY KEY, body BLOB NOT NULL, added_ms INTEGER NOT NULL) WITHOUT ROWID;
        """,
    ]

    /// PostgreSQL: a list of statements per version (the extended protocol takes one at a
    /// time); all of a version's statements commit together, DDL included.
    static let postgres: [[String]] = [
        // 1: the same tables as SQLite's version 1. Ordering columns SQLite takes from rowid
        // (update history, metrics) are explicit identity columns here.
        [
            """
            CREATE TABLE onboarding (
                fingerprint TEXT NOT NULL, serial TEXT NOT NULL, note TEXT NOT NULL DEFAULT '',
                PRIMARY KEY (fingerprint, serial))
            """,
            """
            CREATE TABLE devices (
                id TEXT PRIMARY KEY, fingerprint TEXT NOT NULL UNIQUE, cert_pem TEXT NOT NULL,
                serial TEXT NOT NULL, onboard_fingerprint TEXT NOT NULL,
                registered_ms BIGINT NOT NULL, last_seen_ms BIGINT NOT NULL,
                config BYTEA NOT NULL, config_hash TEXT NOT NULL)
            """,
            """
            CREATE TABLE info (
                device_id TEXT PRIMARY KEY REFERENCES devices(id), body BYTEA NOT NULL, received_ms BIGINT NOT NULL)
            """,
            """
            CREATE TABLE update_steps (
                id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, device_id TEXT NOT NULL,
                step TEXT NOT NULL, version TEXT NOT NULL, reason TEXT NOT NULL,
                device_time_ms BIGINT NOT NULL, received_ms BIGINT NOT NULL)
            """,
            "CREATE INDEX update_steps_device ON update_steps(device_id, id)",
            """
            CREATE TABLE metrics (
                id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, device_id TEXT NOT NULL,
                received_ms BIGINT NOT NULL, body BYTEA NOT NULL)
            """,
            "CREATE INDEX metrics_device ON metrics(device_id, received_ms, id)",
            """
            CREATE TABLE logs (
                device_id TEXT NOT NULL, sequence BIGINT NOT NULL, time_ms BIGINT NOT NULL,
                source TEXT NOT NULL, severity BIGINT NOT NULL, message TEXT NOT NULL,
                PRIMARY KEY (device_id, sequence))
            """,
            "CREATE TABLE log_marks (device_id TEXT PRIMARY KEY, acked BIGINT NOT NULL)",
        ],
        // 2: replicas, as SQLite's version 2.
        [
            "ALTER TABLE devices ADD COLUMN change_seq BIGINT NOT NULL DEFAULT 0",
            "CREATE INDEX devices_change ON devices(change_seq)",
            """
            CREATE TABLE fleet_clock (
                id INTEGER PRIMARY KEY CHECK (id = 1), devices BIGINT NOT NULL, onboarding BIGINT NOT NULL)
            """,
            "INSERT INTO fleet_clock (id, devices, onboarding) VALUES (1, 0, 0)",
        ],
        // 3: device labels, as SQLite's version 3.
        [
            """
            CREATE TABLE device_labels (
                device_id TEXT NOT NULL REFERENCES devices(id), key TEXT NOT NULL, value TEXT NOT NULL,
                PRIMARY KEY (device_id, key))
            """,
        ],
        // 4: rollouts, as SQLite's version 4.
        [
            """
            CREATE TABLE rollouts (
                id TEXT PRIMARY KEY, created_ms BIGINT NOT NULL, selector TEXT NOT NULL, version TEXT NOT NULL,
                base_os BYTEA NOT NULL, waves TEXT NOT NULL, soak_ms BIGINT NOT NULL, deadline_ms BIGINT NOT NULL,
                max_failures DOUBLE PRECISION NOT NULL, state TEXT NOT NULL, wave BIGINT NOT NULL, wave_started_ms BIGINT NOT NULL,
                wave_done_ms BIGINT NOT NULL, reason TEXT NOT NULL, revision BIGINT NOT NULL)
            """,
            """
            CREATE TABLE rollout_devices (
                rollout_id TEXT NOT NULL REFERENCES rollouts(id), device_id TEXT NOT NULL, wave BIGINT NOT NULL,
                state TEXT NOT NULL, started_ms BIGINT NOT NULL, done_ms BIGINT NOT NULL, reason TEXT NOT NULL,
                PRIMARY KEY (rollout_id, device_id))
            """,
            """
            CREATE TABLE rollout_events (
                id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, rollout_id TEXT NOT NULL, at_ms BIGINT NOT NULL,
                kind TEXT NOT NULL, wave BIGINT NOT NULL, detail TEXT NOT NULL, holder TEXT NOT NULL)
            """,
            "CREATE INDEX rollout_events_rollout ON rollout_events(rollout_id, id)",
            "CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_ms BIGINT NOT NULL)",
        ],
        // 5: remote attestation, as SQLite's version 5.
        [
            "CREATE TABLE attestation_keys (device_id TEXT PRIMARY KEY REFERENCES devices(id), body BYTEA NOT NULL)",
            """
            CREATE TABLE attestation_nonces (
                device_id TEXT PRIMARY KEY REFERENCES devices(id), nonce BYTEA NOT NULL, expires_ms BIGINT NOT NULL)
            """,
            """
            CREATE TABLE attestations (
                device_id TEXT PRIMARY KEY REFERENCES devices(id), body BYTEA NOT NULL, received_ms BIGINT NOT NULL)
            """,
            "CREATE TABLE firmware_references (model TEXT PRIMARY KEY, body BYTEA NOT NULL)",
        ],
        // 6: EK CAs, as SQLite's version 6.
        [
            "CREATE TABLE ek_cas (fingerprint TEXT PRIMARY KEY, body BYTEA NOT NULL, added_ms BIGINT NOT NULL)",
        ],
    ]

    /// The version this controller writes; both lists must agree.
    static var current: Int { sqlite.count }

    static let createTableSQL =
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_ms BIGINT NOT NULL)"

    /// Brings a SQLite database to `current` in one transaction. A database made before
    /// versions were numbered (GRDB's migrator, identifier "v1") is adopted as version 1.
    static func migrate(sqlite db: Database, name: String) throws {
        try db.execute(sql: createTableSQL)
        var version = try Int.fetchOne(db, sql: "SELECT max(version) FROM schema_migrations") ?? 0
        if version == 0, try db.tableExists("grdb_migrations"),
           try Bool.fetchOne(db, sql: "SELECT EXISTS (SELECT 1 FROM grdb_migrations WHERE identifier = 'v1')") == true {
            try db.execute(sql: "INSERT INTO schema_migrations (version, applied_ms) VALUES (1, ?)", arguments: [nowMs()])
            version = 1
        }
        guard version <= current else { throw ControllerError.schemaTooNew(database: name, version: version, known: current) }
        for v in stride(from: version + 1, through: current, by: 1) {
            try db.execute(sql: sqlite[v - 1])
            try db.execute(sql: "INSERT INTO schema_migrations (version, applied_ms) VALUES (?, ?)", arguments: [v, nowMs()])
        }
    }
}
