import Foundation
import OutpostHTTP
import OutpostPlatform
import OutpostTestSupport
import Synchronization
import Testing
@testable import OutpostApps

/// The service outpostd runs: apps.json → download over HTTP (a local Range server) → verified
/// image → overlay → real QEMU with the boot-counter app, on a temporary PERSIST directory.
@Suite("The app service fetches, creates, starts and commands app instances", .serialized)
struct AppServiceTests {
    /// apps.json for the boot-counter app served at `url`.
    static func appsJSON(url: String, sha256: String, size: Int, activate: Bool = true, restart: Int = 0,
                         purge: Int = 0, name: String = "counter") -> [UInt8] {
        Array("""
            {"apps": [{"name": "\(name)", "activate": \(activate), "restart": \(restart), "purge": \(purge),
              "manifest": {"acKind": "VMManifest", "acVersion": "1.1.1", "name": "\(name)", "vmmode": "HV_HVM",
                "images": [{"imagename": "boot", "maxsize": 1024, "maxsizeUnit": "MB", "readonly": false,
                            "preserve": false, "target": "Disk", "drvtype": "HDD"}],
                "resources": [{"name": "cpus", "value": 1}, {"name": "memory", "value": 65536}]},
              "images": [{"name": "boot", "url": "\(url)", "sha256": "\(sha256)", "size": \(size)}]}]}
            """.utf8)
    }

    struct Served {
        let dir: TemporaryDirectory
        let server: RangeFileServer
        let url: String
        let sha256: String
        let size: Int
    }

    static func serve() throws -> Served {
        let dir = try TemporaryDirectory("appservice")
        let www = dir.path + "/www"
        try FileManager.default.createDirectory(atPath: www, withIntermediateDirectories: true)
        let base = try BootCounter.disk(in: www)
        let size = Int(try FileManager.default.attributesOfItem(atPath: base.path)[.size] as? Int ?? 0)
        let sha = try sh("sha256sum", base.path).split(separator: " ").first.map(String.init) ?? ""
        let server = try RangeFileServer(root: www)
        return Served(dir: dir, server: server, url: "http://127.0.0.1:\(server.port)/bootcounter-acpi.raw", sha256: sha, size: size)
    }

    static func service(_ json: [UInt8], persist: String, log: @escaping @Sendable (String) -> Void = { _ in }) throws -> AppService {
        var options = AppService.Options()
        options.instance = AppInstanceTests.options()
        options.retryBackoff = .milliseconds(200)
        return AppService(config: try AppsConfig(json: json), root: persist + "/apps", options: options, log: log)
    }

    /// Steps the service until `name` is in `state`, at most `within`.
    static func stepUntil(_ service: AppService, _ name: String, is state: String, within: Duration = .seconds(30)) throws {
        try waitFor("\(name) \(state): \(service.status().map(\.line))", within: within, every: .milliseconds(50)) {
            service.step()
            return service.status().first { $0.name == name }?.state == state
        }
    }

    static func boots(_ service: AppService, _ name: String = "counter") -> [Int] {
        BootCounter.boots(service.instance(name)?.console() ?? "")
    }

