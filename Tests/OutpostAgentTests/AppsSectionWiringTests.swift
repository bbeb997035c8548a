import Foundation
import OutpostApps
import OutpostProto
import OutpostTestSupport
import Testing
@testable import OutpostAgent

// The controller's apps section on the device: turned back into apps.json's document and parsed
// by the same parser, and chosen over CONFIG's apps.json at boot when the device is managed.

private func section(name: String = "counter", manifest: String? = nil, url: String = "http://10.0.2.2:1/boot.raw") -> Outpost_Api_V1_AppsSection {
    var app = Outpost_Api_V1_App()
    app.name = name
    app.manifestJson = manifest ?? """
        {"acKind": "VMManifest", "acVersion": "1.1.1", "name": "counter", "vmmode": "HV_HVM",
         "images": [{"imagename": "boot", "maxsize": 1, "maxsizeUnit": "MB", "readonly": false, "preserve": true,
                     "target": "Disk", "drvtype": "HDD"}],
         "resources": [{"name": "cpus", "value": 1}, {"name": "memory", "value": 65536}]}
        """
    var image = Outpost_Api_V1_ImageSource()
    image.name = "boot"
    image.url = url
    image.sha256 = String(repeating: "c", count: 64)
    image.size = 1 << 20
    app.images = [image]
    app.activate = false
    app.restartCounter = 7
    app.purgeCounter = 9
    var s = Outpost_Api_V1_AppsSection()
    s.instances = [app]
    return s
}

@Test func theControllersSectionParsesWithTheAppsJSONParserAndRefusalsNameTheField() throws {
    // A quote in a field is escaped: the document stays JSON and the field's own check refuses it.
    do {
        _ = try AppsSectionBridge.config(section(name: "a\"b"))
        Issue.record("a name with a quote is accepted")
    } catch {
        #expect(error.description.hasPrefix("apps[0].name: "), "\(error)")
    }
    let config = try AppsSectionBridge.config(section())
    let app = try #require(config.apps.first)
    #expect(app.name == "counter" && !app.activate && app.restartCounter == 7 && app.purgeCounter == 9)
    #expect(app.images.first?.url.description == "http://10.0.2.2:1/boot.raw" && app.manifest.images.first?.preserve == true)

    do {
        _ = try AppsSectionBridge.config(section(manifest: "{\"acKind\": \"VMManifest\"}"))
        Issue.record("a manifest without images is accepted")
    } catch {
        #expect(error.description.hasPrefix("apps[0].manifest") && !error.description.contains("\n"), "\(error)")
    }
    do {
        _ = try AppsSectionBridge.config(section(manifest: ""))
        Issue.record("an empty manifest is accepted")
    } catch {
        #expect(error.description.contains("apps[0].manifest"), "\(error)")
    }
    #expect(AppsSectionBridge.quoted("a\"b\\c\n\u{1}") == #""a\"b\\c\n\u0001""#)
}

@Test func aManagedDeviceRunsTheStoredSectionOverAppsJSONAndStartsWithNoAppsJSON() throws {
    let config = try TemporaryDirectory("apps-managed")
    // Managed, no apps.json, no section: the service runs with no apps, waiting for the controller.
    guard case let .running(empty) = AppsComponent.setup(persistMount: config.path, configDirectory: config.path,
                                                         cgroupMount: nil, managed: true) else {
        Issue.record("a managed device starts the apps component without apps.json")
        return
    }
    #expect(empty.names.isEmpty && empty.configSource == "apps.json")
    // A broken apps.json on a managed device: said once, the service still runs.
    try Data("{\"apps\": 1}".utf8).write(to: URL(fileURLWithPath: config.path + "/apps.json"))
    guard case .running = AppsComponent.setup(persistMount: config.path, configDirectory: config.path, cgroupMount: nil,
                                              managed: true) else {
        Issue.record("a broken apps.json must not keep a managed device's apps off")
        return
    }
    // The stored section wins over apps.json.
    guard case let .running(service) = AppsComponent.setup(
        persistMount: config.path, configDirectory: config.path, cgroupMount: nil, managed: true,
        controllerSection: section(name: "web")) else {
        Issue.record("the controller's section starts the service")
        return
    }
    #expect(service.names == ["web"] && service.configSource == "controller")
    // The console's `app status` shows it like any app.
    #expect(AppCommands.respond(to: ["app", "status"], apps: .running(service)) == ["app web: halted (not activated)"])
}

@Test func theSectionsHealthCheckAndNetworkReachTheDevicesParser() throws {
    var s = section()
    s.instances[0].health.consoleMarker = "alive \"ok\""
    s.instances[0].health.timeoutSeconds = 30
    s.instances[0].health.graceSeconds = 5
    s.network.bridge = "apps0"
    s.network.subnet = "10.201.0.1/24"
    let config = try AppsSectionBridge.config(s)
    #expect(config.apps.first?.health == AppHealthCheck(consoleMarker: "alive \"ok\"", timeoutSeconds: 30, graceSeconds: 5))
    #expect(config.network.bridge == "apps0" && config.network.gateway == "10.201.0.1" && config.network.prefixLength == 24)
    // Without them: no health check, the default network.
    let plain = try AppsSectionBridge.config(section())
    #expect(plain.apps.first?.health == nil && plain.network == AppsConfig(apps: []).network)
    // A timeout the device refuses is refused by its field name.
    s.instances[0].health.timeoutSeconds = 1
    #expect(throws: AppsError.self) { try AppsSectionBridge.config(s) }
    do { _ = try AppsSectionBridge.config(s) } catch { #expect(error.description.hasPrefix("apps[0].health.timeoutSeconds: "), "\(error)") }
}
