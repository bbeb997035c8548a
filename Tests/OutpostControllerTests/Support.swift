import CompressNIO
import NIOCore
import Crypto
import Foundation
import Logging
import OutpostBundle
@testable import OutpostController
import OutpostProto
import OutpostTestSupport
import Testing

func text(_ path: String) throws -> String {
    guard let d = FileManager.default.contents(atPath: path) else { throw ControllerError.io(path: path, reason: "missing") }
    return String(decoding: d, as: UTF8.self)
}

/// A controller on 127.0.0.1 (ephemeral port) over a temporary data
/// directory, stopped by cancelling its task; restartable on the same data.
final class RunningController: @unchecked Sendable {
    let root: String
    let dir: DataDirectory
    private(set) var port = 0
    private var task: Task<Void, Error>?
    /// nil: the data directory's SQLite file, as `serve` without --database.
    let location: StoreLocation?
    /// The admin socket: the data directory's, or (a replica) one in `root`.
    let adminSocket: String
    /// How often the rollout advancer runs (`ControllerServer.Options.rolloutTick`).
    let rolloutTick: Duration
    /// Serve /metrics on an ephemeral port (`metricsPort` once up).
    let metrics: Bool
    private(set) var metricsPort = 0

    init(tag: String, trustKey: SigningKey? = nil, store location: StoreLocation? = nil, rolloutTick: Duration = .seconds(5),
         metrics: Bool = false) async throws {
        self.location = location
        self.metrics = metrics
        self.rolloutTick = rolloutTick
        root = try TemporaryDirectory.create("controller-\(tag)")
        dir = DataDirectory(path: root + "/data")
        adminSocket = dir.adminSocket
        var trustFrom: String?
        if let k = trustKey {
            let t = root + "/keys"
            try FileManager.default.createDirectory(atPath: t, withIntermediateDirectories: true)
            try Data(k.publicPEM.utf8).write(to: URL(fileURLWithPath: t + "/fleet.pub.pem"))
            try Data(k.privatePEM.utf8).write(to: URL(fileURLWithPath: t + "/fleet.key.pem"))
            trustFrom = t
        }
        try await ControllerInit.run(dir, .init(hosts: ["127.0.0.1", "localhost"], port: 8443, trustFrom: trustFrom))
        if case let .postgres(p) = location {
            // `init` allows the onboarding certificate in SQLite only; do it where serve will look.
            let store = try await PostgresFleetStore.open(p, logger: Logger(label: "test-store"), maximumConnections: 2)
            try await store.allowOnboarding(fingerprint: try PKI.fingerprint(pem: try text(dir.onboardCert), what: "onboarding certificate"),
                                            serial: "*", note: "test")
            await store.close()
        }
        try await start()
    }

    /// Another `serve` process on `primary`'s data directory and database, with its own
    /// listener and admin socket (as `serve --admin-socket PATH`).
    init(replicaOf primary: RunningController, tag: String) async throws {
        location = primary.location
        rolloutTick = primary.rolloutTick
        metrics = false
        root = try TemporaryDirectory.create("replica-\(tag)")
        dir = primary.dir
        adminSocket = root + "/admin.sock"
        try await start()
    }

