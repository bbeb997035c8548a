import Foundation
import OutpostApps
import OutpostTestSupport
import Testing
@testable import OutpostAgent

// The agent's side of the app instances: what CONFIG's apps.json makes of the
// component, the console's app commands and their one-line refusals, and the
// status document's `apps` array. The service itself runs real QEMU in
// OutpostAppsTests (AppServiceTests); the device path in OutpostSystemTests.

private let appsJSON = """
    {"apps": [{"name": "counter",
      "manifest": {"acKind": "VMManifest", "acVersion": "1.1.1", "name": "counter", "vmmode": "HV_HVM",
        "images": [{"imagename": "boot", "maxsize": 1, "maxsizeUnit": "MB", "readonly": false, "preserve": false,
                    "target": "Disk", "drvtype": "HDD"}],
        "resources": [{"name": "cpus", "value": 1}, {"name": "memory", "value": 65536}]},
      "images": [{"name": "boot", "url": "http://10.0.2.2:1/boot.raw", "sha256": "\(String(repeating: "a", count: 64))",
                  "size": 1048576}]}]}
    """

@Test func noAppsJSONMeansNoneConfiguredAndABrokenOneIsRefusedInOneLine() throws {
    let config = try TemporaryDirectory("apps-config")
    guard case let .off(why, warning) = AppsComponent.setup(persistMount: "/nonexistent", configDirectory: config.path,
                                                            cgroupMount: nil) else {
        Issue.record("no apps.json must not start a service")
        return
    }
    #expect(why == "none configured" && !warning)

    try Data("{\"apps\": [{\"name\": \"Bad Name\"}]}".utf8).write(to: URL(fileURLWithPath: config.path + "/apps.json"))
    guard case let .off(refusal, warned) = AppsComponent.setup(persistMount: "/nonexistent", configDirectory: config.path,
                                                               cgroupMount: nil) else {
        Issue.record("a malformed apps.json must not start a service")
        return
    }
    #expect(warned && refusal.hasPrefix("not started: ") && refusal.contains("apps[0]"), "\(refusal)")
    #expect(!refusal.contains("\n"))

    try Data(appsJSON.utf8).write(to: URL(fileURLWithPath: config.path + "/apps.json"))
    guard case let .off(noPersist, _) = AppsComponent.setup(persistMount: nil, configDirectory: config.path, cgroupMount: nil) else {
        Issue.record("apps without PERSIST must not start")
        return
    }
    #expect(noPersist == "not started: PERSIST is not mounted")
    guard case let .running(service) = AppsComponent.setup(persistMount: config.path, configDirectory: config.path,
                                                           cgroupMount: nil) else {
        Issue.record("apps.json with PERSIST starts the service")
        return
    }
    #expect(service.names == ["counter"] && service.root == config.path + "/apps")
    #expect(service.options.cgroupRoot == nil)
}

@Test func theConsoleAppCommandsAnswerInOneLine() throws {
    let config = try TemporaryDirectory("apps-console")
    try Data(appsJSON.utf8).write(to: URL(fileURLWithPath: config.path + "/apps.json"))
    let setup = AppsComponent.setup(persistMount: config.path, configDirectory: config.path, cgroupMount: nil)
    #expect(AppCommands.respond(to: ["app", "status"], apps: setup) == ["app counter: halted"])
    #expect(AppCommands.respond(to: ["app", "status"], apps: .off("none configured", warning: false))
            == ["app: no apps (none configured)"])
    #expect(AppCommands.respond(to: ["app", "status"], apps: nil) == ["app: the apps component is not running"])
    for typed in [["app"], ["app", "frobnicate", "counter"], ["app", "snapshot", "counter"], ["app", "restart"]] {
        let reply = AppCommands.respond(to: typed, apps: setup)
        #expect(reply.count == 1 && reply[0].hasPrefix("app: cannot read '"), "\(typed): \(reply)")
    }
    // The commands themselves refuse in one line (here: the image was never fetched).
    guard case let .running(service) = setup else { return }
    #expect(throws: AppsError.notReady(app: "counter", reason: "its images are not ready yet (halted)")) {
        try service.perform(.restart, on: "counter")
    }
    #expect(throws: AppsError.unknownApp(name: "other", known: ["counter"])) { try service.perform(.stop, on: "other") }
    #expect(AppsError.unknownApp(name: "other", known: ["counter"]).description == "no app named \"other\" (configured: counter)")
}

@Test func theStatusDocumentCarriesEachAppsStateAndError() throws {
    let app = AppStatus(state: "broken", name: "counter", error: "image boot: sha256 is 00, expected aa", downloadedBytes: nil,
                        totalBytes: nil, activate: true, stoppedByOperator: false, pid: nil, restarts: 2, bootSeconds: 2.345,
                        runningSinceUnix: nil, memoryLimitBytes: 169 << 20, residentBytes: nil)
    let text = try JSONDocument.line(AppDocument(status: app))
    #expect(text.contains(#""name":"counter""#) && text.contains(#""state":"broken""#))
    #expect(text.contains(#""error":"image boot: sha256 is 00, expected aa""#))
    #expect(text.contains(#""bootSeconds":2.35"#) && text.contains(#""pid":null"#) && text.contains(#""restarts":2"#))
    #expect(app.line == "app counter: broken restarts=2 boot=2.3 s error=\"image boot: sha256 is 00, expected aa\"")
    let downloading = AppStatus(state: "downloading", name: "big", error: nil, downloadedBytes: 512, totalBytes: 2048,
                                activate: true, stoppedByOperator: false, pid: nil, restarts: 0, bootSeconds: nil,
                                runningSinceUnix: nil, memoryLimitBytes: nil, residentBytes: nil)
    #expect(downloading.line == "app big: downloading 512/2048 bytes")
    #expect(text.contains(#""acl":[]"#))
    var filtered = app
    filtered.acl = [ACLCounter(tap: "oa1234abcd0", rule: "no-dot-2", action: "drop", packets: 3, bytes: 180)]
    let withACL = try JSONDocument.line(AppDocument(status: filtered))
    #expect(withACL.contains(#""acl":[{"action":"drop","bytes":180,"packets":3,"rule":"no-dot-2","tap":"oa1234abcd0"}]"#), "\(withACL)")
}
