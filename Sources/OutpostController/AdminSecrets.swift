import Crypto
import Foundation
import OutpostProto

/// `POST /devices/REF/set-secret` {"name": N, "valueBase64": B64} and
/// `POST /devices/REF/remove-secret` {"name": N}: the config's secrets, which a
/// device with an attestation key gets only once attested. Nothing the admin
/// socket answers carries a value: a secret is shown as its name, length and SHA-256.
extension AdminRoutes {
    func secretChange(_ action: String, _ body: [String: Any]) throws -> ConfigChange {
        guard let name = body["name"] as? String else { throw ControllerError.invalidInput("name is missing") }
        if let problem = ConfigSecrets.nameProblem(name) { throw ControllerError.invalidInput(problem) }
        if action == "remove-secret" {
            return ConfigChange(apply: { c in
                guard let i = c.secrets.firstIndex(where: { $0.name == name }) else {
                    throw ControllerError.invalidInput("the device has no secret \(name)")
                }
                c.secrets.remove(at: i)
            }, report: ["removed": name])
        }
        guard let b64 = body["valueBase64"] as? String, let value = Data(base64Encoded: b64) else {
            throw ControllerError.invalidInput("valueBase64 is missing or not base64")
        }
        guard !value.isEmpty else { throw ControllerError.invalidInput("the value of secret \(name) is empty") }
        guard value.count <= ConfigSecrets.maximumValueBytes else {
            throw ControllerError.invalidInput("secret \(name): \(value.count) bytes, more than \(ConfigSecrets.maximumValueBytes)")
        }
        let secret = ConfigSecret.with {
            $0.name = name
            $0.value = value
        }
        return ConfigChange(apply: { c in Self.put(secret, into: &c) }, report: ["secret": Views.secretJSON(secret)])
    }

    /// Replaces or inserts, keeping the list sorted by name (the wire contract).
    static func put(_ secret: ConfigSecret, into c: inout DeviceConfig) {
        if let i = c.secrets.firstIndex(where: { $0.name == secret.name }) {
            c.secrets[i] = secret
        } else {
            let at = c.secrets.firstIndex { secret.name.utf8.lexicographicallyPrecedes($0.name.utf8) } ?? c.secrets.endIndex
            c.secrets.insert(secret, at: at)
        }
    }
}

extension Views {
    /// A device config for the admin socket: everything but the secrets' values.
    static func configJSON(_ c: DeviceConfig) -> Any {
        var shown = c
        shown.secrets = []
        var o = json(shown) as? [String: Any] ?? [:]
        if !c.secrets.isEmpty { o["secrets"] = c.secrets.map(secretJSON) }
        return o
    }

    /// A secret's name, length and SHA-256: enough to check it is the one meant.
    static func secretJSON(_ s: ConfigSecret) -> [String: Any] {
        ["name": s.name, "bytes": s.value.count, "sha256": sha256Hex(s.value)]
    }

    static func sha256Hex(_ d: Data) -> String { SHA256.hash(data: d).map { String(format: "%02x", $0) }.joined() }
}

extension WireCheck {
    /// A config's secrets as the contract allows them (names, sizes, order, count), before
    /// the controller stores or serves them.
    static func secrets(_ secrets: [ConfigSecret]) throws(ControllerError) {
        if let problem = ConfigSecrets.problem(secrets) { throw .invalidInput(problem) }
    }
}

extension Views {
    /// The vault state's word, as the device's console says it.
    static func vaultStateName(_ s: VaultInfo.State) -> String {
        switch s {
        case .unspecified: return "unknown"
        case .unlocked: return "unlocked"
        case .locked: return "locked"
        case .unavailable: return "unavailable"
        case .UNRECOGNIZED(let v): return "state-\(v)"
        }
    }

    /// Whether the device holds a secret the controller set, by the SHA-256 it reports:
    /// "delivered" (same hash), "differs" (another value) or "not yet" (not in the open vault).
    static func delivery(of secret: ConfigSecret, in vault: VaultInfo) -> String {
        guard let held = vault.secrets.first(where: { $0.name == secret.name }) else { return "not yet" }
        return held.sha256 == sha256Hex(secret.value) && Int(held.bytes) == secret.value.count ? "delivered" : "differs"
    }

    /// `device show`'s vault: what the device's latest info says of it, and for each secret in
    /// the config whether the device holds that value. Nil when the device reports no vault
    /// (an older device, or no info yet): delivery is then unknown, not "not yet".
    static func vaultJSON(_ info: DeviceInfo?, config: DeviceConfig) -> [String: Any]? {
        guard let info, info.hasVault else { return nil }
        let v = info.vault
        var o: [String: Any] = ["state": vaultStateName(v.state), "detail": v.detail]
        if v.hasSecurityFloor { o["floor"] = Int(clamping: v.securityFloor) }
        o["held"] = v.secrets.map { ["name": $0.name, "bytes": Int($0.bytes), "sha256": $0.sha256] as [String: Any] }
        o["secrets"] = config.secrets.map { ["name": $0.name, "delivery": delivery(of: $0, in: v)] }
        let configured = Set(config.secrets.map(\.name))
        o["notInConfig"] = v.secrets.map(\.name).filter { !configured.contains($0) }
        return o
    }
}
