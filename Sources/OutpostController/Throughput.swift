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

    public enum Mode: String, Sendable { case config, ping }

    /// Registers `clients` devices with the onboarding pair (at the first
    /// URL), then runs both modes for `seconds` each with the same
    /// connections; client n polls `urls[n % urls.count]`, so with several
    /// replicas most devices poll one they did not register with.
    public static func run(urls: [String], rootCAPEM: String, onboardCertPEM: String, onboardKeyPEM: String,
                           clients: Int, seconds: Double, modes: [Mode]) async throws -> [Result] {
        guard let first = urls.first else { throw ControllerError.invalidInput("no controller URL to poll") }
        let onboard = try DeviceClient(baseURL: first, rootCAPEM: rootCAPEM, certificatePEM: onboardCertPEM, keyPEM: onboardKeyPEM)
        var devices: [(DeviceClient, String)] = []
        for n in 0..<clients {
            let id = try PKI.makeSelfSigned(commonName: "bench-\(n)")
            let (status, _) = try await onboard.register(deviceCertificatePEM: id.certificatePEM, serial: "bench-\(n)-\(UUID().uuidString.prefix(8))")
            guard status == 201 || status == 200 else { throw ControllerError.invalidInput("registration answered \(status)") }
            let c = try DeviceClient(baseURL: urls[n % urls.count], rootCAPEM: rootCAPEM, certificatePEM: id.certificatePEM, keyPEM: id.keyPEM)
            let (s, resp) = try await c.config(hash: "")
            guard s == 200, let resp else { throw ControllerError.invalidInput("first config answered \(s)") }
            devices.append((c, resp.configHash))
        }
        try await onboard.shutdown()
        var results: [Result] = []
        for mode in modes {
            // A short warm-up so that every connection is open and TLS done.
            _ = await measure(devices, mode: mode, seconds: min(2, seconds / 5))
            results.append(await measure(devices, mode: mode, seconds: seconds))
        }
        for (c, _) in devices { try? await c.shutdown() }
        return results
    }

    static func measure(_ devices: [(DeviceClient, String)], mode: Mode, seconds: Double) async -> Result {
        let start = ContinuousClock.now
        let deadline = start + .milliseconds(Int(seconds * 1000))
        let per = await withTaskGroup(of: ([Double], Int).self) { g in
            for (c, hash) in devices {
                g.addTask {
                    var lat: [Double] = []
                    var errors = 0
                    var body = ConfigRequest()
                    body.configHash = hash
                    let bytes = (try? body.serializedBytes() as Data) ?? Data()
                    while ContinuousClock.now < deadline {
                        let t0 = ContinuousClock.now
                        do {
                            let r = mode == .config ? try await c.post(DeviceAPI.config, bytes) : try await c.request(.GET, DeviceAPI.ping)
                            if r.status != (mode == .config ? 304 : 200) { errors += 1 }
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
