import Foundation
import NIOHTTP1
import OutpostProto

/// The throughput benchmark's client side: C simulated devices, each with
/// its own certificate and a keep-alive connection, polling for a bounded
/// time and timing every poll.
public enum Throughput {
    public struct Result: Codable, Sendable {
        public var mode: String
        public var clients: Int
        public var seconds: Double
        public var requests: Int
        public var errors: Int
        public var perSecond: Double
        public var p50ms: Double
        public var p99ms: Double
    }

    /// `ping` and `config` (304) read nothing from the store; `info` (the newest kept per device),
    /// `metrics` (the newest 60 kept) and `logs` (a batch of 10 entries, each stored) are the
    /// writes a fleet makes at its steady cadence. `handshake` is a ping with `Connection: close`,
    /// so every call pays a new mutual-TLS handshake, as outpostd's client does today.
    public enum Mode: String, Sendable, CaseIterable { case config, ping, handshake, info, metrics, logs }

    /// One simulated device's request bodies, shaped as outpostd's: an info with identity, two slots
    /// and three ports; metrics with three ports; logs in batches of 10 lines with rising sequences.
    struct Bodies {
        let config: Data
        let info: Data
        let metrics: Data
        var sequence: UInt64 = 0

        init(hash: String, serial: String) {
            var request = ConfigRequest()
            request.configHash = hash
            config = (try? request.serializedBytes() as Data) ?? Data()
            let now = UInt64(Date().timeIntervalSince1970 * 1000)
            let portNames = ["eth0", "wlan0", "wwan0"]
            var info = DeviceInfo()
            info.identity.serial = serial
            info.identity.osVersion = "1.0.0"
            info.identity.board = "qemu-q35"
            info.identity.arch = "x86_64"
            info.identity.hostname = "outpost-" + serial
            info.slots = [("IMGA", "active", "1.0.0", true), ("IMGB", "inactive", "0.9.0", false)].map { label, state, version, booted in
                var slot = SlotInfo()
                slot.label = label
                slot.state = state
                slot.version = version
                slot.booted = booted
                return slot
            }
            info.ports = portNames.enumerated().map { n, name in
                var port = NetworkPort()
                port.name = name
                port.mac = "52:54:00:12:34:5\(n)"
                port.mode = "dhcp"
                port.carrier = n == 0
                port.addresses = n == 0 ? ["10.0.2.15/24"] : []
                port.gateway = n == 0 ? "10.0.2.2" : ""
                port.active = n == 0
                port.usable = n == 0
                port.cost = UInt32(n * 10)
                return port
            }
            info.configHash = hash
            info.timeUnixMs = now
            self.info = (try? info.serializedBytes() as Data) ?? Data()
            var metrics = DeviceMetrics()
            metrics.timeUnixMs = now
            metrics.uptimeS = 86_400
            metrics.cpuPercent = 3.5
            metrics.memoryUsedBytes = 180 << 20
            metrics.memoryTotalBytes = 2 << 30
            metrics.persistUsedBytes = 400 << 20
            metrics.persistTotalBytes = 8 << 30
            metrics.ports = portNames.map { name in
                var counters = PortCounters()
                counters.name = name
                counters.rxBytes = 123_456_789
                counters.txBytes = 98_765_432
                return counters
            }
            metrics.watchdog.armed = true
            metrics.watchdog.timeoutS = 30
            metrics.watchdog.sinceLastFeedS = 2
            self.metrics = (try? metrics.serializedBytes() as Data) ?? Data()
        }

        /// The next batch of 10 log lines, sequences continuing from the last batch.
        mutating func logs() -> Data {
            var batch = LogBatch()
            batch.entries = (0..<10).map { _ in
                sequence += 1
                var entry = LogEntry()
                entry.sequence = sequence
                entry.timeUnixMs = UInt64(Date().timeIntervalSince1970 * 1000)
                entry.source = "network"
                entry.severity = .info
                entry.message = "network: eth0 lease renewed: 10.0.2.15/24 via 10.0.2.2, next renewal in 43200 s (seq \(sequence))"
                return entry
            }
            return (try? batch.serializedBytes() as Data) ?? Data()
        }

