// What the controller client drives and reads, implemented by the agent.
// The client never touches the update engine, the network manager or the
// reboot path itself: it hands them what the controller asked for.

import OutpostProto

/// The base-OS update engine. Calls come from the client's thread and must
/// return promptly; the engine reports its progress through
/// `DeviceStateSource.deviceInfo()` (UpdateStatus) and `FleetClient.stateChanged()`.
public protocol BaseOSUpdater: Sendable {
    /// The controller's desired base OS (also at boot, from the last good
    /// config). An empty version means no update is asked for. The engine
    /// skips a version that failed before unless its retry counter changed.
    func apply(_ baseOS: Outpost_Api_V1_BaseOS)
    /// The controller bumped the update-retry counter to `counter`: a failed
    /// version may be tried again.
    func retryFailedUpdate(counter: UInt32)
}

/// What a pushed network configuration came to.
public enum NetworkPushOutcome: Sendable, Equatable {
    /// It reached the controller and is kept.
    case applied
    /// It cut the device off or failed to apply; the previous one is back.
    case rolledBack(reason: String)
    /// Malformed; not applied.
    case rejected(reason: String)
}

/// The network manager (NetworkService.push): applies, tests, keeps or rolls back.
public protocol NetworkConfigurator: Sendable {
    /// May block while the new configuration is tested. `acceptance` is the
    /// client's own check that the device still reaches its controller over
    /// the port the candidate made active (nil: it does; else why not); a
    /// configuration it refuses throughout the test time is rolled back.
    func push(networkJSON: [UInt8], acceptance: @escaping @Sendable (_ port: String) -> String?) -> NetworkPushOutcome
}

/// The app instances (the agent's AppService). The controller's apps section,
/// whenever a config has one (also at boot, from the last good config); the
/// device then runs it instead of CONFIG's apps.json. Must return promptly:
/// the apps service acts on it in its own rounds.
public protocol AppsConfigurator: Sendable {
    /// nil: taken; else the one line why the section was refused (DeviceInfo.apps_error).
    func apply(apps: Outpost_Api_V1_AppsSection) -> String?
}

/// The device's vault, for DeviceConfig.secrets (the agent's VaultService). The client
/// calls it only with a config whose secrets were not withheld.
public protocol SecretsKeeper: Sendable {
    /// Makes the vault's controller secrets exactly `secrets`: each is written as
    /// `controller.NAME`, and `controller.*` secrets not among them are deleted.
    /// `.notStored` (the vault is not open) means nothing was written or deleted.
    func replaceControllerSecrets(_ secrets: [Outpost_Api_V1_Secret]) -> SecretsOutcome
    /// The names (without `controller.`) of the controller secrets the vault holds,
    /// nil when the vault is not open.
    func controllerSecretNames() -> [String]?
}

/// What became of a config's secrets.
public enum SecretsOutcome: Sendable, Equatable {
    /// All written; `removed` are the names deleted because the config no longer has them.
    case stored(removed: [String])
    /// Nothing written, and why (one line: the vault's state).
    case notStored(reason: String)
}

/// Reboot and shutdown on the controller's command. The agent records the
/// boot reason `controller`. Both may return before the machine goes down.
public protocol PowerControl: Sendable {
    func reboot(reason: String)
    func shutdown(reason: String)
}

/// The device state the client reports. Called from the client's thread.
public protocol DeviceStateSource: Sendable {
    /// Identity (os version, board...), slots, update status, last boot and
    /// ports. The client fills `handled`, `config_hash`, `network_push` and
    /// `time_unix_ms` itself.
    func deviceInfo() -> Outpost_Api_V1_DeviceInfo
    /// The watchdog as the agent feeds it; nil when there is none.
    func watchdogState() -> Outpost_Api_V1_WatchdogState?
    /// The running app instances' CPU time and memory, for each metrics report.
    func appMetrics() -> [Outpost_Api_V1_AppMetrics]
}

extension DeviceStateSource {
    /// A device without app instances reports none.
    public func appMetrics() -> [Outpost_Api_V1_AppMetrics] { [] }
}

/// Everything the agent hands the client.
public struct FleetDependencies: Sendable {
    public var updater: any BaseOSUpdater
    public var network: any NetworkConfigurator
    public var power: any PowerControl
    public var state: any DeviceStateSource
    /// nil: the device runs no apps (the section is ignored and apps_error says so).
    public var apps: (any AppsConfigurator)?
    /// nil: no vault (PERSIST is not mounted); a config's secrets are then not stored, and said so.
    public var secrets: (any SecretsKeeper)?
    /// The ways out to the controller, best first: the agent maps
    /// NetworkService.controllerPorts to routes (with each port's proxy).
    /// Empty: connect without binding to a port.
    public var routes: @Sendable () -> [ControllerRoute]
    /// The client's own lines ("registered as ...", errors). Default: into
    /// the log store, tagged "fleet".
    public var log: (@Sendable (String) -> Void)?
    /// Lines printed as they are, without the client's "fleet: " prefix ("attestation: passed");
    /// the device's console adds its own "outpost: ". Default: into the log store like `log`.
    public var console: (@Sendable (String) -> Void)?

    public init(updater: any BaseOSUpdater, network: any NetworkConfigurator, power: any PowerControl,
                state: any DeviceStateSource, routes: @escaping @Sendable () -> [ControllerRoute] = { [] },
                log: (@Sendable (String) -> Void)? = nil, console: (@Sendable (String) -> Void)? = nil,
                apps: (any AppsConfigurator)? = nil, secrets: (any SecretsKeeper)? = nil) {
        self.apps = apps
        self.secrets = secrets
        self.updater = updater
        self.network = network
        self.power = power
        self.state = state
        self.routes = routes
        self.log = log
        self.console = console
    }
}
