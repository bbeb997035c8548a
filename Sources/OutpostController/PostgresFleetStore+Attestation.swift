import Foundation
import Logging
import PostgresNIO

/// PostgreSQL: attestation keys, nonces and the last quote per device (schema version 5), as
/// SQLite keeps them (JSON records).
extension PostgresFleetStore {
    public func putAttestationKey(_ key: AttestationKeyRecord) async throws {
        try await run("store attestation key") {
            let body = try SQLiteFleetStore.json(key)
            try await client.query("""
                INSERT INTO attestation_keys (device_id, body) VALUES (\(key.deviceID), \(body))
                ON CONFLICT (device_id) DO UPDATE SET body = EXCLUDED.body
                """, logger: logger)
        }
    }

    public func attestationKey(deviceID: String) async throws -> AttestationKeyRecord? {
        try await run("read attestation key") {
            for try await body in try await client.query("SELECT body FROM attestation_keys WHERE device_id = \(deviceID)",
                                                         logger: logger).decode(Data.self) {
                return try JSONDecoder().decode(AttestationKeyRecord.self, from: body)
            }
            return nil
        }
    }

    public func changeAttestationKey(deviceID: String,
                                     _ change: @Sendable (AttestationKeyRecord) throws -> AttestationKeyRecord?) async throws -> AttestationKeyRecord? {
        let logger = self.logger
        return try await transaction("update attestation key") { c -> AttestationKeyRecord? in
            var current: AttestationKeyRecord?
            for try await body in try await c.query("SELECT body FROM attestation_keys WHERE device_id = \(deviceID) FOR UPDATE",
                                                    logger: logger).decode(Data.self) {
                current = try JSONDecoder().decode(AttestationKeyRecord.self, from: body)
            }
            guard let current else { return nil }
            guard let changed = try change(current) else { return current }
            let body = try SQLiteFleetStore.json(changed)
            try await c.query("UPDATE attestation_keys SET body = \(body) WHERE device_id = \(deviceID)", logger: logger)
            return changed
        }
    }

    public func putNonce(deviceID: String, nonce: Data, expiresMs: Int64) async throws {
        try await run("store nonce") {
            try await client.query("""
                INSERT INTO attestation_nonces (device_id, nonce, expires_ms) VALUES (\(deviceID), \(nonce), \(expiresMs))
                ON CONFLICT (device_id) DO UPDATE SET nonce = EXCLUDED.nonce, expires_ms = EXCLUDED.expires_ms
                """, logger: logger)
        }
    }

    /// One statement deletes and returns: two replicas given the same quote cannot both take the nonce.
    public func takeNonce(deviceID: String) async throws -> (nonce: Data, expiresMs: Int64)? {
        try await run("take nonce") {
            for try await (nonce, expires) in try await client.query(
                "DELETE FROM attestation_nonces WHERE device_id = \(deviceID) RETURNING nonce, expires_ms", logger: logger
            ).decode((Data, Int64).self) {
                return (nonce, expires)
            }
            return nil
        }
    }

    public func putAttestation(_ record: AttestationRecord) async throws {
        try await run("store attestation") {
            let body = try SQLiteFleetStore.json(record)
            try await client.query("""
                INSERT INTO attestations (device_id, body, received_ms) VALUES (\(record.deviceID), \(body), \(record.receivedMs))
                ON CONFLICT (device_id) DO UPDATE SET body = EXCLUDED.body, received_ms = EXCLUDED.received_ms
                """, logger: logger)
        }
    }

    public func attestation(deviceID: String) async throws -> AttestationRecord? {
        try await run("read attestation") {
            for try await body in try await client.query("SELECT body FROM attestations WHERE device_id = \(deviceID)",
                                                         logger: logger).decode(Data.self) {
                return try JSONDecoder().decode(AttestationRecord.self, from: body)
            }
            return nil
        }
    }

    public func setFirmwareReference(model: String, pcrs: [String: String]?) async throws {
        try await run("store firmware reference") {
            if let pcrs {
                let body = try SQLiteFleetStore.json(pcrs)
                try await client.query("""
                    INSERT INTO firmware_references (model, body) VALUES (\(model), \(body))
                    ON CONFLICT (model) DO UPDATE SET body = EXCLUDED.body
                    """, logger: logger)
            } else {
                try await client.query("DELETE FROM firmware_references WHERE model = \(model)", logger: logger)
            }
        }
    }

    public func firmwareReferences() async throws -> [String: [String: String]] {
        try await run("read firmware references") {
            var out: [String: [String: String]] = [:]
            for try await (model, body) in try await client.query("SELECT model, body FROM firmware_references",
                                                                  logger: logger).decode((String, Data).self) {
                out[model] = try JSONDecoder().decode([String: String].self, from: body)
            }
            return out
        }
    }

    public func putEKCertificateAuthority(_ ca: EKCARecord) async throws {
        try await run("store EK CA") {
            let body = try SQLiteFleetStore.json(ca)
            try await client.query("""
                INSERT INTO ek_cas (fingerprint, body, added_ms) VALUES (\(ca.fingerprint), \(body), \(ca.addedMs))
                ON CONFLICT (fingerprint) DO UPDATE SET body = EXCLUDED.body, added_ms = EXCLUDED.added_ms
                """, logger: logger)
        }
    }

    public func removeEKCertificateAuthority(fingerprint: String) async throws -> Bool {
        try await run("remove EK CA") {
            for try await _ in try await client.query("DELETE FROM ek_cas WHERE fingerprint = \(fingerprint) RETURNING fingerprint",
                                                      logger: logger).decode(String.self) {
                return true
            }
            return false
        }
    }

    public func ekCertificateAuthorities() async throws -> [EKCARecord] {
        try await run("read EK CAs") {
            var out: [EKCARecord] = []
            for try await body in try await client.query("SELECT body FROM ek_cas ORDER BY added_ms, fingerprint",
                                                         logger: logger).decode(Data.self) {
                out.append(try JSONDecoder().decode(EKCARecord.self, from: body))
            }
            return out
        }
    }
}