    @Test func anAppFromAppsJSONIsDownloadedVerifiedStartedAndCommanded() throws {
        let served = try Self.serve()
        let persist = served.dir.path + "/persist"
        try FileManager.default.createDirectory(atPath: persist, withIntermediateDirectories: true)
        let lines = Mutex<[String]>([])
        let service = try Self.service(Self.appsJSON(url: served.url, sha256: served.sha256, size: served.size),
                                       persist: persist, log: { line in lines.withLock { $0.append(line) } })
        defer { service.close() }
        try service.prepare()
        #expect(service.status().map(\.state) == ["halted"], "nothing fetched before the first step")

        try Self.stepUntil(service, "counter", is: "running")
        let status = try #require(service.status().first)
        #expect(status.pid != nil && status.error == nil && status.runningSinceUnix != nil)
        #expect((status.bootSeconds ?? 0) > 0, "the boot time is reported")
        #expect((status.diskBytes ?? 0) > 0 && (status.diskBytes ?? 0) < 4 << 20, "the overlay's allocated bytes: \(String(describing: status.diskBytes))")
        #expect(status.line.contains(" disk="), "\(status.line)")
        #expect(status.line.hasPrefix("app counter: running pid="), "\(status.line)")
        #expect(FileManager.default.fileExists(atPath: persist + "/apps/images/verified/" + served.sha256))
        #expect(FileManager.default.fileExists(atPath: persist + "/apps/instances/counter/disk0.qcow2"))
        #expect(try String(contentsOfFile: persist + "/apps/instances/counter/counters", encoding: .utf8) == "restart=0 purge=0\n")
        #expect(lines.withLock { $0 }.contains { $0.contains("counter: downloading boot") })
        try AppServiceTests.waitBoots(service, [1])

        #expect(try service.perform(.restart, on: "counter") == "app counter: restarted on its disks")
        try Self.waitBoots(service, [1, 2])
        #expect(try service.perform(.snapshot("two"), on: "counter") == "app counter: snapshot two taken")
        #expect(try service.perform(.restart, on: "counter").contains("restarted"))
        try Self.waitBoots(service, [1, 2, 3])
        // Rolling back restores RAM and disk at boot 2; the next boot counts from there.
        #expect(try service.perform(.rollback("two"), on: "counter") == "app counter: rolled back to snapshot two")
        #expect(try service.perform(.restart, on: "counter").contains("restarted"))
        try Self.waitBoots(service, [1, 2, 3, 3])

        #expect(try service.perform(.purge, on: "counter") == "app counter: purged; restarted on fresh disks")
        try Self.waitBoots(service, [1, 2, 3, 3, 1])

        // Right after its boot line the guest may not answer the power button yet; then QMP quit ends it.
        let stopped = try service.perform(.stop, on: "counter")
        #expect(stopped == "app counter: halted (the guest powered down)"
                || stopped == "app counter: halted (the guest ignored the power button; QEMU quit)", "\(stopped)")
        // A stopped app stays stopped: the service does not start it again.
        for _ in 0..<10 { service.step(); MonotonicClock.sleep(for: .milliseconds(50)) }
        let halted = try #require(service.status().first)
        #expect(halted.state == "halted" && halted.stoppedByOperator && halted.pid == nil)
        #expect(halted.line.contains("(stopped by the operator)"))
        #expect(try service.perform(.start, on: "counter") == "app counter: started")
        try Self.waitBoots(service, [1, 2, 3, 3, 1, 2])

