import Foundation
import OutpostProto
import SwiftProtobuf

/// A refusal of a device request: the HTTP status and the one line of text
/// that goes back in the body (and into the controller's log).
public struct APIError: Error, Sendable, Equatable, CustomStringConvertible {
    public var status: Int
    public var message: String
    public init(_ status: Int, _ message: String) {
        self.status = status
        self.message = message
    }
    public var description: String { "\(status) \(message)" }

    static func malformed(_ message: String) -> APIError { APIError(400, message) }
}

/// Decoding and checking device bodies before anything is stored.
///
/// Unknown fields are refused: the controller is always upgraded before the
/// devices that send new fields, so an unknown field means a body that is not
/// what it claims to be (and random bytes, which often decode as a message
/// made only of unknown fields, are caught here).
enum WireCheck {
    static func decode<M: SwiftProtobuf.Message>(_ type: M.Type, _ bytes: Data) throws(APIError) -> M {
        let m: M
        do { m = try M(serializedBytes: bytes) } catch {
            throw .malformed("malformed \(M.protoMessageName): \(describe(error))")
        }
        return m
    }

    static func describe(_ error: Error) -> String {
        switch error {
        case let e as BinaryDecodingError:
            switch e {
            case .truncated: return "truncated (a field runs past the end of the body)"
            case .malformedProtobuf: return "not a protobuf encoding (bad tag or wire type)"
            case .invalidUTF8: return "a string field is not UTF-8"
            case .messageDepthLimit: return "nested too deeply"
            default: return "\(e)"
            }
        default:
            return "\(error)"
        }
    }

    static func noUnknown(_ u: UnknownStorage, _ where_: String) throws(APIError) {
        guard u.data.isEmpty else { throw .malformed("\(where_) has fields this controller does not know (\(u.data.count) bytes)") }
    }

    static func register(_ bytes: Data) throws(APIError) -> RegisterRequest {
        let r = try decode(RegisterRequest.self, bytes)
        try noUnknown(r.unknownFields, "RegisterRequest")
        guard !r.deviceCertPem.isEmpty else { throw .malformed("RegisterRequest.device_cert_pem is empty") }
        try serial(r.serial, "RegisterRequest.serial")
        guard r.ekPublic.isEmpty == r.akPublic.isEmpty else {
            throw .malformed("RegisterRequest has \(r.ekPublic.isEmpty ? "ak_public without ek_public" : "ek_public without ak_public")")
        }
        guard r.ekPublic.count <= 1024, r.akPublic.count <= 1024, r.ekCertificate.count <= 8192 else {
            throw .malformed("RegisterRequest: ek_public, ak_public (1024) or ek_certificate (8192) is too long")
        }
        return r
    }

