import AsyncHTTPClient
import Foundation
import OutpostBundle
@testable import OutpostController
import OutpostProto
import OutpostTestSupport
import Testing

/// `serve --metrics-listen`: the controller's own health in Prometheus' text format.
@Suite("Controller metrics", .postgresServer)
struct MetricsTests {
    /// The value of the sample `name{labels}` (labels as they are printed), or nil.
    static func sample(_ text: String, _ series: String) -> Double? {
        for line in text.split(separator: "\n") where line.hasPrefix(series + " ") {
            return Double(line.dropFirst(series.count + 1))
        }
        return nil
    }

    @Test func requestsLatencyDevicesRolloutsAndThePoolAreExported() async throws {
        let fixture = try StoreFixture(.postgres, tag: "metrics")
        let key = SigningKey.generate()
        let c = try await RunningController(tag: "metrics", trustKey: key, store: fixture.location, rolloutTick: .milliseconds(100),
                                            metrics: true)
        defer { Task { await c.stop() } }
        #expect(c.metricsPort != 0)
        var clients: [DeviceClient] = []
        for n in 0..<3 {
            let (dc, _) = try await c.newDevice(serial: "SN-M\(n)")
            let (status, resp) = try await dc.config(hash: "")
            #expect(status == 200)
            for _ in 0..<4 { #expect(try await dc.config(hash: resp?.configHash ?? "").0 == 304) }
            clients.append(dc)
        }
        var random = SplitMix64(seed: 4)
        let bundle = c.root + "/v2.bundle"
        try Data(try makeBundle(key: key, version: "2.0.0", size: 1024, random: &random)).write(to: URL(fileURLWithPath: bundle))
        let created = try await c.call("POST", "/rollouts", body: ["bundle": bundle, "select": "", "waves": "100%", "soakMs": 0,
                                                                   "deadlineMs": 600_000, "maxFailuresPercent": 0]) as? [String: Any]
        let id = try #require(created?["id"] as? String)

        let http = HTTPClient(eventLoopGroupProvider: .singleton)
        defer { _ = http.shutdown() }
        var text = ""
        // The advancer starts the wave and gives its devices the base OS within a few ticks (the
        // wave first, its devices a moment later): read until the gauges show both (bounded).
        for _ in 0..<100 {
            let resp = try await http.execute(HTTPClientRequest(url: "http://127.0.0.1:\(c.metricsPort)/metrics"), timeout: .seconds(10))
            #expect(resp.status == .ok)
            text = String(buffer: try await resp.body.collect(upTo: 1 << 20))
            if Self.sample(text, "outpost_controller_rollout_wave{rollout=\"\(id)\"}") == 1,
               Self.sample(text, "outpost_controller_rollout_devices{rollout=\"\(id)\",state=\"updating\"}") == 3 { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(Self.sample(text, "outpost_controller_requests_total{route=\"config\",status=\"304\"}") == 12, "\(text)")
        #expect(Self.sample(text, "outpost_controller_requests_total{route=\"config\",status=\"200\"}") == 3)
        #expect(Self.sample(text, "outpost_controller_requests_total{route=\"register\",status=\"201\"}") == 3)
        #expect(Self.sample(text, "outpost_controller_request_duration_seconds_count{route=\"config\"}") == 15)
        #expect(text.contains("outpost_controller_request_duration_seconds_bucket{route=\"config\",le=\"+Inf\"} 15"))
        #expect(Self.sample(text, "outpost_controller_devices") == 3)
        #expect(Self.sample(text, "outpost_controller_devices_online") == 3)
        #expect(Self.sample(text, "outpost_controller_rollout_wave{rollout=\"\(id)\"}") == 1)
        #expect(Self.sample(text, "outpost_controller_rollout_devices{rollout=\"\(id)\",state=\"updating\"}") == 3)
        #expect(Self.sample(text, "outpost_controller_db_pool_connections_max") == 20)
        #expect((Self.sample(text, "outpost_controller_db_operations{result=\"ok\"}") ?? 0) > 0)
        #expect(Self.sample(text, "outpost_controller_db_operations_in_flight") != nil)
        for dc in clients { try await dc.shutdown() }
    }
}
