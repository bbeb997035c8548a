import Foundation
import Prometheus

/// The controller's own health in Prometheus' text format, served by `serve --metrics-listen` on a
/// port of its own (never on the devices' TLS port). One registry per `serve`, not the global
/// MetricsSystem, so several controllers in one process (the tests' replicas) keep theirs apart.
///
///     outpost_controller_requests_total{route,status}          device API requests answered
///     outpost_controller_request_duration_seconds{route}       their latency (histogram)
///     outpost_controller_devices                               registered devices
///     outpost_controller_devices_online                        devices seen within the online window
///     outpost_controller_rollout_devices{rollout,state}        open rollouts' devices by state
///     outpost_controller_rollout_wave{rollout}                 the wave under way (1-based)
///     outpost_controller_db_pool_connections_max               PostgreSQL: the pool's size
///     outpost_controller_db_operations_in_flight               PostgreSQL: store operations running now
///     outpost_controller_db_operations{result}                 PostgreSQL: store operations done since start (ok, error)
public final class ControllerMetrics: Sendable {
    public let registry = PrometheusCollectorRegistry()
    let fleet: Fleet
    /// A device seen within this window counts as online (five default config polls).
    let onlineWindowMs: Int64

    static let buckets: [Duration] = [.milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25),
                                      .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1),
                                      .seconds(2.5), .seconds(5)]

    public init(fleet: Fleet, onlineWindowMs: Int64 = 300_000) {
        self.fleet = fleet
        self.onlineWindowMs = onlineWindowMs
    }

    static func name(_ metric: String, unit: String = "", _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(namespace: "outpost_controller", metricName: metric, unitName: unit, helpText: help)
    }

    static var requests: MetricNameDescriptor { name("requests", unit: "total", "Device API requests answered, by route and HTTP status") }
    static var duration: MetricNameDescriptor { name("request_duration", unit: "seconds", "Device API request latency, by route") }
    static var devices: MetricNameDescriptor { name("devices", "Registered devices") }
    static var online: MetricNameDescriptor { name("devices_online", "Devices seen within the online window") }
    static var rolloutDevices: MetricNameDescriptor { name("rollout_devices", "Open rollouts' devices, by state") }
    static var rolloutWave: MetricNameDescriptor { name("rollout_wave", "The wave under way (1-based; 0 before the first)") }
    static var poolMax: MetricNameDescriptor { name("db_pool_connections_max", "PostgreSQL: the connection pool's size") }
    static var inFlight: MetricNameDescriptor { name("db_operations_in_flight", "PostgreSQL: store operations running now") }
    static var operations: MetricNameDescriptor { name("db_operations", "PostgreSQL: store operations done since start, by result") }

    /// One answered device API request.
    public func request(route: String, status: Int, duration: Duration) {
        registry.makeCounter(descriptor: Self.requests, labels: [("route", route), ("status", String(status))]).increment()
        registry.makeDurationHistogram(descriptor: Self.duration, labels: [("route", route)], buckets: Self.buckets).record(duration)
    }

    /// The gauges read at scrape time (devices, rollouts, the database pool), then everything.
    public func render(now: Int64 = nowMs()) async -> String {
        let devices = fleet.devices()
        registry.makeGauge(descriptor: Self.devices).set(Double(devices.count))
        // From the store: every replica's flushed last-seen times (at most one flush interval old),
        // not only the devices that called this one.
        if let online = try? await fleet.store.countSeen(sinceMs: now - onlineWindowMs) {
            registry.makeGauge(descriptor: Self.online).set(Double(online))
        }
        if let rollouts = try? await fleet.store.rollouts() {
            for r in rollouts where r.state == "running" || r.state == "paused" || r.state == "halted" {
                let states = (try? await fleet.store.rolloutDevices(rolloutID: r.id)).map { ds in
                    Dictionary(grouping: ds, by: \.state).mapValues(\.count)
                } ?? [:]
                for state in ["pending", "updating", "committed", "failed"] {
                    registry.makeGauge(descriptor: Self.rolloutDevices, labels: [("rollout", r.id), ("state", state)])
                        .set(Double(states[state] ?? 0))
                }
                registry.makeGauge(descriptor: Self.rolloutWave, labels: [("rollout", r.id)]).set(Double(r.wave + 1))
            }
        }
        if let pool = (fleet.store as? PostgresFleetStore)?.poolStatistics {
            registry.makeGauge(descriptor: Self.poolMax).set(Double(pool.maximumConnections))
            registry.makeGauge(descriptor: Self.inFlight).set(Double(pool.inFlight))
            registry.makeGauge(descriptor: Self.operations, labels: [("result", "ok")]).set(Double(pool.succeeded))
            registry.makeGauge(descriptor: Self.operations, labels: [("result", "error")]).set(Double(pool.failed))
        }
        return registry.emitToString()
    }
}
