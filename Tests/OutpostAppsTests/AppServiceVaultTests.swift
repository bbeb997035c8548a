import Foundation
import OutpostHTTP
import OutpostPlatform
import OutpostTestSupport
import Synchronization
import Testing
@testable import OutpostApps

/// Apps with `"vault": true` (AppVault): their instance directory in the vault's area, refused
/// with the vault's own line while it is closed, and the switch rule. The vault's mount point is a
/// plain directory here (the agent hands the service the vault's state as a value; the dm-crypt
/// area itself is VaultVolumeTests'); the apps are the real boot-counter QEMU of AppServiceTests.
@Suite("Vault apps live in the vault and do not start without it", .serialized)
struct AppServiceVaultTests {
    typealias Fixture = AppServiceTests

    /// apps.json with one boot-counter app per entry, all on the same served image.
    static func appsJSON(_ served: Fixture.Served, _ apps: [(name: String, vault: Bool?, purge: Int)]) -> [UInt8] {
        let entries = apps.map { app in
            """
            {"name": "\(app.name)", "purge": \(app.purge)\(app.vault.map { ", \"vault\": \($0)" } ?? ""),
              "manifest": {"acKind": "VMManifest", "acVersion": "1.1.1", "name": "\(app.name)", "vmmode": "HV_HVM",
                "images": [{"imagename": "boot", "maxsize": 1024, "maxsizeUnit": "MB", "readonly": false,
                            "preserve": false, "target": "Disk", "drvtype": "HDD"}],
                "resources": [{"name": "cpus", "value": 1}, {"name": "memory", "value": 65536}]},
              "images": [{"name": "boot", "url": "\(served.url)", "sha256": "\(served.sha256)", "size": \(served.size)}]}
            """
        }
        return Array("{\"apps\": [\(entries.joined(separator: ", "))]}".utf8)
    }

    static func service(_ json: [UInt8], persist: String, vault: AppVault,
                        log: @escaping @Sendable (String) -> Void = { _ in }) throws -> AppService {
        var options = AppService.Options()
        options.instance = AppInstanceTests.options()
        options.retryBackoff = .milliseconds(200)
        options.vault = vault
        return AppService(config: try AppsConfig(json: json), root: persist + "/apps", options: options, log: log)
    }

    static func exists(_ path: String) -> Bool { FileManager.default.fileExists(atPath: path) }