    func start() async throws {
        let box = PortBox()
        let dir = self.dir
        let adminSocket = self.adminSocket
        let rolloutTick = self.rolloutTick
        let metricsBox = PortBox()
        var options = ControllerServer.Options(host: "127.0.0.1", port: 0, adminSocket: adminSocket, rolloutTick: rolloutTick)
        if metrics { options.metricsHost = "127.0.0.1" }
        let o = options
        let location = self.location
        var logger = Logger(label: "test-controller")
        logger.logLevel = .warning
        let l = logger
        task = Task {
            do { try await ControllerServer.run(dir, o, store: location, logger: l, signals: false,
                                               onMetricsRunning: { p in metricsBox.set(p) }) { p in box.set(p) } } catch {
                box.fail(error)
                throw error
            }
        }
        // Bounded: 30 s for the listener to come up.
        for _ in 0..<300 {
            if let p = box.get() { port = p; break }
            if let e = box.failure() { throw e }
            try await Task.sleep(for: .milliseconds(100))
        }
        guard port != 0 else { throw ControllerError.invalidInput("controller did not start in 30 s") }
        for _ in 0..<100 where metrics && metricsBox.get() == nil { try await Task.sleep(for: .milliseconds(50)) }
        metricsPort = metricsBox.get() ?? 0
        // The admin socket comes up beside the TLS listener.
        for _ in 0..<100 where !FileManager.default.fileExists(atPath: adminSocket) {
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    func stop() async {
        task?.cancel()
        _ = await task?.result
        task = nil
    }

    var url: String { "https://127.0.0.1:\(port)" }
    var admin: AdminClient { AdminClient(socketPath: adminSocket) }
    var store: SQLiteFleetStore { get throws { try SQLiteFleetStore(path: dir.database) } }

    func client(cert: String, key: String) throws -> DeviceClient {
        try DeviceClient(baseURL: url, rootCAPEM: try text(dir.caCert), certificatePEM: cert, keyPEM: key)
    }

    func onboardingClient() throws -> DeviceClient {
        try client(cert: try text(dir.onboardCert), key: try text(dir.configDir + "/onboard.key.pem"))
    }

    /// Registers a fresh device and returns its client and id.
    func newDevice(serial: String) async throws -> (DeviceClient, String) {
        let (c, id, _) = try await newDeviceWithIdentity(serial: serial)
        return (c, id)
    }

    func newDeviceWithIdentity(serial: String) async throws -> (DeviceClient, String, PKI.Issued) {
        let id = try PKI.makeSelfSigned(commonName: serial)
        let onboard = try onboardingClient()
        let (status, resp) = try await onboard.register(deviceCertificatePEM: id.certificatePEM, serial: serial)
        try await onboard.shutdown()
        guard status == 201, let resp else { throw ControllerError.invalidInput("register answered \(status)") }
        return (try client(cert: id.certificatePEM, key: id.keyPEM), resp.deviceID, id)
    }

    deinit { try? FileManager.default.removeItem(atPath: root) }
}

final class PortBox: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Int?
    private var error: Error?
    func set(_ v: Int) { lock.lock(); value = v; lock.unlock() }
    func fail(_ e: Error) { lock.lock(); error = e; lock.unlock() }
    func failure() -> Error? { lock.lock(); defer { lock.unlock() }; return error }
    func get() -> Int? { lock.lock(); defer { lock.unlock() }; return value }
}

func gzip(_ data: Data) throws -> Data {
    var b = ByteBuffer(bytes: data)
    let out = try b.compress(with: .gzip())
    return Data(out.readableBytesView)
}

func logEntry(_ seq: UInt64, _ message: String) -> LogEntry {
    var e = LogEntry()
    e.sequence = seq
    e.timeUnixMs = UInt64(nowMs())
    e.source = "test"
    e.severity = .info
    e.message = message
    return e
}

/// Posts a log batch, gzip-compressed as devices send it; returns (status, acked).
func sendLogs(_ c: DeviceClient, _ entries: [LogEntry], droppedBefore: UInt64 = 0) async throws -> (Int, UInt64) {
    var b = LogBatch()
    b.entries = entries
    b.droppedBefore = droppedBefore
    let r = try await c.post(DeviceAPI.logs, try gzip(try b.serializedBytes()), headers: [("Content-Encoding", "gzip")])
    return (r.status, r.status == 200 ? try LogsResponse(serializedBytes: r.body).ackedSequence : 0)
}

/// A signed bundle (random payload from `random`, whose seed the test prints) as
/// `outpost bundle create` would make it.
func makeBundle(key: SigningKey, version: String, size: Int, random: inout SplitMix64) throws -> [UInt8] {
    let payload = random.bytes(size)
    let m = BundleManifest(osVersion: version, securityVersion: 1, board: "generic-efi", arch: "x86_64",
                           payloadSize: UInt64(payload.count), payloadSHA256: hex(Array(SHA256.hash(data: payload))),
                           verity: .init(rootHash: String(repeating: "ab", count: 32), salt: "0011", rootOffset: 0,
                                         rootDataBlocks: 1, hashOffset: UInt64(payload.count)),
                           pcrs: ["IMGA": .init(pcr8: String(repeating: "1", count: 64), pcr9: String(repeating: "2", count: 64))])
    return try BundleWriter.prologue(manifest: m, keys: [key]) + payload
}

/// Admin calls from tests: the client blocks on its socket, so it runs on a
/// Dispatch thread, never on the (two-thread) cooperative pool that the
/// controller's own handlers need.
final class Box<T>: @unchecked Sendable {
    let value: T
    init(_ v: T) { value = v }
}

extension RunningController {
    func call(_ method: String, _ path: String, body: [String: Any]? = nil) async throws -> Any {
        let admin = self.admin
        let b = Box(body)
        let r: Box<Any> = try await withCheckedThrowingContinuation { cont in
            DispatchQueue.global().async {
                do { cont.resume(returning: Box(try admin.call(method, path, body: b.value))) } catch { cont.resume(throwing: error) }
            }
        }
        return r.value
    }
}