    static func serial(_ s: String, _ field: String) throws(APIError) {
        guard !s.isEmpty, s.utf8.count <= 128, s != "*",
              s.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7f }) else {
            throw .malformed("\(field) '\(s.prefix(40))' must be 1–128 printable ASCII characters, not '*'")
        }
    }

    static func config(_ bytes: Data) throws(APIError) -> ConfigRequest {
        let r = try decode(ConfigRequest.self, bytes)
        try noUnknown(r.unknownFields, "ConfigRequest")
        let h = r.configHash
        guard h.isEmpty || (h.utf8.count == 64 && h.utf8.allSatisfy { isHex($0) }) else {
            throw .malformed("ConfigRequest.config_hash is not empty nor 64 hex digits")
        }
        guard r.attestationToken.isEmpty || r.attestationToken.count == 32 else {
            throw .malformed("ConfigRequest.attestation_token is \(r.attestationToken.count) bytes, not empty nor 32")
        }
        return r
    }

    static func credentialAnswer(_ bytes: Data) throws(APIError) -> CredentialAnswer {
        let a = try decode(CredentialAnswer.self, bytes)
        try noUnknown(a.unknownFields, "CredentialAnswer")
        guard (1...64).contains(a.secret.count) else { throw .malformed("CredentialAnswer.secret is \(a.secret.count) bytes, not 1 to 64") }
        return a
    }

    /// The sizes a TPM can produce; the contents are the verifier's to judge.
    static func quote(_ bytes: Data) throws(APIError) -> AttestationQuote {
        let q = try decode(AttestationQuote.self, bytes)
        try noUnknown(q.unknownFields, "AttestationQuote")
        guard !q.attest.isEmpty, q.attest.count <= 1024 else { throw .malformed("AttestationQuote.attest is \(q.attest.count) bytes, not 1 to 1024") }
        guard (1...32).contains(q.signatureR.count), (1...32).contains(q.signatureS.count) else {
            throw .malformed("AttestationQuote.signature_r/s are \(q.signatureR.count)/\(q.signatureS.count) bytes, not 1 to 32 each")
        }
        guard (1...24).contains(q.pcrs.count) else { throw .malformed("AttestationQuote.pcrs has \(q.pcrs.count) values, not 1 to 24") }
        for (index, value) in q.pcrs.sorted(by: { $0.key < $1.key }) {
            guard index < 24, value.count == 32 else {
                throw .malformed("AttestationQuote.pcrs[\(index)] is \(value.count) bytes\(index < 24 ? "" : " for a PCR above 23"), not a SHA-256 value")
            }
        }
        guard q.eventLog.count <= 512 << 10 else { throw .malformed("AttestationQuote.event_log is larger than 512 KiB") }
        guard q.slot.utf8.count <= 36, q.osVersion.utf8.count <= 128, q.board.utf8.count <= 128,
              (q.slot + q.osVersion + q.board).unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7f }) else {
            throw .malformed("AttestationQuote.slot, os_version or board is not short printable ASCII")
        }
        return q
    }

    static func info(_ bytes: Data) throws(APIError) -> DeviceInfo {
        let i = try decode(DeviceInfo.self, bytes)
        try noUnknown(i.unknownFields, "DeviceInfo")
        try noUnknown(i.identity.unknownFields, "DeviceInfo.identity")
        for s in i.slots { try noUnknown(s.unknownFields, "DeviceInfo.slots") }
        try noUnknown(i.update.unknownFields, "DeviceInfo.update")
        try noUnknown(i.lastBoot.unknownFields, "DeviceInfo.last_boot")
        for p in i.ports { try noUnknown(p.unknownFields, "DeviceInfo.ports") }
        try noUnknown(i.networkPush.unknownFields, "DeviceInfo.network_push")
        try noUnknown(i.handled.unknownFields, "DeviceInfo.handled")
        for a in i.apps { try noUnknown(a.unknownFields, "DeviceInfo.apps") }
        guard i.timeUnixMs > 0 else { throw .malformed("DeviceInfo.time_unix_ms is missing") }
        if case .UNRECOGNIZED(let v) = i.update.step { throw .malformed("DeviceInfo.update.step \(v) is not a known step") }
        if case .UNRECOGNIZED(let v) = i.identity.identityKind { throw .malformed("DeviceInfo.identity.identity_kind \(v) is not known") }
        if case .UNRECOGNIZED(let v) = i.networkPush.outcome { throw .malformed("DeviceInfo.network_push.outcome \(v) is not known") }
        guard i.slots.count <= 8, i.ports.count <= 64, i.apps.count <= 256 else { throw .malformed("DeviceInfo has too many slots, ports or apps") }
        try vault(i.vault)
        return i
    }

    /// The longest vault detail kept: a locked vault's reason names paths and PCR values, never pages.
    static let maximumVaultDetailBytes = 2048

    /// DeviceInfo.vault: a known state, a one-line detail, and at most as many secrets as a
    /// config can hold, each a config secret's name with a SHA-256 and a length the vault allows.
    static func vault(_ v: VaultInfo) throws(APIError) {
        try noUnknown(v.unknownFields, "DeviceInfo.vault")
        if case .UNRECOGNIZED(let n) = v.state { throw .malformed("DeviceInfo.vault.state \(n) is not known") }
        guard v.detail.utf8.count <= maximumVaultDetailBytes, !v.detail.contains(where: \.isNewline) else {
            throw .malformed("DeviceInfo.vault.detail is not one line of at most \(maximumVaultDetailBytes) bytes")
        }
        guard v.secrets.count <= ConfigSecrets.maximumCount else {
            throw .malformed("DeviceInfo.vault.secrets has \(v.secrets.count) entries, more than \(ConfigSecrets.maximumCount)")
        }
        for (n, s) in v.secrets.enumerated() {
            try noUnknown(s.unknownFields, "DeviceInfo.vault.secrets[\(n)]")
            if let problem = ConfigSecrets.nameProblem(s.name) { throw .malformed("DeviceInfo.vault.secrets[\(n)]: \(problem)") }
            guard s.sha256.utf8.count == 64, s.sha256.utf8.allSatisfy(isHex) else {
                throw .malformed("DeviceInfo.vault.secrets[\(n)].sha256 is not 64 lower-case hex digits")
            }
            guard s.bytes <= ConfigSecrets.maximumValueBytes else {
                throw .malformed("DeviceInfo.vault.secrets[\(n)].bytes \(s.bytes) is more than \(ConfigSecrets.maximumValueBytes)")
            }
        }
    }

    static func metrics(_ bytes: Data) throws(APIError) -> DeviceMetrics {
        let m = try decode(DeviceMetrics.self, bytes)
        try noUnknown(m.unknownFields, "DeviceMetrics")
        for p in m.ports { try noUnknown(p.unknownFields, "DeviceMetrics.ports") }
        for a in m.apps {
            try noUnknown(a.unknownFields, "DeviceMetrics.apps")
            guard a.cpuSeconds.isFinite, a.cpuSeconds >= 0 else { throw .malformed("DeviceMetrics.apps.cpu_seconds \(a.cpuSeconds) is not a time") }
        }
        try noUnknown(m.watchdog.unknownFields, "DeviceMetrics.watchdog")
        guard m.timeUnixMs > 0 else { throw .malformed("DeviceMetrics.time_unix_ms is missing") }
        guard m.cpuPercent.isFinite, m.cpuPercent >= 0, m.cpuPercent <= 100 else {
            throw .malformed("DeviceMetrics.cpu_percent \(m.cpuPercent) is not within 0–100")
        }
        guard m.ports.count <= 64, m.apps.count <= 256 else { throw .malformed("DeviceMetrics has too many ports or apps") }
        return m
    }

    static func logs(_ bytes: Data) throws(APIError) -> LogBatch {
        let b = try decode(LogBatch.self, bytes)
        try noUnknown(b.unknownFields, "LogBatch")
        guard b.droppedBefore < UInt64(Int64.max) else { throw .malformed("LogBatch.dropped_before is out of range") }
        for (n, e) in b.entries.enumerated() {
            try noUnknown(e.unknownFields, "LogBatch.entries[\(n)]")
            guard e.sequence > 0, e.sequence < UInt64(Int64.max) else {
                throw .malformed("LogBatch.entries[\(n)].sequence \(e.sequence) is not within 1..<2^63")
            }
            if case .UNRECOGNIZED(let v) = e.severity { throw .malformed("LogBatch.entries[\(n)].severity \(v) is not known") }
        }
        return b
    }

    static func isHex(_ c: UInt8) -> Bool {
        (c >= 0x30 && c <= 0x39) || (c >= 0x61 && c <= 0x66)
    }
}
