import Foundation
import OutpostPlatform
import OutpostTestSupport
import Synchronization
import Testing
@testable import OutpostApps

/// The guest health check: the rule on a synthetic clock, the apps.json field, and a real QEMU
/// whose guest stops printing its marker getting killed and restarted.
@Suite("App health checks: a console marker or a restart", .serialized)
struct HealthCheckTests {
    @Test func theMarkerMustComeEveryTimeoutAfterTheGraceAndEachQEMUStartsOver() {
        let check = AppHealthCheck(consoleMarker: "alive", timeoutSeconds: 10, graceSeconds: 30)
        var watch = HealthWatch()
        let t0 = MonotonicClock.Instant(nanoseconds: 1_000_000_000_000)
        func at(_ s: Int) -> MonotonicClock.Instant { t0.advanced(by: .seconds(s)) }
        #expect(watch.observe(check, running: false, spawn: 1, lines: [], now: at(0)) == nil, "not running: no judgement")
        #expect(watch.observe(check, running: true, spawn: 1, lines: [], now: at(0)) == nil)
        #expect(watch.observe(check, running: true, spawn: 1, lines: [], now: at(39)) == nil, "grace 30 s + timeout 10 s")
        #expect(watch.observe(check, running: true, spawn: 1, lines: ["I am alive"], now: at(39)) == nil)
        #expect(watch.observe(check, running: true, spawn: 1, lines: ["noise"], now: at(48)) == nil)
        #expect(watch.observe(check, running: true, spawn: 1, lines: [], now: at(49)) == .seconds(10), "10 s since the last marker")
        // A new QEMU (restart or crash) starts over with its own grace period.
        #expect(watch.observe(check, running: true, spawn: 2, lines: [], now: at(50)) == nil)
        #expect(watch.observe(check, running: true, spawn: 2, lines: [], now: at(89)) == nil)
        #expect(watch.observe(check, running: true, spawn: 2, lines: [], now: at(90)) == .seconds(40), "never a marker: silent since it ran")
    }

    @Test func theHealthFieldIsParsedAndRefusedByName() throws {
        func parse(_ health: String) throws(AppsError) -> AppsConfig {
            try AppsConfig(json: Array("""
                {"apps": [{"name": "a", "manifest": {"acKind": "VMManifest", "name": "a",
                  "images": [{"imagename": "boot", "maxsize": 1024}], "resources": [{"name": "cpus", "value": 1}, {"name": "memory", "value": 65536}]},
                  "images": [{"name": "boot", "url": "http://127.0.0.1/b", "sha256": "\(String(repeating: "a", count: 64))", "size": 512}],
                  "health": \(health)}]}
                """.utf8))
        }
        #expect(try parse(#"{"consoleMarker": "ok", "timeoutSeconds": 30}"#).apps.first?.health
                == AppHealthCheck(consoleMarker: "ok", timeoutSeconds: 30, graceSeconds: 60))
        #expect(throws: AppsError.invalid(field: "apps[0].health.timeoutSeconds", reason: "2 is not within 5...86400")) {
            try parse(#"{"consoleMarker": "ok", "timeoutSeconds": 2}"#)
        }
        #expect(throws: AppsError.invalid(field: "apps[0].health.consoleMarker", reason: "\"\" is not 1 to 128 printable characters")) {
            try parse(#"{"consoleMarker": "", "timeoutSeconds": 30}"#)
        }
        #expect(throws: AppsError.self) { try parse(#"{"consoleMarker": "ok", "timeoutSeconds": 30, "probe": "tcp"}"#) }
        #expect(try parse(#"{"tcpPort": 8080, "httpPath": "/healthz", "timeoutSeconds": 30}"#).apps.first?.health
                == AppHealthCheck(consoleMarker: nil, tcpPort: 8080, httpPath: "/healthz", timeoutSeconds: 30, graceSeconds: 60))
        #expect(throws: AppsError.invalid(field: "apps[0].health.httpPath", reason: "needs a tcpPort to send the request to")) {
            try parse(#"{"consoleMarker": "ok", "httpPath": "/", "timeoutSeconds": 30}"#)
        }
        #expect(throws: AppsError.invalid(field: "apps[0].health", reason: "has neither a consoleMarker nor a tcpPort to check")) {
            try parse(#"{"timeoutSeconds": 30}"#)
        }
    }

    @Test func theNetworkProbeIsATCPConnectOrAnHTTPGetAnsweredTwoOrThreeHundred() throws {
        let dir = try TemporaryDirectory("probe")
        try "ok".write(toFile: dir.path + "/healthz", atomically: false, encoding: .utf8)
        let port = try freeLoopbackPort()
        let server = try ChildProcess(["python3", "-m", "http.server", "--bind", "127.0.0.1", "--directory", dir.path, String(port)])
        defer { server.terminate() }
        try waitFor("the HTTP server on \(port)", within: .seconds(20)) {
            HealthProbe.answers(address: "127.0.0.1", port: port, httpPath: nil, timeout: .seconds(1))
        }
        #expect(HealthProbe.answers(address: "127.0.0.1", port: port, httpPath: "/healthz", timeout: .seconds(2)))
        #expect(!HealthProbe.answers(address: "127.0.0.1", port: port, httpPath: "/missing", timeout: .seconds(2)), "404 is no answer")
        server.terminate()
        #expect(!HealthProbe.answers(address: "127.0.0.1", port: port, httpPath: nil, timeout: .seconds(1)), "nobody listens")
        #expect(!HealthProbe.answers(address: "not an address", port: port, httpPath: nil, timeout: .seconds(1)))
    }

    /// The boot counter prints its marker once per boot and then idles, like a guest that hung
    /// after booting: with a 5 s timeout and no grace, the agent kills it, and it boots again.
    @Test func aGuestThatStopsPrintingItsMarkerIsKilledAndRestarted() throws {
        let served = try AppServiceTests.serve()
        let persist = served.dir.path + "/persist"
        try FileManager.default.createDirectory(atPath: persist, withIntermediateDirectories: true)
        var json = String(decoding: AppServiceTests.appsJSON(url: served.url, sha256: served.sha256, size: served.size), as: UTF8.self)
        json = json.replacingOccurrences(of: "\"purge\": 0,", with: "\"purge\": 0, \"health\": {\"consoleMarker\": \"outpost-app: boot\", \"timeoutSeconds\": 5, \"graceSeconds\": 0},")
        #expect(json.contains("\"health\""))
        let lines = Mutex<[String]>([])
        let service = try AppServiceTests.service(Array(json.utf8), persist: persist, log: { line in lines.withLock { $0.append(line) } })
        defer { service.close() }
        try service.prepare()
        try AppServiceTests.stepUntil(service, "counter", is: "running")
        let first = try #require(service.instance("counter")).spawnCount
        // Driven as outpostd drives it: a step and a drain every half second, at most 40 s.
        var killed = false
        for _ in 0..<80 where !killed {
            service.step()
            _ = service.drainConsoles()
            killed = lines.withLock { $0 }.contains { $0.contains("(health check); QEMU pid") }
            if !killed { usleep(500_000) }
        }
        #expect(killed, "\(lines.withLock { $0 })")
        #expect(lines.withLock { $0 }.contains { $0.hasPrefix("warning: apps: counter: no \"outpost-app: boot\" on its console for ") })
        try waitFor("a new QEMU after the kill", within: .seconds(30)) {
            service.step()
            return (service.instance("counter")?.spawnCount ?? 0) > first
        }
        try AppServiceTests.stepUntil(service, "counter", is: "running")
    }
}
