// The controller's apps section (DeviceConfig.apps) and the apps' reports
// (DeviceInfo.apps, DeviceMetrics.apps) against OutpostApps' types. The
// section is turned back into the apps.json document and parsed by the same
// parser as CONFIG's file: one set of rules, one set of one-line refusals.

import OutpostApps
import OutpostFleet
import OutpostProto

enum AppsSectionBridge {
    /// The section as an AppsConfig; a section the device cannot run is refused with the field
    /// path of apps.json's parser ("the controller's apps section: apps[0].manifest...").
    static func config(_ section: Outpost_Api_V1_AppsSection) throws(AppsError) -> AppsConfig {
        try AppsConfig(json: Array(document(section).utf8), document: "the controller's apps section")
    }

    /// The apps.json text of a section; each manifest goes in as the JSON text it came as.
    static func document(_ section: Outpost_Api_V1_AppsSection) -> String {
        let apps = section.instances.map { app -> String in
            let images = app.images.map { image in
                "{\"name\": \(quoted(image.name)), \"url\": \(quoted(image.url)), \"sha256\": \(quoted(image.sha256)), \"size\": \(image.size)}"
            }
            // An empty manifest is left for the parser to refuse by its field name.
            let manifest = app.manifestJson.isEmpty ? "null" : app.manifestJson
            return "{\"name\": \(quoted(app.name)), \"manifest\": \(manifest), \"images\": [\(images.joined(separator: ", "))], "
                + "\"activate\": \(app.activate), \"restart\": \(min(app.restartCounter, UInt64(Int64.max))), "
                + "\"purge\": \(min(app.purgeCounter, UInt64(Int64.max)))"
                + (app.hasHealth ? ", \"health\": {" + health(app.health) + "}" : "")
                + (app.vault ? ", \"vault\": true" : "")
                + "}"
        }
        var network: [String] = []
        if section.hasNetwork {
            if !section.network.bridge.isEmpty { network.append("\"bridge\": \(quoted(section.network.bridge))") }
            if !section.network.subnet.isEmpty { network.append("\"subnet\": \(quoted(section.network.subnet))") }
        }
        return "{\"apps\": [\(apps.joined(separator: ", "))]"
            + (network.isEmpty ? "" : ", \"network\": {\(network.joined(separator: ", "))}") + "}"
    }

    /// The health check's apps.json fields; the empty and zero ones are left out.
    static func health(_ h: Outpost_Api_V1_AppHealth) -> String {
        var fields: [String] = []
        if !h.consoleMarker.isEmpty { fields.append("\"consoleMarker\": \(quoted(h.consoleMarker))") }
        if h.tcpPort != 0 { fields.append("\"tcpPort\": \(h.tcpPort)") }
        if !h.httpPath.isEmpty { fields.append("\"httpPath\": \(quoted(h.httpPath))") }
        fields.append("\"timeoutSeconds\": \(h.timeoutSeconds)")
        fields.append("\"graceSeconds\": \(h.graceSeconds)")
        return fields.joined(separator: ", ")
    }

    /// A JSON string literal (OutpostApps' one encoder, shared with the QMP client).
    static func quoted(_ text: String) -> String { jsonStringLiteral(text) }

    static func status(_ app: AppStatus) -> Outpost_Api_V1_AppStatus {
        var s = Outpost_Api_V1_AppStatus()
        s.name = app.name
        s.state = app.state
        s.error = app.error ?? ""
        s.activate = app.activate
        s.stoppedByOperator = app.stoppedByOperator
        s.restarts = UInt32(clamping: app.restarts)
        s.bootSeconds = app.bootSeconds ?? 0
        s.runningSinceUnixMs = UInt64(max(0, app.runningSinceUnix ?? 0)) * 1000
        s.memoryLimitBytes = app.memoryLimitBytes ?? 0
        s.residentBytes = app.residentBytes ?? 0
        s.addresses = app.addresses
        s.diskBytes = app.diskBytes ?? 0
        return s
    }

    /// Only instances with a QEMU running have metrics.
    static func metrics(_ app: AppStatus) -> Outpost_Api_V1_AppMetrics? {
        guard app.pid != nil else { return nil }
        var m = Outpost_Api_V1_AppMetrics()
        m.name = app.name
        m.cpuSeconds = app.cpuSeconds ?? 0
        m.residentBytes = app.residentBytes ?? 0
        return m
    }
}

/// AppsConfigurator → the apps component's service: the section is checked here (a refusal
/// goes back into DeviceInfo.apps_error) and handed over; the service applies it in its next round.
struct FleetApps: AppsConfigurator {
    let agent: Agent

    func apply(apps section: Outpost_Api_V1_AppsSection) -> String? {
        guard let setup = agent.apps else { return "the apps component is not running" }
        guard let service = setup.service else {
            if case let .off(why, _) = setup { return "no apps on this device (\(why))" }
            return "no apps on this device"
        }
        do {
            let config = try AppsSectionBridge.config(section)
            service.configSource = "controller"
            service.submit(config)
            return nil
        } catch {
            return error.description
        }
    }
}
