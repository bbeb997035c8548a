// DeviceConfig.secrets on the device: stored in the vault as controller.NAME
// (never in the saved last good config, never on the console), or, when the
// controller withheld them, one line saying why.
//
//   config 200 ─▶ secrets well-formed? (else the config is refused)
//              ─▶ withheld?  one warning line with the controller's last attestation
//              ─▶ save the config with names only ─▶ vault: write controller.*, delete dropped
//
// The saved config keeps each secret's name with an empty value: at the next
// boot the client sees which secrets the vault should hold, and when the vault
// is open but lacks one (it was locked when they came, or the device stopped
// in between) it asks for the config again instead of answering 304.

import OutpostProto

extension FleetClient {
    /// The config response as it may be saved on PERSIST: the secrets' names only.
    static func withoutSecretValues(_ response: Outpost_Api_V1_ConfigResponse) -> Outpost_Api_V1_ConfigResponse {
        var kept = response
        kept.config.secrets = response.config.secrets.map { s in Outpost_Api_V1_Secret.with { $0.name = s.name } }
        return kept
    }

    /// Why the controller withheld the secrets, from its last attestation of this device.
    static func withheldReason(_ a: Outpost_Api_V1_ConfigAttestation) -> String {
        guard a.hasLast else { return "this boot is not attested (the controller has no attestation of it)" }
        return "this boot is not attested (the controller's last attestation: \(a.last.passed ? "passed, with another boot's token" : a.last.reason))"
    }

    /// Writes a served config's secrets into the vault, or says in one line why not.
    func storeSecrets(_ secrets: [Outpost_Api_V1_Secret]) {
        let names = secrets.map(\.name)
        guard let keeper = dependencies.secrets else {
            if !secrets.isEmpty { note("secrets: \(secrets.count) not stored: this device has no vault (PERSIST is not mounted)", severity: .warning) }
            return
        }
        switch keeper.replaceControllerSecrets(secrets) {
        case .stored(let removed):
            // The vault's secrets are in the info (DeviceInfo.vault): it is composed again, and
            // sent when the vault's report differs from the last one sent.
            loop.withLock { $0.infoDirty = true }
            if !secrets.isEmpty {
                note("secrets: \(secrets.count) stored in the vault (\(names.joined(separator: ", ")))")
            }
            if !removed.isEmpty {
                note("secrets: \(removed.count) removed from the vault (\(removed.joined(separator: ", ")))")
            }
        case .notStored(let reason):
            // A config without secrets and a closed vault: nothing to store, nothing to say.
            if !secrets.isEmpty {
                note("secrets: \(secrets.count) not stored (\(names.joined(separator: ", "))): \(reason); "
                     + "asked for again at a boot with the vault open", severity: .warning)
            }
        }
    }

    /// At boot, before the first poll: the saved config names secrets the open vault lacks,
    /// so the config is asked for again (an empty hash gets the whole config back).
    func secretsMissingFromVault(_ saved: Outpost_Api_V1_DeviceConfig) -> [String] {
        guard !saved.secrets.isEmpty, let held = dependencies.secrets?.controllerSecretNames() else { return [] }
        let have = Set(held)
        return saved.secrets.map(\.name).filter { !have.contains($0) }
    }
}