        #expect(try service.perform(.kill, on: "counter").contains("killed; it is restarted like after a crash"))
        try Self.waitBoots(service, [1, 2, 3, 3, 1, 2, 3])
        try Self.stepUntil(service, "counter", is: "running")
        #expect(service.status().first?.restarts == 6, "every QEMU start after the first: \(service.status())")
        let tail = try service.consoleTail("counter", lines: 5)
        #expect(tail.contains("outpost-app: boot 3") && tail.count <= 5, "\(tail)")
        #expect(throws: AppsError.unknownApp(name: "nope", known: ["counter"])) { try service.consoleTail("nope", lines: 1) }
        #expect(throws: AppsError.unknownApp(name: "nope", known: ["counter"])) { try service.perform(.restart, on: "nope") }
        #expect((try? service.perform(.rollback("missing"), on: "counter")) == nil, "no snapshot of that name")
        #expect(service.instance("counter")?.state == .running, "a refused rollback leaves the app running")
    }

    /// Waits until the app's console shows exactly `expected` boots.
    static func waitBoots(_ service: AppService, _ expected: [Int]) throws {
        try waitFor("boots \(expected): \(boots(service))", within: .seconds(30)) { boots(service) == expected }
        #expect(boots(service) == expected)
    }

    @Test func aKilledQEMUIsRestartedAndTheCountersActAcrossServiceStarts() throws {
        let served = try Self.serve()
        let persist = served.dir.path + "/persist"
        try FileManager.default.createDirectory(atPath: persist, withIntermediateDirectories: true)
        do {
            let service = try Self.service(Self.appsJSON(url: served.url, sha256: served.sha256, size: served.size), persist: persist)
            defer { service.close() }
            try Self.stepUntil(service, "counter", is: "running")
            try Self.waitBoots(service, [1])
            let pid = try #require(service.status().first?.pid)
            #expect(kill(pid, SIGKILL) == 0)
            try Self.waitBoots(service, [1, 2])
            try Self.stepUntil(service, "counter", is: "running")
            #expect(service.status().first?.restarts == 1)
        }
        // The next boot with the same counters: the disk (counter 2) is kept.
        do {
            let service = try Self.service(Self.appsJSON(url: served.url, sha256: served.sha256, size: served.size), persist: persist)
            defer { service.close() }
            try Self.stepUntil(service, "counter", is: "running")
            try Self.waitBoots(service, [1, 2, 3])
        }
        // The purge counter went up: the app starts on a fresh disk, once.
        do {
            let service = try Self.service(Self.appsJSON(url: served.url, sha256: served.sha256, size: served.size, purge: 1),
                                           persist: persist)
            defer { service.close() }
            try Self.stepUntil(service, "counter", is: "running")
            try Self.waitBoots(service, [1, 2, 3, 1])
            #expect(try String(contentsOfFile: persist + "/apps/instances/counter/counters", encoding: .utf8) == "restart=0 purge=1\n")
        }
        do {
            let service = try Self.service(Self.appsJSON(url: served.url, sha256: served.sha256, size: served.size, purge: 1),
                                           persist: persist)
            defer { service.close() }
            try Self.stepUntil(service, "counter", is: "running")
            try Self.waitBoots(service, [1, 2, 3, 1, 2])
        }
        // Only one download happened over all four starts: the verified image is kept by digest.
        #expect(served.server.requests().count == 1)
    }

    @Test func aWrongDigestIsBrokenWithTheErrorAndNothingIsKeptOrStarted() throws {
        let served = try Self.serve()
        let persist = served.dir.path + "/persist"
        try FileManager.default.createDirectory(atPath: persist, withIntermediateDirectories: true)
        let wrong = String(repeating: "0", count: 64)
        let service = try Self.service(Self.appsJSON(url: served.url, sha256: wrong, size: served.size), persist: persist)
        defer { service.close() }
        try Self.stepUntil(service, "counter", is: "broken")
        let status = try #require(service.status().first)
        #expect(status.error?.contains("sha256 is \(served.sha256), expected \(wrong)") == true, "\(status.line)")
        #expect(status.pid == nil && service.instance("counter") == nil)
        #expect(entries(persist + "/apps/images/verified").isEmpty)
        #expect(throws: AppsError.self) { try service.perform(.restart, on: "counter") }
    }

    @Test func anAppNotActivatedIsFetchedButNotStarted() throws {
        let served = try Self.serve()
        let persist = served.dir.path + "/persist"
        try FileManager.default.createDirectory(atPath: persist, withIntermediateDirectories: true)
        let service = try Self.service(Self.appsJSON(url: served.url, sha256: served.sha256, size: served.size, activate: false),
                                       persist: persist)
        defer { service.close() }
        try waitFor("the instance is created", within: .seconds(30)) {
            service.step()
            return service.instance("counter") != nil
        }
        for _ in 0..<10 { service.step(); MonotonicClock.sleep(for: .milliseconds(50)) }
        let status = try #require(service.status().first)
        #expect(status.state == "halted" && status.pid == nil && !status.activate)
        #expect(status.line == "app counter: halted (not activated)")
    }
}
