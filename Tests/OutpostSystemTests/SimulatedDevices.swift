import Foundation
import OutpostController
import OutpostProto
import Synchronization

/// Devices that exist only as API clients, for a rollout beside the real one: each registers
/// through the device API with CONFIG's onboarding certificate (a certificate of its own), then,
/// on a background task, polls its config every second and reports `committed` for the base OS
/// version it is told to run, as an agent that updated at once would. Stopped by `stop()`.
final class SimulatedDevices: Sendable {
    let ids: [String]
    private let clients: [DeviceClient]
    private let running = Atomic<Bool>(true)
    private let task = Mutex<Task<Void, Never>?>(nil)

    /// Registers `count` devices with the controller at `url` whose CONFIG directory is `config`.
    init(count: Int, url: String, config: String) async throws {
        let read = { (name: String) throws -> String in try String(contentsOfFile: config + "/" + name, encoding: .utf8) }
        let ca = try read("root-ca.pem")
        let onboard = try DeviceClient(baseURL: url, rootCAPEM: ca, certificatePEM: try read("onboard.cert.pem"),
                                       keyPEM: try read("onboard.key.pem"))
        var ids: [String] = []
        var clients: [DeviceClient] = []
        do {
            for n in 0..<count {
                let identity = try PKI.makeSelfSigned(commonName: "simulated-\(n)")
                let (status, response) = try await onboard.register(deviceCertificatePEM: identity.certificatePEM, serial: "SIM-\(n)")
                guard status == 200 || status == 201, let id = response?.deviceID else {
                    throw ControllerError.invalidInput("simulated device \(n): register answered \(status)")
                }
                ids.append(id)
                clients.append(try DeviceClient(baseURL: url, rootCAPEM: ca, certificatePEM: identity.certificatePEM, keyPEM: identity.keyPEM))
            }
        } catch {
            // Every HTTP client is shut down before it is dropped, also on the way out.
            try? await onboard.shutdown()
            for client in clients { try? await client.shutdown() }
            throw error
        }
        try await onboard.shutdown()
        self.ids = ids
        self.clients = clients
    }

    /// Starts the polling task (bounded: at most `limit` of running).
    func start(limit: Duration = .seconds(1800)) {
        let clients = self.clients
        let started = Task.detached { [self] in
            var hashes = Array(repeating: "", count: clients.count)
            var reported = Array(repeating: "", count: clients.count)
            let end = ContinuousClock.now + limit
            while self.running.load(ordering: .relaxed) && ContinuousClock.now < end {
                for (n, client) in clients.enumerated() {
                    guard let (status, response) = try? await client.config(hash: hashes[n]) else { continue }
                    if status == 200, let response { hashes[n] = response.configHash }
                    let target = status == 200 ? response?.config.baseOs.version ?? "" : ""
                    guard !target.isEmpty, target != reported[n] else { continue }
                    if let reply = try? await client.post(DeviceAPI.info, try Self.committed(target).serializedBytes()), reply.status == 200 {
                        reported[n] = target
                    } else {
                        hashes[n] = ""  // report on the next round
                    }
                }
                try? await Task.sleep(for: .seconds(1))
            }
        }
        task.withLock { $0 = started }
    }

    /// Stops the task and closes every client.
    func stop() async {
        running.store(false, ordering: .relaxed)
        await task.withLock { $0 }?.value
        for client in clients { try? await client.shutdown() }
    }

    /// The info an agent sends once `version` is committed in its second slot.
    static func committed(_ version: String) -> DeviceInfo {
        var info = DeviceInfo()
        info.timeUnixMs = UInt64(Date().timeIntervalSince1970 * 1000)
        info.identity.osVersion = version
        var a = Outpost_Api_V1_SlotInfo(); a.label = "IMGA"; a.state = "unused"; a.version = "1.0.0"
        var b = Outpost_Api_V1_SlotInfo(); b.label = "IMGB"; b.state = "active"; b.version = version; b.booted = true
        info.slots = [a, b]
        info.lastBoot.reason = "update"
        info.update.step = .committed
        info.update.version = version
        return info
    }
}

/// Runs async work from the QEMU tests' synchronous code and waits for it (bounded by `limit`):
/// the work runs as a detached task while this thread blocks, as every other wait here does.
func blocking<T: Sendable>(within limit: Duration = .seconds(300), _ body: @escaping @Sendable () async throws -> T) throws -> T {
    let done = DispatchSemaphore(value: 0)
    let result = Mutex<Result<T, any Error>?>(nil)
    Task.detached {
        let outcome: Result<T, any Error>
        do { outcome = .success(try await body()) } catch { outcome = .failure(error) }
        result.withLock { $0 = outcome }
        done.signal()
    }
    let seconds = Double(limit.components.seconds) + Double(limit.components.attoseconds) / 1e18
    guard done.wait(timeout: .now() + seconds) == .success, let outcome = result.withLock({ $0 }) else {
        throw ControllerError.invalidInput("async work did not finish within \(limit)")
    }
    return try outcome.get()
}
