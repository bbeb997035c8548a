// Where an app's instance directory lives: plain PERSIST, or, for an app
// whose config says `"vault": true`, inside the device's encrypted vault.
//
//   PERSIST/apps/images/                      content store (public, hash-verified): always plain
//   PERSIST/apps/instances/<name>/            a plain app's overlays, console log, counters
//   <vault mount>/apps/instances/<name>/      a vault app's, readable only while the vault is open
//
// The agent tells the service what the vault was at boot (OutpostAgent's
// VaultService opens it once, before the apps start). A vault app never falls
// back to plain PERSIST: with the vault closed it does not start, and its
// status names the vault's own reason. An app whose config moves it between
// the two places keeps its old directory where it is and is refused until it
// is purged (nothing is copied out of, or into, the encryption behind the
// operator's back).

/// What the device's vault offers the apps, as the agent found it at boot.
public enum AppVault: Sendable, Equatable {
    /// The vault is open: vault apps keep their instances under `root`/instances.
    case open(root: String)
    /// Locked or unavailable: vault apps do not start; `reason` is the vault's own line.
    case closed(reason: String)

    /// The instances directory inside the vault (nil while it is closed).
    public var instancesDirectory: String? {
        guard case let .open(root) = self else { return nil }
        return root + "/instances"
    }
}
