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
