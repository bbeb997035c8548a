import Foundation
import GRDB

/// SQLite: attestation keys, nonces and the last quote per device (schema version 5). The
/// records are JSON in one column: nothing queries inside them, and both stores keep them alike.
extension SQLiteFleetStore {
    static func json<T: Encodable>(_ v: T) throws -> Data {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        return try e.encode(v)
    }

    public func putAttestationKey(_ key: AttestationKeyRecord) async throws {
        try await wrap("store attestation key") {
            let body = try Self.json(key)
            try await db.write { db in
                try db.execute(sql: "INSERT OR REPLACE INTO attestation_keys (device_id, body) VALUES (?, ?)", arguments: [key.deviceID, body])
            }
        }
    }

    public func attestationKey(deviceID: String) async throws -> AttestationKeyRecord? {
        try await wrap("read attestation key") {
            let body = try await db.read { db in
                try Data.fetchOne(db, sql: "SELECT body FROM attestation_keys WHERE device_id = ?", arguments: [deviceID])
            }
            return try body.map { try JSONDecoder().decode(AttestationKeyRecord.self, from: $0) }
        }
    }

    public func changeAttestationKey(deviceID: String,
                                     _ change: @Sendable (AttestationKeyRecord) throws -> AttestationKeyRecord?) async throws -> AttestationKeyRecord? {
        try await wrap("update attestation key") {
            try await db.write { db -> AttestationKeyRecord? in
                guard let body = try Data.fetchOne(db, sql: "SELECT body FROM attestation_keys WHERE device_id = ?", arguments: [deviceID]) else {
                    return nil
                }
                let current = try JSONDecoder().decode(AttestationKeyRecord.self, from: body)
                guard let changed = try change(current) else { return current }
                try db.execute(sql: "UPDATE attestation_keys SET body = ? WHERE device_id = ?", arguments: [try Self.json(changed), deviceID])
                return changed
            }
        }
    }

    public func putNonce(deviceID: String, nonce: Data, expiresMs: Int64) async throws {
        try await wrap("store nonce") {
            try await db.write { db in
                try db.execute(sql: "INSERT OR REPLACE INTO attestation_nonces (device_id, nonce, expires_ms) VALUES (?, ?, ?)",
                               arguments: [deviceID, nonce, expiresMs])
            }
        }
    }

    public func takeNonce(deviceID: String) async throws -> (nonce: Data, expiresMs: Int64)? {
        try await wrap("take nonce") {
            try await db.write { db -> (nonce: Data, expiresMs: Int64)? in
                guard let row = try Row.fetchOne(db, sql: "SELECT nonce, expires_ms FROM attestation_nonces WHERE device_id = ?",
                                                 arguments: [deviceID]) else { return nil }
                try db.execute(sql: "DELETE FROM attestation_nonces WHERE device_id = ?", arguments: [deviceID])
                return (row["nonce"], row["expires_ms"])
            }
        }
    }

    public func putAttestation(_ record: AttestationRecord) async throws {
        try await wrap("store attestation") {
            let body = try Self.json(record)
            try await db.write { db in
                try db.execute(sql: "INSERT OR REPLACE INTO attestations (device_id, body, received_ms) VALUES (?, ?, ?)",
                               arguments: [record.deviceID, body, record.receivedMs])
            }
        }
    }

    public func attestation(deviceID: String) async throws -> AttestationRecord? {
        try await wrap("read attestation") {
            let body = try await db.read { db in
                try Data.fetchOne(db, sql: "SELECT body FROM attestations WHERE device_id = ?", arguments: [deviceID])
            }
            return try body.map { try JSONDecoder().decode(AttestationRecord.self, from: $0) }
        }
    }

    public func setFirmwareReference(model: String, pcrs: [String: String]?) async throws {
        try await wrap("store firmware reference") {
            let body = try pcrs.map { try Self.json($0) }
            try await db.write { db in
                if let body {
                    try db.execute(sql: "INSERT OR REPLACE INTO firmware_references (model, body) VALUES (?, ?)", arguments: [model, body])
                } else {
                    try db.execute(sql: "DELETE FROM firmware_references WHERE model = ?", arguments: [model])
                }
            }
        }
    }

    public func firmwareReferences() async throws -> [String: [String: String]] {
        try await wrap("read firmware references") {
            let rows = try await db.read { db in try Row.fetchAll(db, sql: "SELECT model, body FROM firmware_references") }
            var out: [String: [String: String]] = [:]
            for r in rows { out[r["model"]] = try JSONDecoder().decode([String: String].self, from: r["body"] as Data) }
            return out
        }
    }

    public func putEKCertificateAuthority(_ ca: EKCARecord) async throws {
        try await wrap("store EK CA") {
            let body = try Self.json(ca)
            try await db.write { db in
                try db.execute(sql: "INSERT OR REPLACE INTO ek_cas (fingerprint, body, added_ms) VALUES (?, ?, ?)",
                               arguments: [ca.fingerprint, body, ca.addedMs])
            }
        }
    }

    public func removeEKCertificateAuthority(fingerprint: String) async throws -> Bool {
        try await wrap("remove EK CA") {
            try await db.write { db -> Bool in
                try db.execute(sql: "DELETE FROM ek_cas WHERE fingerprint = ?", arguments: [fingerprint])
                return db.changesCount > 0
            }
        }
    }

    public func ekCertificateAuthorities() async throws -> [EKCARecord] {
        try await wrap("read EK CAs") {
            let bodies = try await db.read { db in try Data.fetchAll(db, sql: "SELECT body FROM ek_cas ORDER BY added_ms, fingerprint") }
            return try bodies.map { try JSONDecoder().decode(EKCARecord.self, from: $0) }
        }
    }
}