    @Test func aVaultAppsInstanceDirectoryIsUnderTheVaultAndAPlainAppsOnPersist() throws {
        let served = try Fixture.serve()
        let persist = served.dir.path + "/persist"
        let mount = persist + "/vault/data"
        try FileManager.default.createDirectory(atPath: mount, withIntermediateDirectories: true)
        let service = try Self.service(Self.appsJSON(served, [("plain", nil, 0), ("secret", true, 0)]), persist: persist,
                                       vault: .open(root: mount + "/apps"))
        defer { service.close() }
        try service.prepare()
        try Fixture.stepUntil(service, "plain", is: "running")
        try Fixture.stepUntil(service, "secret", is: "running")
        #expect(service.instance("secret")?.directory == mount + "/apps/instances/secret")
        #expect(Self.exists(mount + "/apps/instances/secret/disk0.qcow2"))
        #expect(try String(contentsOfFile: mount + "/apps/instances/secret/counters", encoding: .utf8) == "restart=0 purge=0\n")
        #expect(!Self.exists(persist + "/apps/instances/secret"), "nothing of the vault app on plain PERSIST")
        #expect(Self.exists(persist + "/apps/instances/plain/disk0.qcow2"))
        #expect(!Self.exists(mount + "/apps/instances/plain"))
        // The base image is shared on plain PERSIST; the vault holds only the overlay on it.
        #expect(Self.exists(persist + "/apps/images/verified/" + served.sha256))
        #expect(try QCOW2Overlay.info(mount + "/apps/instances/secret/disk0.qcow2").backingFile
                == persist + "/apps/images/verified/" + served.sha256)
        var info = stat()
        #expect(stat(mount + "/apps/instances", &info) == 0 && info.st_mode & 0o777 == 0o700, "the vault's apps directories are 0700")
        for name in ["plain", "secret"] {
            try waitFor("\(name) boots once", within: .seconds(30)) { Fixture.boots(service, name) == [1] }
        }
        #expect(served.server.requests().count == 1, "one download for both apps")
    }

    @Test func aClosedVaultRefusesTheVaultAppWithItsReasonWhileThePlainAppRuns() throws {
        let served = try Fixture.serve()
        let persist = served.dir.path + "/persist"
        let mount = persist + "/vault/data"
        try FileManager.default.createDirectory(atPath: mount, withIntermediateDirectories: true)
        let reason = "vault: locked: Unseal refused: the firmware changed since enrolment"
        let lines = LockedLines()
        let service = try Self.service(Self.appsJSON(served, [("plain", false, 0), ("secret", true, 0)]), persist: persist,
                                       vault: .closed(reason: reason), log: lines.append)
        defer { service.close() }
        try service.prepare()
        try Fixture.stepUntil(service, "plain", is: "running")
        try Fixture.stepUntil(service, "secret", is: "broken")
        let secret = try #require(service.status().first { $0.name == "secret" })
        let refusal = "app secret keeps its disks in the vault and does not start: " + reason
        #expect(secret.error == refusal && secret.pid == nil && service.instance("secret") == nil)
        #expect(secret.line == "app secret: broken error=\"\(refusal)\"")
        #expect(!refusal.contains("\n"))
        #expect(lines.all.contains("warning: apps: secret: " + refusal))
        // Never plain PERSIST instead, and not the vault's empty mount point either.
        #expect(!Self.exists(persist + "/apps/instances/secret"))
        #expect(try FileManager.default.contentsOfDirectory(atPath: mount).isEmpty)
        #expect(service.status().first { $0.name == "plain" }?.error == nil)
        // Retried later, still refused the same way (one warning line, not one per round).
        for _ in 0..<10 { service.step(); MonotonicClock.sleep(for: .milliseconds(50)) }
        #expect(service.status().first { $0.name == "secret" }?.error == refusal)
        #expect(lines.all.filter { $0.contains(refusal) }.count == 1)
        // A vault app's overlays cannot be read, so no image is taken for unused.
        #expect(lines.all.contains("apps: unused images are kept: the vault is closed, so the overlays of secret cannot be read"))
    }

    @Test func aSwitchBetweenPersistAndTheVaultIsRefusedUntilTheAppIsPurged() throws {
        let served = try Fixture.serve()
        let persist = served.dir.path + "/persist"
        let mount = persist + "/vault/data"
        try FileManager.default.createDirectory(atPath: mount, withIntermediateDirectories: true)
        let vault = AppVault.open(root: mount + "/apps")
        let plainDirectory = persist + "/apps/instances/counter"
        let vaultDirectory = mount + "/apps/instances/counter"
        do {
            let service = try Self.service(Self.appsJSON(served, [("counter", false, 0)]), persist: persist, vault: vault)
            defer { service.close() }
            try Fixture.stepUntil(service, "counter", is: "running")
            try Fixture.waitBoots(service, [1])

            // At runtime: the new config moves it into the vault. It stops; its disks stay where they are.
            let lines = service.apply(try AppsConfig(json: Self.appsJSON(served, [("counter", true, 0)])))
            #expect(lines == ["apps: counter: \"vault\" changed; stopped, its disks stay at \(plainDirectory) until it is purged"])
            try Fixture.stepUntil(service, "counter", is: "broken")
            let refusal = "app counter now keeps its disks in the vault but its instance is still at \(plainDirectory);"
                + " refused until it is purged (app purge counter, or a higher purge counter), which deletes those disks"
            #expect(service.status().first?.error == refusal)
            #expect(Self.exists(plainDirectory + "/disk0.qcow2") && !Self.exists(vaultDirectory))

            // The operator's purge deletes the old instance; the app then starts fresh in the vault.
            #expect(try service.perform(.purge, on: "counter")
                    == "app counter: purged; deleted its old instance at \(plainDirectory); it starts on fresh disks")
            #expect(!Self.exists(plainDirectory))
            try Fixture.stepUntil(service, "counter", is: "running")
            #expect(service.instance("counter")?.directory == vaultDirectory)
            try Fixture.waitBoots(service, [1])
        }
        // The next boot's config moves it back out: refused, the vault's copy untouched.
        do {
            let service = try Self.service(Self.appsJSON(served, [("counter", false, 0)]), persist: persist, vault: vault)
            defer { service.close() }
            try Fixture.stepUntil(service, "counter", is: "broken")
            #expect(service.status().first?.error?.hasPrefix("app counter now keeps its disks on plain PERSIST but its instance is still at \(vaultDirectory);") == true)
            #expect(Self.exists(vaultDirectory + "/disk0.qcow2") && !Self.exists(plainDirectory))
        }
        // A purge counter above the one the old instance recorded is the controller's purge.
        do {
            let lines = LockedLines()
            let service = try Self.service(Self.appsJSON(served, [("counter", false, 1)]), persist: persist, vault: vault, log: lines.append)
            defer { service.close() }
            try Fixture.stepUntil(service, "counter", is: "running")
            #expect(lines.all.contains("apps: counter: purge counter 1: deleted its old instance at \(vaultDirectory)"))
            #expect(!Self.exists(vaultDirectory) && Self.exists(plainDirectory + "/disk0.qcow2"))
            #expect(try String(contentsOfFile: plainDirectory + "/counters", encoding: .utf8) == "restart=0 purge=1\n")
            try Fixture.waitBoots(service, [1])
        }
        // A purge with nothing left behind is the ordinary one (the app has an instance).
        #expect(AppsError.storageSwitch(app: "a", existing: "/x", toVault: true).description.hasPrefix("app a now keeps its disks in the vault"))
    }

    @Test func theVaultFieldIsParsedAndABadValueIsRefusedInOneLine() throws {
        let served = try Fixture.serve()
        let config = try AppsConfig(json: Self.appsJSON(served, [("plain", nil, 0), ("secret", true, 0), ("off", false, 0)]))
        #expect(config.apps.map(\.vault) == [false, true, false])
        let bad = String(decoding: Self.appsJSON(served, [("secret", true, 0)]), as: UTF8.self)
            .replacingOccurrences(of: "\"vault\": true", with: "\"vault\": \"yes\"")
        #expect(throws: AppsError.invalid(field: "apps[0].vault", reason: "\"yes\" is not true or false")) {
            try AppsConfig(json: Array(bad.utf8))
        }
        #expect(AppsError.invalid(field: "apps[0].vault", reason: "\"yes\" is not true or false").description
                == "apps[0].vault: \"yes\" is not true or false")
        // The closed default: a service nobody told about a vault refuses vault apps.
        let service = AppService(config: config, root: "/nonexistent")
        #expect(throws: AppsError.vaultClosed(app: "secret", reason: "this device has no vault")) {
            try service.instanceDirectory(for: config.apps[1])
        }
        #expect(try service.instanceDirectory(for: config.apps[0]) == "/nonexistent/instances/plain")
    }
}

/// Log lines collected from the service's threads.
final class LockedLines: Sendable {
    private let lines = Mutex<[String]>([])
    var all: [String] { lines.withLock { $0 } }
    @Sendable func append(_ line: String) { lines.withLock { $0.append(line) } }
}
