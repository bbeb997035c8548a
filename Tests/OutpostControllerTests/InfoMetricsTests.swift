import Foundation
@testable import OutpostController
import OutpostProto
import Testing

/// Info replaces the newest and records update steps; metrics keep a short history.
@Suite("Controller info and metrics", .serialized)
struct InfoMetricsTests {
    static func info(step: UpdateStatus.Step, version: String, reason: String = "") -> DeviceInfo {
        var i = DeviceInfo()
        i.timeUnixMs = UInt64(nowMs())
        i.identity.serial = "SN-INFO"
        i.identity.osVersion = "1.0.0"
        var a = SlotInfo(); a.label = "ROOT-A"; a.state = "active"; a.version = "1.0.0"; a.booted = true
        var b = SlotInfo(); b.label = "ROOT-B"; b.state = "unused"
        i.slots = [a, b]
        i.lastBoot.reason = "first-boot"
        var p = NetworkPort(); p.name = "eth0"; p.addresses = ["10.0.2.15/24"]; p.active = true; p.carrier = true
        i.ports = [p]
        i.update.step = step
        i.update.version = version
        i.update.reason = reason
        i.handled.reboot = 1
        return i
    }

    @Test func infoIsKeptNewestWithTheUpdateStepsItWentThrough() async throws {
        let c = try await RunningController(tag: "info")
        defer { Task { await c.stop() } }
        let (dc, id) = try await c.newDevice(serial: "SN-INFO")
        for (step, reason) in [(UpdateStatus.Step.downloading, ""), (.downloading, ""), (.installing, ""), (.testing, ""),
                               (.failed, "health check failed")] {
            let r = try await dc.post(DeviceAPI.info, try Self.info(step: step, version: "3.0.0", reason: reason).serializedBytes())
            #expect(r.status == 200)
        }
        let history = try await c.store.updateHistory(deviceID: id)
        // The repeated `downloading` (a progress report) is one step.
        #expect(history.map(\.step) == ["downloading", "installing", "testing", "failed"])
        #expect(history.last?.reason == "health check failed")
        #expect(try await c.store.counts(deviceID: id).info == 1)

        let list = try await c.call("GET", "/devices") as? [[String: Any]] ?? []
        let row = try #require(list.first { $0["id"] as? String == id })
        #expect(row["slot"] as? String == "ROOT-A")
        #expect(row["version"] as? String == "1.0.0")
        #expect(row["lastBoot"] as? String == "first-boot")
        #expect(row["update"] as? String == "failed 3.0.0")
        #expect((row["ports"] as? [[String: Any]])?.first?["name"] as? String == "eth0")
        let show = try await c.call("GET", "/devices/\(id)") as? [String: Any]
        #expect((show?["updateHistory"] as? [Any])?.count == 4)
        #expect(((show?["info"] as? [String: Any])?["handled"] as? [String: Any])?["reboot"] as? Int == 1)
        try await dc.shutdown()
    }

    @Test func metricsKeepTheNewestAndAShortHistory() async throws {
        let c = try await RunningController(tag: "metrics")
        defer { Task { await c.stop() } }
        let (dc, id) = try await c.newDevice(serial: "SN-MET")
        for n in 1...(Limits.metricsHistory + 5) {
            var m = DeviceMetrics()
            m.timeUnixMs = UInt64(nowMs())
            m.uptimeS = UInt64(n)
            m.cpuPercent = 1.5
            var p = PortCounters(); p.name = "eth0"; p.rxBytes = UInt64(n * 100)
            m.ports = [p]
            m.watchdog.armed = true
            #expect(try await dc.post(DeviceAPI.metrics, try m.serializedBytes()).status == 200)
        }
        #expect(try await c.store.counts(deviceID: id).metrics == Limits.metricsHistory)
        let v = try await c.call("GET", "/devices/\(id)/metrics") as? [String: Any]
        let newest = (v?["metrics"] as? [[String: Any]])?.first
        #expect(newest?["uptimeS"] as? String == String(Limits.metricsHistory + 5))
        try await dc.shutdown()
    }
}
