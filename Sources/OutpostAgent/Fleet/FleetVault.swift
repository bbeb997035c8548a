// SecretsKeeper → VaultService: the controller's secrets (DeviceConfig.secrets)
// become vault secrets named controller.NAME, beside the console's own
// (`vault put`), which this adapter never touches.

import OutpostFleet
import OutpostProto

/// The vault as the controller client's secrets keeper. The vault is looked up
/// at each call: PID 1 opens it at boot and may close it before PERSIST goes.
struct FleetVault: SecretsKeeper {
    let vault: @Sendable () -> VaultService?

    func replaceControllerSecrets(_ secrets: [Outpost_Api_V1_Secret]) -> SecretsOutcome {
        guard let vault = vault() else { return .notStored(reason: "this device has no vault (PERSIST is not mounted)") }
        // Checked before anything is written: a closed vault means nothing changes anywhere.
        guard case .unlocked = vault.state else { return .notStored(reason: "the vault is not open (\(vault.state.line))") }
        let prefix = ConfigSecrets.vaultPrefix
        do {
            let held = try vault.secretNames().filter { $0.hasPrefix(prefix) }
            for secret in secrets { try vault.put(prefix + secret.name, Array(secret.value)) }
            let wanted = Set(secrets.map { prefix + $0.name })
            var removed: [String] = []
            for name in held where !wanted.contains(name) {
                try vault.remove(name)
                removed.append(String(name.dropFirst(prefix.count)))
            }
            return .stored(removed: removed)
        } catch {
            return .notStored(reason: "the vault refused them: \(error)")
        }
    }

    func controllerSecretNames() -> [String]? {
        guard let vault = vault(), let names = try? vault.secretNames() else { return nil }
        let prefix = ConfigSecrets.vaultPrefix
        return names.filter { $0.hasPrefix(prefix) }.map { String($0.dropFirst(prefix.count)) }
    }
}

extension FleetVault {
    /// DeviceInfo.vault: the vault's state and its one line, the TPM floor, and the controller's
    /// secrets it holds by name, length and SHA-256 (never a value), so the operator sees from the
    /// controller a vault that does not open and whether each secret arrived. Nil vault: no PERSIST.
    static func report(_ vault: VaultService?) -> Outpost_Api_V1_VaultInfo {
        var info = Outpost_Api_V1_VaultInfo()
        guard let vault else {
            info.state = .unavailable
            info.detail = "PERSIST is not mounted"
            return info
        }
        switch vault.state {
        case .unlocked(let detail): info.state = .unlocked; info.detail = detail
        case .locked(let reason): info.state = .locked; info.detail = reason
        case .unavailable(let reason): info.state = .unavailable; info.detail = reason
        }
        // The controller takes one line of at most 2048 bytes (WireCheck.vault); a longer reason is cut, not refused.
        info.detail = oneLine(info.detail, limit: 2048)
        if let floor = vault.floor { info.securityFloor = floor }
        guard case .unlocked = vault.state, let names = try? vault.secretNames() else { return info }
        let prefix = ConfigSecrets.vaultPrefix
        info.secrets = names.filter { $0.hasPrefix(prefix) && ConfigSecrets.validName(String($0.dropFirst(prefix.count))) }
            .prefix(ConfigSecrets.maximumCount)
            .compactMap { name in
                // A secret removed between the listing and here is simply not reported.
                guard let (bytes, sha256) = try? vault.fingerprint(name) else { return nil }
                var secret = Outpost_Api_V1_VaultSecret()
                secret.name = String(name.dropFirst(prefix.count))
                secret.sha256 = sha256
                secret.bytes = UInt32(clamping: bytes)
                return secret
            }
        return info
    }

    /// Newlines become spaces and the text is cut at a character boundary within `limit` UTF-8 bytes.
    static func oneLine(_ text: String, limit: Int) -> String {
        var out = ""
        var bytes = 0
        for c in text {
            let piece = c.isNewline ? " " : String(c)
            bytes += piece.utf8.count
            guard bytes <= limit else { break }
            out += piece
        }
        return out
    }
}
