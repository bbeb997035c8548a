// The controller client (OutpostFleet.FleetClient) as one of PID 1's
// components. CONFIG decides: no controller-url means an unmanaged device,
// said once on the console and in status, and nothing starts. A managed one
// gets a client wired to the agent's real parts (FleetAdapters.swift), every
// console line (early boot's too, from Console's buffer) in its log store,
// and the update test window's extra condition: the controller answered.

#if canImport(Glibc)
import Glibc
#endif
import OutpostFleet
import OutpostProto
import OutpostTrust
import Synchronization
import OutpostEarlyBoot

/// A managed device's client and what the agent needs beside it.
public final class FleetAgent: Sendable {
    public let client: FleetClient
    /// Which identity the client uses and, for the file one, why (IdentitySelection).
    public let identity: String
    /// Set by the first run of the component body; a restarted body reuses the running client.
    let started = Atomic<Bool>(false)

    init(client: FleetClient, identity: String) {
        self.client = client
        self.identity = identity
    }
}

/// Whether the device is managed, as status shows it.
public enum FleetSetup: Sendable {
    case managed(FleetAgent)
    /// Unmanaged or not started, and why.
    case off(String)
}

enum FleetComponent {
    static let configDirectory = "/config"

    /// Builds the client when CONFIG names a controller. Call before the
    /// components start, so the update service knows the commit condition
    /// before a trial boot's test window begins.
    static func setup(agent: Agent) -> FleetSetup {
        func off(_ why: String, warning: Bool = false) -> FleetSetup {
            Console.line((warning ? "warning: fleet: " : "fleet: ") + why)
            Console.discardBuffer()
            return .off(why)
        }
        guard let persist = agent.persistMount else { return off("not started: PERSIST is not mounted", warning: true) }
        let configuration: FleetConfiguration
        do {
            guard let loaded = try FleetConfiguration.load(configDirectory: configDirectory, persistDirectory: persist,
                                                           osVersion: agent.version) else {
                return off("unmanaged (no controller-url on CONFIG)")
            }
            configuration = loaded
        } catch {
            return off("not started: \(error)", warning: true)
        }
        let network = agent.network
        let dependencies = FleetDependencies(
            updater: agent.update.map { FleetUpdater(service: $0) } ?? NoUpdater(),
            network: FleetNetwork(service: network),
            power: FleetPower(supervisor: agent.supervisor),
            state: AgentStateSource(agent: agent),
            routes: { network?.controllerRoutes() ?? [] },
            // The client's own lines go to the console, and from there into its log store.
            log: { line in
                // "warning: fleet: …": the console's classifier reads the severity first.
                Console.line(line.hasPrefix("warning: ") ? "warning: fleet: " + line.dropFirst("warning: ".count) : "fleet: " + line)
            },
            // "attestation: passed" / "attestation: failed: PCR 8: expected …, actual …", shown as
            // "outpost: attestation: …" (Console.line adds the prefix).
            console: { line in Console.line(line) },
            apps: FleetApps(agent: agent),
            // The config's secrets go into the vault as controller.NAME (FleetVault.swift).
            secrets: FleetVault(vault: { agent.vault }))
        // The TPM when it works, else the file identity and why: never silently.
        let choice: IdentityChoice
        do {
            choice = try IdentitySelection.choose(directory: configuration.stateDirectory, serial: configuration.serial)
        } catch {
            return off("not started: \(error)", warning: true)
        }
        Console.line((choice.inTPM ? "fleet: identity: " : "warning: fleet: identity: ") + choice.status)
        // Attestation needs the TPM identity; a TPM without a working AK runs unattested and says why.
        var attestor: (any DeviceAttestor)?
        var identityStatus = choice.status
        if choice.inTPM {
            mountSecurityFS()
            do {
                attestor = TPMDeviceAttestor(attestor: try TPMAttestor())
            } catch {
                identityStatus += "; no attestation key: \(error)"
                Console.line("warning: fleet: attestation: no attestation key: \(error); this device is not attested")
            }
        } else {
            Console.line("fleet: attestation: not attested (file identity)")
        }
        let client: FleetClient
        do {
            client = try FleetClient(configuration: configuration, dependencies: dependencies, identity: choice.identity,
                                     attestor: attestor, identityStatus: identityStatus)
        } catch {
            return off("not started: \(error)", warning: true)
        }
        Console.attach { line in
            let (source, severity, text) = classify(line.message)
            _ = try? client.logStore.append(source: source, severity: severity, message: text,
                                            timeUnixMs: line.timeUnixMs)
        }
        if let update = agent.update {
            do {
                let tls = try client.identity.tlsContext(trusting: [configuration.rootCAFile])
                let controller = configuration.controllerURL.hostPort
                update.attachController(downloadTLS: tls, onChange: { client.stateChanged() }, verdict: { seconds in
                    client.controllerReachable(within: .seconds(seconds))
                        ? nil : "the controller \(controller) was not reachable during the \(seconds) s test window"
                })
            } catch {
                Console.line("warning: fleet: no TLS context for downloads: \(error)")
            }
        }
        Console.line("fleet: managed by \(configuration.controllerURL.hostPort) (serial \(client.identity.serial))")
        return .managed(FleetAgent(client: client, identity: identityStatus))
    }

