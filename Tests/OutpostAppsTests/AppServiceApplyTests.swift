import Foundation
import OutpostHTTP
import OutpostPlatform
import OutpostTestSupport
import Testing
@testable import OutpostApps

/// A new config at runtime (the controller's apps section): AppService.apply adds, removes and
/// acts on counters, with real QEMU running the boot-counter app (AppServiceTests' fixtures).
@Suite("AppService.apply replaces the configured apps at runtime", .serialized)
struct AppServiceApplyTests {
    typealias Fixture = AppServiceTests

    @Test func applyAddsAnAppThatRunsAndWithoutItStopsAndRemovesIt() throws {
        let served = try Fixture.serve()
        let persist = served.dir.path + "/persist"
        try FileManager.default.createDirectory(atPath: persist, withIntermediateDirectories: true)
        let service = try Fixture.service(Array(#"{"apps": []}"#.utf8), persist: persist)
        defer { service.close() }
        try service.prepare()
        #expect(service.names.isEmpty)

        let lines = service.apply(try AppsConfig(json: Fixture.appsJSON(url: served.url, sha256: served.sha256, size: served.size)))
        #expect(lines.isEmpty, "adding needs no stop: \(lines)")
        #expect(service.names == ["counter"])
        try Fixture.stepUntil(service, "counter", is: "running")
        try Fixture.waitBoots(service, [1])
        let pid = try #require(service.status().first?.pid)
        #expect(FileManager.default.fileExists(atPath: persist + "/apps/instances/counter/disk0.qcow2"))

        // Applying the same config again changes nothing: same QEMU, no log line.
        #expect(service.apply(try AppsConfig(json: Fixture.appsJSON(url: served.url, sha256: served.sha256, size: served.size))).isEmpty)
        #expect(service.status().first?.pid == pid)

        // A changed manifest (more memory): stopped and rebuilt on the same image, so its overlay
        // (same base) is kept and the counter carries on.
        let bigger = String(decoding: Fixture.appsJSON(url: served.url, sha256: served.sha256, size: served.size), as: UTF8.self)
            .replacingOccurrences(of: "\"value\": 65536", with: "\"value\": 131072")
        #expect(service.apply(try AppsConfig(json: Array(bigger.utf8))) == ["apps: counter: manifest or images changed; rebuilt"])
        #expect(kill(pid, 0) != 0, "the old QEMU has ended")
        try Fixture.stepUntil(service, "counter", is: "running")
        try Fixture.waitBoots(service, [1, 2])
        #expect(service.instance("counter")?.manifest.memoryBytes == 131072 << 10)
        let rebuiltPID = try #require(service.status().first?.pid)

        // Without it: stopped, its directory gone, and its image collected (no app uses it).
        let removed = service.apply(AppsConfig(apps: []))
        #expect(removed == ["apps: counter: removed (no longer configured)"], "\(removed)")
        #expect(service.names.isEmpty && service.status().isEmpty)
        #expect(kill(rebuiltPID, 0) != 0, "the QEMU has ended")
        #expect(!FileManager.default.fileExists(atPath: persist + "/apps/instances/counter"))
        #expect(entries(persist + "/apps/images/verified").isEmpty)
        #expect(throws: AppsError.unknownApp(name: "counter", known: [])) { try service.perform(.restart, on: "counter") }
    }

    @Test func aPurgeCounterThatGoesUpPurgesTheRunningAppOnceAndRestartRestartsIt() throws {
        let served = try Fixture.serve()
        let persist = served.dir.path + "/persist"
        try FileManager.default.createDirectory(atPath: persist, withIntermediateDirectories: true)
        let json = { (restart: Int, purge: Int) in
            Fixture.appsJSON(url: served.url, sha256: served.sha256, size: served.size, restart: restart, purge: purge)
        }
        let service = try Fixture.service(json(0, 0), persist: persist)
        defer { service.close() }
        try Fixture.stepUntil(service, "counter", is: "running")
        try Fixture.waitBoots(service, [1])

        // restart + 1: the same disk boots again (counter 2).
        #expect(service.apply(try AppsConfig(json: json(1, 0))) == ["apps: counter: restarted (restart counter 1)"])
        try Fixture.waitBoots(service, [1, 2])
        // purge + 1: fresh disk (counter back to 1), and the counters are recorded.
        #expect(service.apply(try AppsConfig(json: json(1, 1))) == ["apps: counter: purged (purge counter 1)"])
        try Fixture.waitBoots(service, [1, 2, 1])
        #expect(try String(contentsOfFile: persist + "/apps/instances/counter/counters", encoding: .utf8) == "restart=1 purge=1\n")
        // The same counters again: nothing happens.
        #expect(service.apply(try AppsConfig(json: json(1, 1))).isEmpty)
        for _ in 0..<10 { service.step(); MonotonicClock.sleep(for: .milliseconds(50)) }
        #expect(Fixture.boots(service) == [1, 2, 1])
        try Fixture.stepUntil(service, "counter", is: "running")
        #expect((service.status().first?.cpuSeconds ?? -1) >= 0, "the running QEMU's CPU time is read from /proc")

        // activate false: halted and kept; submit (the controller client's way) applies in the next step.
        service.submit(try AppsConfig(json: Fixture.appsJSON(url: served.url, sha256: served.sha256, size: served.size,
                                                             activate: false, restart: 1, purge: 1)))
        try Fixture.stepUntil(service, "counter", is: "halted")
        for _ in 0..<10 { service.step(); MonotonicClock.sleep(for: .milliseconds(50)) }
        let halted = try #require(service.status().first)
        #expect(halted.pid == nil && !halted.activate && service.instance("counter") != nil)
        #expect(served.server.requests().count == 1, "one download for all of it")
    }
}
