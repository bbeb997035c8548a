// The rules for DeviceConfig.secrets, shared by the controller (which refuses
// to store or serve a bad one) and the device (which refuses to apply one).
// Hand-written: scripts/gen-proto.sh leaves it alone.

public typealias ConfigSecret = Outpost_Api_V1_Secret

/// Limits of DeviceConfig.secrets. The device stores each secret in its vault
/// as `controller.NAME`, so a name must be a vault name after that prefix.
public enum ConfigSecrets {
    /// The device's vault file-name prefix for secrets sent by the controller.
    public static let vaultPrefix = "controller."
    /// The vault's limit for one secret (VaultService.maximumSecretBytes).
    public static let maximumValueBytes = 4096
    /// Enough for any sane device; bounds what one config can write to the vault.
    public static let maximumCount = 64
    /// 64 (the vault's name limit) less the prefix.
    public static let maximumNameBytes = 64 - vaultPrefix.utf8.count

    /// 1–53 of [A-Za-z0-9._-], not starting with a dot.
    public static func validName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= maximumNameBytes && name.first != "."
            && name.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A)
                                      || $0 == 0x2E || $0 == 0x5F || $0 == 0x2D }
    }

    /// The one-line reason a name cannot be a secret's, nil when it can.
    public static func nameProblem(_ name: String) -> String? {
        validName(name) ? nil
            : "'\(String(name.prefix(40)))' is not a secret name (1-\(maximumNameBytes) of A-Z a-z 0-9 . _ -, not starting with a dot)"
    }

    /// The one-line reason `secrets` is not a valid DeviceConfig.secrets
    /// (bad name, oversize value, duplicate or unsorted names, too many), nil when it is.
    public static func problem(_ secrets: [ConfigSecret]) -> String? {
        if secrets.count > maximumCount { return "\(secrets.count) secrets, more than \(maximumCount)" }
        var previous: String?
        for secret in secrets {
            if let problem = nameProblem(secret.name) { return problem }
            if secret.value.count > maximumValueBytes {
                return "secret \(secret.name): \(secret.value.count) bytes, more than \(maximumValueBytes)"
            }
            if let previous, previous == secret.name { return "secret \(secret.name) appears twice" }
            if let previous, !(previous.utf8.lexicographicallyPrecedes(secret.name.utf8)) {
                return "secrets not sorted by name (\(secret.name) after \(previous))"
            }
            previous = secret.name
        }
        return nil
    }
}
