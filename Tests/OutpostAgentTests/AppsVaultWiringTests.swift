import Foundation
import OutpostApps
import OutpostProto
import OutpostTestSupport
import Testing
@testable import OutpostAgent

// The agent's side of vault apps: the vault's state (a value, as VaultService reports it; no TPM
// here) becomes the apps service's AppVault, the console's `app status` and the status document
// name the vault's reason, and the controller's section carries the field. The apps themselves
// run in OutpostAppsTests (AppServiceVaultTests).

private func appEntry(_ name: String, vault: Bool?, size: UInt64 = 1048576) -> String {
    """
    {"name": "\(name)"\(vault.map { ", \"vault\": \($0)" } ?? ""),
      "manifest": {"acKind": "VMManifest", "acVersion": "1.1.1", "name": "\(name)", "vmmode": "HV_HVM",
        "images": [{"imagename": "boot", "maxsize": 1, "maxsizeUnit": "MB", "readonly": false, "preserve": false,
                    "target": "Disk", "drvtype": "HDD"}],
        "resources": [{"name": "cpus", "value": 1}, {"name": "memory", "value": 65536}]},
      "images": [{"name": "boot", "url": "http://127.0.0.1:1/boot.raw", "sha256": "\(String(repeating: "a", count: 64))",
                  "size": \(size)}]}
    """
}

@Test func theVaultsStateReachesTheAppsServiceAsWhereVaultAppsLive() throws {
    let config = try TemporaryDirectory("apps-vault-state")
    try Data("{\"apps\": [\(appEntry("secret", vault: true))]}".utf8).write(to: URL(fileURLWithPath: config.path + "/apps.json"))
    let mount = config.path + "/vault/data"
    let cases: [(VaultState?, AppVault)] = [
        (.unlocked(detail: "opened for IMGA"), .open(root: mount + "/apps")),
        (.locked(reason: "Unseal refused: the firmware changed"), .closed(reason: "vault: locked: Unseal refused: the firmware changed")),
        (.unavailable(reason: "no TPM (/dev/tpmrm0 missing); nothing is sealed"),
         .closed(reason: "vault: unavailable: no TPM (/dev/tpmrm0 missing); nothing is sealed")),
        (nil, .closed(reason: "vault: unavailable: PERSIST is not mounted")),
    ]
    for (state, expected) in cases {
        guard case let .running(service) = AppsComponent.setup(persistMount: config.path, configDirectory: config.path,
                                                               cgroupMount: nil, vault: state, vaultMount: mount) else {
            Issue.record("apps.json with PERSIST starts the service")
            return
        }
        #expect(service.options.vault == expected, "\(String(describing: state))")
    }
    guard case let .running(open) = AppsComponent.setup(persistMount: config.path, configDirectory: config.path, cgroupMount: nil,
                                                        vault: .unlocked(detail: "x"), vaultMount: mount) else { return }
    let secret = try #require(open.names.first.flatMap { _ in try? AppsConfig.load(configDirectory: config.path).apps.first })
    #expect(try open.instanceDirectory(for: secret) == mount + "/apps/instances/secret")
}

@Test func aLockedVaultRefusesTheVaultAppInAppStatusAndTheStatusDocumentButNotThePlainApp() throws {
    let config = try TemporaryDirectory("apps-locked")
    try Data("{\"apps\": [\(appEntry("plain", vault: nil, size: 1 << 60)), \(appEntry("secret", vault: true))]}".utf8)
        .write(to: URL(fileURLWithPath: config.path + "/apps.json"))
    let setup = AppsComponent.setup(persistMount: config.path, configDirectory: config.path, cgroupMount: nil,
                                    vault: .locked(reason: "Unseal refused: the firmware changed since enrolment"),
                                    vaultMount: config.path + "/vault/data")
    guard case let .running(service) = setup else {
        Issue.record("a locked vault must not keep the apps component off")
        return
    }
    try service.prepare()
    service.step()
    let refusal = "app secret keeps its disks in the vault and does not start: vault: locked: Unseal refused: the firmware changed since enrolment"
    let lines = AppCommands.respond(to: ["app", "status"], apps: setup)
    #expect(lines.count == 2)
    #expect(lines.contains("app secret: broken error=\"\(refusal)\""), "\(lines)")
    // The plain app went on to its download (refused here before a byte: 1 EiB does not fit), not stopped by the vault.
    let plain = try #require(service.status().first { $0.name == "plain" })
    #expect(plain.error?.contains("vault") == false && plain.error?.hasPrefix("image boot needs 1024.0 PiB") == true, "\(plain.line)")
    let document = try JSONDocument.line(AppDocument(status: try #require(service.status().first { $0.name == "secret" })))
    #expect(document.contains(#""state":"broken""#) && document.contains(#""error":"\#(refusal)""#), "\(document)")
    #expect(!FileManager.default.fileExists(atPath: config.path + "/apps/instances/secret"))
}

@Test func theControllersSectionCarriesTheVaultField() throws {
    var app = Outpost_Api_V1_App()
    app.name = "secret"
    app.manifestJson = """
        {"acKind": "VMManifest", "acVersion": "1.1.1", "name": "secret", "vmmode": "HV_HVM",
         "images": [{"imagename": "boot", "maxsize": 1, "maxsizeUnit": "MB", "readonly": false, "preserve": true,
                     "target": "Disk", "drvtype": "HDD"}],
         "resources": [{"name": "cpus", "value": 1}, {"name": "memory", "value": 65536}]}
        """
    var image = Outpost_Api_V1_ImageSource()
    image.name = "boot"
    image.url = "http://10.0.2.2:1/boot.raw"
    image.sha256 = String(repeating: "c", count: 64)
    image.size = 1 << 20
    app.images = [image]
    var section = Outpost_Api_V1_AppsSection()
    section.instances = [app]
    #expect(try AppsSectionBridge.config(section).apps.first?.vault == false)
    #expect(!AppsSectionBridge.document(section).contains("vault"), "the default leaves the document as it was")
    section.instances[0].vault = true
    #expect(AppsSectionBridge.document(section).contains(#""vault": true"#))
    #expect(try AppsSectionBridge.config(section).apps.first?.vault == true)
    // Field 8 on the wire: a controller that sets it is read by this device.
    let bytes = try section.serializedData()
    #expect(try Outpost_Api_V1_AppsSection(serializedBytes: bytes).instances.first?.vault == true)
}