    /// The firmware's event log (sent with each quote, for diagnosis) is in securityfs, which
    /// nothing else mounts. Best effort: `lsm` is there whenever securityfs is mounted, and a
    /// kernel without it just sends no event log.
    static func mountSecurityFS() {
        let dir = "/sys/kernel/security"
        guard access(dir, F_OK) == 0, access(dir + "/lsm", F_OK) != 0 else { return }
        try? Sys.mount(source: "securityfs", target: dir, type: "securityfs", flags: UInt(MS_NOSUID | MS_NODEV | MS_NOEXEC))
    }

    static func spec(_ fleet: FleetAgent) -> ComponentSpec {
        ComponentSpec(name: "fleet", livenessDeadlineMilliseconds: 30_000, body: .task { context in
            if !fleet.started.exchange(true, ordering: .acquiringAndReleasing) {
                do {
                    try fleet.client.start()
                } catch {
                    fleet.started.store(false, ordering: .releasing)
                    throw error
                }
            }
            try context.beat()
            while context.sleep(for: .milliseconds(5000)) { try context.beat() }
            // The system is stopping: join the client's thread, flush the log store.
            fleet.client.stop()
        })
    }

    /// The log entry's source, severity and text from a console line's prefixes: the entry
    /// carries them as fields, so the text loses them (`device logs` shows "fleet: managed by",
    /// not "fleet: fleet: managed by").
    static func classify(_ message: String) -> (source: String, severity: Outpost_Api_V1_Severity, text: String) {
        var text = Substring(message)
        var severity = Outpost_Api_V1_Severity.info
        if text.hasPrefix("warning: ") {
            severity = .warning
            text = text.dropFirst("warning: ".count)
        } else if text.hasPrefix("error: ") {
            severity = .error
            text = text.dropFirst("error: ".count)
        }
        // An app's console line: "app:NAME: text", source "app:NAME".
        if text.hasPrefix("app:") {
            let name = text.dropFirst(4).prefix { $0 != ":" }
            let rest = text.dropFirst(4 + name.count)
            if AppsComponent.isAppName(name), rest.hasPrefix(": ") { return ("app:" + name, severity, String(rest.dropFirst(2))) }
        }
        let word = text.prefix { $0 != ":" && $0 != " " }
        let sources: Set<Substring> = ["update", "network", "watchdog", "fleet", "component", "storage", "power", "debug", "halt",
                                       "apps"]
        guard sources.contains(word), text.dropFirst(word.count).hasPrefix(": ") else { return ("outpostd", severity, String(text)) }
        return (String(word), severity, String(text.dropFirst(word.count + 2)))
    }
}

