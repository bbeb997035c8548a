// The agent's real parts behind the four protocols the controller client
// drives (OutpostFleet/FleetDependencies.swift): the update service, the
// network manager, the orderly reboot path and what the agent knows about
// itself. Each adapter only translates; the work stays where it was.

#if canImport(Glibc)
import Glibc
#endif
import OutpostFleet
import OutpostHTTP
import OutpostNetwork
import OutpostPlatform
import OutpostEarlyBoot
import OutpostProto

/// BaseOSUpdater → UpdateService: the request is queued for the update
/// component's thread, so the client's thread never waits for a download.
struct FleetUpdater: BaseOSUpdater {
    let service: UpdateService

    func apply(_ baseOS: Outpost_Api_V1_BaseOS) {
        service.request(ControllerUpdateRequest(version: baseOS.version, bundleURL: baseOS.bundleURL,
                                                activate: baseOS.activate, retryCounter: baseOS.retryCounter,
                                                size: baseOS.size))
    }

    func retryFailedUpdate(counter: UInt32) {
        // The new counter arrives with the BaseOS (retry_counter); this only
        // ends a wait after a failed download.
        service.retryNow()
    }
}

/// Without PERSIST there is no update service: the controller's base OS
/// waits, and the device info says why.
struct NoUpdater: BaseOSUpdater {
    func apply(_ baseOS: Outpost_Api_V1_BaseOS) {
        if !baseOS.version.isEmpty { Console.line("warning: fleet: base OS \(baseOS.version) ignored: no update service") }
    }
    func retryFailedUpdate(counter: UInt32) {}
}

/// NetworkConfigurator → NetworkService.push (applies, tests, keeps or rolls back).
struct FleetNetwork: NetworkConfigurator {
    let service: NetworkService?

    func push(networkJSON: [UInt8], acceptance: @escaping @Sendable (_ port: String) -> String?) -> NetworkPushOutcome {
        guard let service else { return .rejected(reason: "the network manager is not running") }
        let result = service.push(String(decoding: networkJSON, as: UTF8.self), acceptance: acceptance)
        Console.line("network: pushed config \(result)")
        switch result {
        case .applied: return .applied
        case .rejected(let why): return .rejected(reason: why)
        case .rolledBack(let why): return .rolledBack(reason: why)
        }
    }
}

/// PowerControl → the supervisor's orderly stop, recorded as boot reason `controller`.
struct FleetPower: PowerControl {
    let supervisor: Supervisor

    func reboot(reason: String) {
        supervisor.requestShutdown(ShutdownRequest(reason: .controller, powerOff: false, component: "fleet",
                                                   detail: "reboot asked by the \(reason)"))
    }

    func shutdown(reason: String) {
        supervisor.requestShutdown(ShutdownRequest(reason: .controller, powerOff: true, component: "fleet",
                                                   detail: "shutdown asked by the \(reason)"))
    }
}

/// DeviceStateSource → what the agent already knows: slots and update step
/// (update service), last boot (boot history), ports (network manager), the vault.
struct AgentStateSource: DeviceStateSource {
    let agent: Agent

    func deviceInfo() -> Outpost_Api_V1_DeviceInfo {
        var info = Outpost_Api_V1_DeviceInfo()
        info.identity.osVersion = agent.version
        info.identity.board = (try? Sys.readText("/etc/outpost/board"))?.split(separator: "\n").first.map(String.init) ?? "generic-efi"
        info.identity.arch = "x86_64"
        var host = [CChar](repeating: 0, count: 256)
        if gethostname(&host, host.count - 1) == 0 {
            info.identity.hostname = String(decoding: host.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        if let update = agent.update {
            info.slots = update.slotSummaries().map { s in
                var slot = Outpost_Api_V1_SlotInfo()
                slot.label = s.name
                slot.state = s.state
                slot.version = s.version
                slot.booted = s.booted
                return slot
            }
            info.update = Self.status(update.progress)
        } else {
            var slot = Outpost_Api_V1_SlotInfo()
            slot.label = agent.slot
            slot.version = agent.version
            slot.booted = true
            info.slots = [slot]
            info.update.step = .failed
            info.update.reason = "no update service (PERSIST is not mounted)"
        }
        info.lastBoot.reason = agent.lastBoot.reason.rawValue
        var detail = agent.lastBoot.detail ?? ""
        if let component = agent.lastBoot.component { detail = "component=\(component)" + (detail.isEmpty ? "" : " " + detail) }
        info.lastBoot.detail = detail
        if let time = agent.lastBoot.time { info.lastBoot.timeUnixMs = UInt64(max(0, time)) * 1000 }
        if let network = agent.network {
            let document = network.statusDocument()
            info.ports = document.ports.keys.sorted().compactMap { name in
                guard let p = document.ports[name] else { return nil }
                var port = Outpost_Api_V1_NetworkPort()
                port.name = name
                port.mac = ((try? Sys.readText("/sys/class/net/\(name)/address")) ?? "")
                    .split(separator: "\n").first.map(String.init) ?? ""
                port.mode = p.mode
                port.carrier = p.carrier
                port.addresses = p.address.map { [$0] } ?? []
                port.gateway = p.gateway ?? ""
                port.active = document.active == name
                port.usable = p.usable
                port.cost = UInt32(max(0, p.cost))
                port.lastError = p.lastError ?? ""
                return port
            }
        }
        if let service = agent.apps?.service {
            info.apps = service.status().map(AppsSectionBridge.status)
            info.appsSource = service.configSource
        }
        info.vault = FleetVault.report(agent.vault)
        return info
    }

    func appMetrics() -> [Outpost_Api_V1_AppMetrics] {
        (agent.apps?.service?.status() ?? []).compactMap(AppsSectionBridge.metrics)
    }

    func watchdogState() -> Outpost_Api_V1_WatchdogState? {
        guard let info = agent.watchdog?.info else { return nil }
        var state = Outpost_Api_V1_WatchdogState()
        let last = agent.lastFeed.load(ordering: .relaxed)
        state.armed = last > 0
        state.timeoutS = UInt32(max(0, info.timeoutSeconds))
        if last > 0 { state.sinceLastFeedS = UInt32(max(0, MonotonicClock.now().milliseconds - last) / 1000) }
        return state
    }

    static func status(_ p: UpdateProgress) -> Outpost_Api_V1_UpdateStatus {
        var s = Outpost_Api_V1_UpdateStatus()
        switch p.step {
        case .idle: s.step = .idle
        case .downloading: s.step = .downloading
        case .downloaded: s.step = .downloaded
        case .verifying: s.step = .verifying
        case .installing: s.step = .installing
        case .rebooting: s.step = .rebooting
        case .testing: s.step = .testing
        case .committed: s.step = .committed
        case .failed: s.step = .failed
        }
        s.version = p.version
        s.bytesDone = p.bytesDone
        s.bytesTotal = p.bytesTotal
        s.secondsLeft = UInt32(max(0, p.secondsLeft))
        s.reason = p.reason
        s.timeUnixMs = p.sinceUnixMs
        s.retryCounter = p.retryCounter
        return s
    }
}

extension NetworkService {
    /// The controller client's ways out: the equal-cost usable ports, each
    /// with its configured proxy (a PAC-only port goes direct).
    func controllerRoutes() -> [ControllerRoute] {
        let ports = controllerPorts
        guard !ports.isEmpty else { return [] }
        let document = statusDocument()
        return ports.map { name in
            ControllerRoute(device: name, proxy: document.ports[name]?.proxy.flatMap { try? HTTPURL($0) })
        }
    }
}
