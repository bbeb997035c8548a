import Foundation
import OutpostPlatform
import OutpostProto
import OutpostTestSupport
import Synchronization
import Testing
@testable import OutpostFleet

/// The agent's apps as the client sees them: the sections it was handed, its refusal, and the
/// apps' status and metrics it reports.
final class RecordingApps: AppsConfigurator, DeviceStateSource, Sendable {
    let sections = Mutex<[Outpost_Api_V1_AppsSection]>([])
    let refusal: String?

    init(refusal: String? = nil) { self.refusal = refusal }

    func apply(apps: Outpost_Api_V1_AppsSection) -> String? {
        sections.withLock { $0.append(apps) }
        return refusal
    }

    func deviceInfo() -> Outpost_Api_V1_DeviceInfo {
        var info = Outpost_Api_V1_DeviceInfo()
        var app = Outpost_Api_V1_AppStatus()
        app.name = "counter"
        app.state = "running"
        app.restarts = 2
        info.apps = [app]
        info.appsSource = "controller"
        return info
    }

    func watchdogState() -> Outpost_Api_V1_WatchdogState? { nil }

    func appMetrics() -> [Outpost_Api_V1_AppMetrics] {
        var m = Outpost_Api_V1_AppMetrics()
        m.name = "counter"
        m.cpuSeconds = 3.5
        m.residentBytes = 1 << 20
        return [m]
    }
}

@Suite("Fleet: the apps section and the apps' reports")
struct AppsSectionClientTests {
    static func config(apps names: [String]?) -> Outpost_Api_V1_DeviceConfig {
        var c = ClientTests.config()
        if let names {
            var section = Outpost_Api_V1_AppsSection()
            section.instances = names.map { name in
                var app = Outpost_Api_V1_App()
                app.name = name
                app.manifestJson = "{}"
                app.activate = true
                app.purgeCounter = 4
                return app
            }
            c.apps = section
        }
        return c
    }

    @Test func theSectionReachesTheAgentOnlyWhenPresentAndInfoAndMetricsCarryTheApps() throws {
        let tmp = try TemporaryDirectory("apps-client")
        let configuration = try makeConfig(tmp.path, url: "https://127.0.0.1:9/")
        let device = RecordingDevice()
        let apps = RecordingApps()
        let client = try FleetClient(configuration: configuration, dependencies: FleetDependencies(
            updater: device, network: device, power: device, state: apps, apps: apps))
        client.apply(Self.config(apps: nil), atBoot: false)
        #expect(apps.sections.withLock { $0 }.isEmpty, "no section: the device keeps its apps.json")
        client.apply(Self.config(apps: ["counter", "web"]), atBoot: false)
        client.apply(Self.config(apps: []), atBoot: false)
        let handed = apps.sections.withLock { $0 }
        #expect(handed.map { $0.instances.map(\.name) } == [["counter", "web"], []])
        #expect(handed.first?.instances.first?.purgeCounter == 4 && handed.first?.instances.first?.manifestJson == "{}")

        try client.composeInfo()
        let info = try Outpost_Api_V1_DeviceInfo(serializedBytes: try #require(client.outbox.due().first?.payload))
        #expect(info.apps.map(\.name) == ["counter"] && info.apps.first?.state == "running" && info.apps.first?.restarts == 2)
        #expect(info.appsSource == "controller" && info.appsError.isEmpty)
        let sample = client.metricsSample()
        #expect(sample.apps.map(\.name) == ["counter"] && sample.apps.first?.cpuSeconds == 3.5)
    }

    @Test func aRefusedSectionIsReportedInInfoAndAStoredOneIsThereAtBoot() throws {
        let tmp = try TemporaryDirectory("apps-refused")
        let configuration = try makeConfig(tmp.path, url: "https://127.0.0.1:9/")
        let device = RecordingDevice()
        let apps = RecordingApps(refusal: "apps[0].manifest: not an object")
        let client = try FleetClient(configuration: configuration, dependencies: FleetDependencies(
            updater: device, network: device, power: device, state: device, apps: apps))
        client.apply(Self.config(apps: ["bad"]), atBoot: false)
        try client.composeInfo()
        let info = try Outpost_Api_V1_DeviceInfo(serializedBytes: try #require(client.outbox.due().first?.payload))
        #expect(info.appsError == "apps[0].manifest: not an object")

        // No apps configurator at all (a device without apps): refused in one line too.
        let bare = try FleetClient(configuration: configuration, dependencies: FleetDependencies(
            updater: device, network: device, power: device, state: device))
        bare.apply(Self.config(apps: ["x"]), atBoot: false)
        #expect(bare.loop.withLock { $0.appsError } == "this device runs no apps")

        // The last good config on PERSIST is what the agent builds its apps from at boot.
        #expect(client.storedConfig() == nil)
        var stored = Outpost_Api_V1_ConfigResponse()
        stored.config = Self.config(apps: ["counter"])
        stored.configHash = "abc"
        try FleetFiles.makeDirectory(configuration.stateDirectory)
        try FleetState(directory: configuration.stateDirectory).saveConfig(stored)
        #expect(client.storedConfig()?.apps.instances.map(\.name) == ["counter"])
    }
}