/// `fleet` in `outpostd status --json`: the controller connection, or why there is none.
public struct FleetStatusDocument: Encodable, Sendable, Equatable {
    public var managed: Bool
    public var note: String?
    public var controller: String?
    public var registered: Bool
    public var deviceId: String?
    public var configHash: String?
    public var secondsSinceContact: Int?
    public var lastError: String?
    public var pendingInfo: Int
    public var logBacklog: UInt64
    public var route: String?
    /// The identity line: "device key in the TPM (/dev/tpmrm0)" or why not.
    public var identity: String?
    /// This boot's attestation ("passed", "failed: PCR 8: …"); null for the file identity or before it ran.
    public var attestation: String?

    init(_ setup: FleetSetup) {
        switch setup {
        case .off(let why):
            self.init(managed: false, note: why, controller: nil, registered: false, deviceId: nil, configHash: nil,
                      secondsSinceContact: nil, lastError: nil, pendingInfo: 0, logBacklog: 0, route: nil)
        case .managed(let fleet):
            let s = fleet.client.status
            self.init(managed: true, note: nil, controller: fleet.client.configuration.controllerURL.hostPort,
                      registered: s.registered, deviceId: s.deviceID, configHash: s.configHash.isEmpty ? nil : s.configHash,
                      secondsSinceContact: s.secondsSinceContact, lastError: s.lastError, pendingInfo: s.pendingInfo,
                      logBacklog: s.logBacklog, route: s.route)
            identity = fleet.identity
            attestation = s.attestation
        }
    }

    init(managed: Bool, note: String?, controller: String?, registered: Bool, deviceId: String?, configHash: String?,
         secondsSinceContact: Int?, lastError: String?, pendingInfo: Int, logBacklog: UInt64, route: String?) {
        self.managed = managed
        self.note = note
        self.controller = controller
        self.registered = registered
        self.deviceId = deviceId
        self.configHash = configHash
        self.secondsSinceContact = secondsSinceContact
        self.lastError = lastError
        self.pendingInfo = pendingInfo
        self.logBacklog = logBacklog
        self.route = route
        self.identity = nil
        self.attestation = nil
    }

    private enum Keys: String, CodingKey {
        case managed, note, controller, registered, deviceId, configHash, secondsSinceContact, lastError, pendingInfo,
             logBacklog, route, identity, attestation
    }

    /// Every key always present (null when unknown), like the rest of the status document.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: Keys.self)
        try c.encode(managed, forKey: .managed)
        try c.encode(note, forKey: .note)
        try c.encode(controller, forKey: .controller)
        try c.encode(registered, forKey: .registered)
        try c.encode(deviceId, forKey: .deviceId)
        try c.encode(configHash, forKey: .configHash)
        try c.encode(secondsSinceContact, forKey: .secondsSinceContact)
        try c.encode(lastError, forKey: .lastError)
        try c.encode(pendingInfo, forKey: .pendingInfo)
        try c.encode(logBacklog, forKey: .logBacklog)
        try c.encode(route, forKey: .route)
        try c.encode(identity, forKey: .identity)
        try c.encode(attestation, forKey: .attestation)
    }

    /// The console's one line.
    var line: String {
        guard managed else { return "fleet: \(note ?? "unmanaged")" }
        var line = "fleet: controller \(controller ?? "?") "
        line += registered ? "registered as \(deviceId ?? "?")" : "not registered yet"
        line += ", last contact " + (secondsSinceContact.map { "\($0) s ago" } ?? "never this boot")
        if let route { line += ", via \(route)" }
        line += ", info pending \(pendingInfo), log backlog \(logBacklog)"
        if let identity { line += ", identity: \(identity)" }
        if let attestation { line += ", attestation: \(attestation)" }
        if let lastError { line += ", last error: \(lastError)" }
        return line
    }
}