        /// The call for `mode` and the status that means it was answered as a device expects.
        mutating func request(_ mode: Mode) -> (path: String, body: Data?, expect: Int) {
            switch mode {
            case .ping, .handshake: return (DeviceAPI.ping, nil, 200)
            case .config: return (DeviceAPI.config, config, 304)
            case .info: return (DeviceAPI.info, info, 200)
            case .metrics: return (DeviceAPI.metrics, metrics, 200)
            case .logs: return (DeviceAPI.logs, logs(), 200)
            }
        }
    }

    /// Registers `clients` devices with the onboarding pair (at the first
    /// URL), then runs each mode for `seconds` with the same
    /// connections; client n polls `urls[n % urls.count]`, so with several
    /// replicas most devices poll one they did not register with.
    public static func run(urls: [String], rootCAPEM: String, onboardCertPEM: String, onboardKeyPEM: String,
                           clients: Int, seconds: Double, modes: [Mode]) async throws -> [Result] {
        guard let first = urls.first else { throw ControllerError.invalidInput("no controller URL to poll") }
        let onboard = try DeviceClient(baseURL: first, rootCAPEM: rootCAPEM, certificatePEM: onboardCertPEM, keyPEM: onboardKeyPEM)
        var devices: [(DeviceClient, String, String)] = []
        for n in 0..<clients {
            let id = try PKI.makeSelfSigned(commonName: "bench-\(n)")
            let serial = "bench-\(n)-\(UUID().uuidString.prefix(8))"
            let (status, _) = try await onboard.register(deviceCertificatePEM: id.certificatePEM, serial: serial)
            guard status == 201 || status == 200 else { throw ControllerError.invalidInput("registration answered \(status)") }
            let c = try DeviceClient(baseURL: urls[n % urls.count], rootCAPEM: rootCAPEM, certificatePEM: id.certificatePEM, keyPEM: id.keyPEM)
            let (s, resp) = try await c.config(hash: "")
            guard s == 200, let resp else { throw ControllerError.invalidInput("first config answered \(s)") }
            devices.append((c, resp.configHash, serial))
        }
        try await onboard.shutdown()
        var results: [Result] = []
        for mode in modes {
            // A short warm-up so that every connection is open and TLS done.
            _ = await measure(devices, mode: mode, seconds: min(2, seconds / 5))
            results.append(await measure(devices, mode: mode, seconds: seconds))
        }
        for (c, _, _) in devices { try? await c.shutdown() }
        return results
    }

    static func measure(_ devices: [(DeviceClient, String, String)], mode: Mode, seconds: Double) async -> Result {
        let start = ContinuousClock.now
        let deadline = start + .milliseconds(Int(seconds * 1000))
        let per = await withTaskGroup(of: ([Double], Int).self) { g in
            for (c, hash, serial) in devices {
                g.addTask {
                    var lat: [Double] = []
                    var errors = 0
                    var bodies = Bodies(hash: hash, serial: serial)
                    while ContinuousClock.now < deadline {
                        let t0 = ContinuousClock.now
                        let (path, body, expect) = bodies.request(mode)
                        do {
                            let close = mode == .handshake ? [("Connection", "close")] : []
                            let status = if let body { try await c.post(path, body).status } else {
                                try await c.request(.GET, path, headers: close).status
                            }
                            if status != expect { errors += 1 }
                        } catch { errors += 1 }
                        let d = ContinuousClock.now - t0
                        lat.append(Double(d.components.seconds) * 1000 + Double(d.components.attoseconds) / 1e15)
                    }
                    return (lat, errors)
                }
            }
            var all: [([Double], Int)] = []
            for await r in g { all.append(r) }
            return all
        }
        let elapsed = ContinuousClock.now - start
        let secs = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        let lat = per.flatMap(\.0).sorted()
        let errors = per.map(\.1).reduce(0, +)
        func pct(_ p: Double) -> Double { lat.isEmpty ? 0 : lat[min(lat.count - 1, Int(Double(lat.count) * p))] }
        return Result(mode: mode.rawValue, clients: devices.count, seconds: secs, requests: lat.count, errors: errors,
                      perSecond: Double(lat.count - errors) / secs, p50ms: pct(0.5), p99ms: pct(0.99))
    }
}
