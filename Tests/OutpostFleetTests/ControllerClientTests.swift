import Foundation
import OutpostTestSupport
import OutpostController
import OutpostHTTP
import OutpostPlatform
import OutpostProto
import Synchronization
import Testing
@testable import OutpostFleet

/// The reference controller as a child process (`outpost-controller`, built
/// beside this test bundle) on 127.0.0.1 over a temporary data directory made
/// by its own `init`; restartable on the same data and port, so a controller
/// restart and an outage can be staged. A child, not in-process: the test
/// bundle also links the system OpenSSL (OutpostHTTP), and NIOSSL then fails
/// to load the server certificate in the same process.
final class ChildController: @unchecked Sendable {
    let root: String
    let dir: DataDirectory
    let port: Int
    private var process: ChildProcess?

    static var executable: String {
        let beside = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path + "/outpost-controller"
        if FileManager.default.isExecutableFile(atPath: beside) { return beside }
        return FileManager.default.currentDirectoryPath + "/.build/debug/outpost-controller"
    }

    /// `database`: a `serve --database` URL (PostgreSQL); nil: the data directory's SQLite.
    let database: String?

    init(tag: String, database: String? = nil) async throws {
        root = try TemporaryDirectory.create("fleet-ctl-\(tag)")
        dir = DataDirectory(path: root + "/data")
        port = try freeLoopbackPort()
        self.database = database
        try sh(Self.executable, "init", dir.path, "--host", "127.0.0.1", "--port", "\(port)")
        try await start()
        if database != nil {
            // `init` allows the onboarding certificate in SQLite only: allow it where serve looks.
            try sh(Self.executable, "onboard", "allow", "--cert", dir.onboardCert, "--serial", "*", "--data", dir.path)
        }
    }

    /// On "sqlite" (the data directory's) or "postgres": a private PostgreSQL server with a
    /// database named `tag`, stopped with this controller.
    convenience init(tag: String, store: String) async throws {
        var server: PostgresServer?
        var database: String?
        if store == "postgres" {
            let started = try PostgresServer.start()
            server = started
            do { try started.createDatabase(tag) } catch { started.stop(); throw error }
            database = "postgres://\(started.user)@/\(tag)?host=\(started.root)"
        }
        do { try await self.init(tag: tag, database: database) } catch { server?.stop(); throw error }
        postgres = server
    }

    /// The private PostgreSQL of `init(tag:store:)` with "postgres" (nil on SQLite).
    private(set) var postgres: PostgresServer?

    deinit {
        process?.kill()
        postgres?.stop()
        try? FileManager.default.removeItem(atPath: root)
    }


    func start() async throws {
        try? FileManager.default.removeItem(atPath: dir.adminSocket)
        let serve = [Self.executable, "serve", "--data", dir.path, "--listen", "127.0.0.1:\(port)", "--log-level", "warning"]
            + (database.map { ["--database", $0] } ?? [])
        let p = try ChildProcess(serve)
        process = p
        // Bounded: 30 s for the admin socket and the TLS port.
        for _ in 0..<300 {
            if let status = p.wait(.zero) {
                throw TestSupportError.failed(command: serve.joined(separator: " "), status: status, output: "")
            }
            if FileManager.default.fileExists(atPath: dir.adminSocket) && Self.accepts(port) { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw TestSupportError.timedOut(what: "outpost-controller serve listening", after: .seconds(30))
    }

    static func accepts(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        return withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
    }

    func stop() async {
        guard let p = process else { return }
        // SIGTERM by PID, up to 10 s to exit (waiting off the thread), then SIGKILL; always reaped.
        _ = kill(p.pid, SIGTERM)
        for _ in 0..<100 where p.isRunning { try? await Task.sleep(for: .milliseconds(100)) }
        p.kill()
        process = nil
    }

    /// An admin call (blocking UNIX socket I/O) off the cooperative pool.
    func admin(_ method: String, _ path: String, _ body: [String: String]? = nil) async throws -> Any {
        let client = AdminClient(socketPath: dir.adminSocket)
        let data = try await offPool { try client.raw(method, path, body: body) }
        return try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed])
    }

    /// A device's CONFIG + PERSIST: the controller's own CONFIG directory.
    func deviceConfiguration(_ name: String) throws -> FleetConfiguration {
        let persist = root + "/devices/" + name
        try FileManager.default.createDirectory(atPath: persist, withIntermediateDirectories: true)
        var c = try #require(try FleetConfiguration.load(configDirectory: dir.configDir, persistDirectory: persist, osVersion: "1.0"),
                             "controller CONFIG has no controller-url")
        c.serial = "SN-\(name)"
        return c
    }
}

/// Runs blocking client work on its own thread so the controller's tasks
/// keep the cooperative pool.
func offPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { (k: CheckedContinuation<T, Error>) in
        do {
            try NamedThread.detach(name: "fleet-test") {
                do { k.resume(returning: try body()) } catch { k.resume(throwing: error) }
            }
        } catch { k.resume(throwing: error) }
    }
}

@Suite("Fleet: clients against the reference controller", .serialized)
struct ControllerClientTests {
    static func client(_ controller: ChildController, _ name: String, _ device: RecordingDevice) throws -> FleetClient {
        try FleetClient(configuration: try controller.deviceConfiguration(name),
                        dependencies: FleetDependencies(updater: device, network: device, power: device, state: device))
    }

    /// The controller's command line keeps the project's exit codes: help 0, a failure 1 with
    /// one `error:` line, a usage error 2 (not ArgumentParser's 64).
    @Test func theCommandLineExitsZeroOneOrTwoWithOneLine() throws {
        let help = try runCommand([ChildController.executable, "--help"])
        #expect(help.status == 0 && help.stdout.contains("USAGE: outpost-controller"), "\(help.output)")
        let usage = try runCommand([ChildController.executable, "device", "frobnicate"])
        #expect(usage.status == 2, "\(usage.status): \(usage.output)")
        #expect(usage.stderr.hasPrefix("outpost-controller: ") && usage.stderr.contains("frobnicate"), "\(usage.stderr)")
        let missing = try runCommand([ChildController.executable, "init"])
        #expect(missing.status == 2, "\(missing.status): \(missing.output)")
        let tmp = try TemporaryDirectory("ctl-cli")
        let failure = try runCommand([ChildController.executable, "device", "list", "--data", tmp.path])
        #expect(failure.status == 1, "\(failure.status): \(failure.output)")
        let lines = failure.stderr.split(separator: "\n")
        #expect(lines.count == 1 && lines[0].hasPrefix("outpost-controller: error: ") && lines[0].contains("admin.sock"), "\(failure.stderr)")
    }

    @Test func manyClientsRegisterIdempotentlyAndAnUnchangedConfigCostsA304() async throws {
        let controller = try await ChildController(tag: "register")
        let devices = (0..<8).map { _ in RecordingDevice() }
        let clients = try (0..<8).map { try Self.client(controller, "d\($0)", devices[$0]) }
        let statuses = try await offPool { () throws -> [[Int]] in
            try clients.map { client in
                try client.register()
                try client.register()  // idempotent: a second registration is fine
                return [try client.pollConfig(), try client.pollConfig()]
            }
        }
        #expect(statuses.allSatisfy { $0 == [200, 304] }, "\(statuses)")
        let list = try await controller.admin("GET", "/devices") as? [[String: Any]] ?? []
        #expect(list.count == 8, "\(list)")
        #expect(Set(clients.compactMap { $0.status.deviceID }).count == 8)
        await controller.stop()
    }

    @Test func eachCounterCommandActsExactlyOnceAlsoAcrossAClientRestart() async throws {
        let controller = try await ChildController(tag: "counters")
        let device = RecordingDevice()
        var client = try Self.client(controller, "c", device)
        let c1 = client
        try await offPool { try c1.register(); try c1.pollConfig() }
        let id = try #require(client.status.deviceID)
        for action in ["reboot", "shutdown", "retry-update"] {
            _ = try await controller.admin("POST", "/devices/\(id)/\(action)")
        }
        let c2 = client
        try await offPool { try c2.pollConfig(); try c2.pollConfig() }
        // All three bumped in one config: the retry is handed on, and shutdown
        // wins over reboot (both recorded as handled).
        #expect(device.commands() == ["retry 1", "shutdown controller"], "\(device.commands())")
        let before = device.commands()
        // Restart the client: the same counters act no more.
        client = try Self.client(controller, "c", device)
        let c3 = client
        try c3.start()
        c3.stop()
        _ = try await offPool { try c3.pollConfig() }
        #expect(device.commands() == before)
        _ = try await controller.admin("POST", "/devices/\(id)/reboot")
        try await offPool { try c3.pollConfig(); try c3.pollConfig() }
        #expect(device.commands() == before + ["reboot controller"], "\(device.commands())")
        await controller.stop()
    }

    /// A pushed network config is kept only if the device still reaches its controller: the
    /// check the client hands the network manager pings with the device certificate.
    @Test func aPushedNetworkConfigIsAcceptedOnlyWhileTheControllerAnswersTheDevice() async throws {
        let controller = try await ChildController(tag: "netpush")
        let device = RecordingDevice()
        let client = try Self.client(controller, "n", device)
        try await offPool { try client.register(); try client.pollConfig() }
        let id = try #require(client.status.deviceID)
        let network = #"{"ports": {"eth0": {"mode": "dhcp", "cost": 10}}}"#
        _ = try await controller.admin("POST", "/devices/\(id)/set-network", ["networkJSON": network])
        #expect(try await offPool { try client.pollConfig() } == 200)
        #expect(device.recorded.contains("network \(network.utf8.count)"), "\(device.recorded)")
        let acceptance = try #require(device.acceptance.withLock { $0 })
        #expect(try await offPool { acceptance("eth0") } == nil)
        await controller.stop()
        let refusal = try #require(try await offPool { acceptance("eth0") })
        #expect(!refusal.contains("\n") && refusal.contains("ping"), "\(refusal)")
    }

    /// The ports' proxies: a route whose proxy refuses moves on to the next, and the route that
    /// worked is tried first from then on (the refusing proxy sees one request, not one per call).
    @Test func callsGoThroughEachRoutesProxyAndMoveOnWhenOneRefuses() async throws {
        let controller = try await ChildController(tag: "proxy")
        let tmp = try TemporaryDirectory("proxies")
        let refusing = try ConnectProxy.onLoopback(log: tmp.path + "/deny.log", deny: true, in: tmp.path)
        let working = try ConnectProxy.onLoopback(log: tmp.path + "/pass.log", deny: false, in: tmp.path)
        let routes = [ControllerRoute(device: nil, proxy: try HTTPURL("http://127.0.0.1:\(refusing.port)")),
                      ControllerRoute(device: nil, proxy: try HTTPURL("http://127.0.0.1:\(working.port)"))]
        let device = RecordingDevice()
        let client = try FleetClient(configuration: try controller.deviceConfiguration("p"),
                                     dependencies: FleetDependencies(updater: device, network: device, power: device, state: device,
                                                                     routes: { routes }))
        let polls = try await offPool { () throws -> [Int] in
            try client.register()
            return [try client.pollConfig(), try client.pollConfig()]
        }
        #expect(polls == [200, 304])
        #expect(client.status.registered)
        let target = "CONNECT 127.0.0.1:\(controller.port) HTTP/1.1"
        // Each log starts with the proxy's own "listening" line; the rest are the requests it saw.
        let denied = try String(contentsOfFile: tmp.path + "/deny.log", encoding: .utf8).split(separator: "\n").dropFirst()
        let passed = try String(contentsOfFile: tmp.path + "/pass.log", encoding: .utf8).split(separator: "\n").dropFirst()
        #expect(Array(denied) == [Substring(target)], "\(denied)")
        #expect(Array(passed) == Array(repeating: Substring(target), count: 3), "\(passed)")
        await controller.stop()
    }

    @Test func infoPendingWhileTheControllerIsDownArrivesAfterAClientRestart() async throws {
        let controller = try await ChildController(tag: "outbox")
        let device = RecordingDevice()
        let first = try Self.client(controller, "o", device)
        try await offPool { try first.register() }
        let id = try #require(first.status.deviceID)
        await controller.stop()
        let sendFailed = try await offPool { () throws -> Bool in
            try first.composeInfo()
            do { try first.sendInfo(); return false } catch { return true }
        }
        #expect(sendFailed)
        #expect(first.outbox.pendingCount == 1)
        try await controller.start()
        let second = try Self.client(controller, "o", device)
        #expect(second.outbox.pendingCount == 1)
        try await offPool { try second.sendInfo() }
        #expect(second.outbox.pendingCount == 0)
        let shown = try await controller.admin("GET", "/devices/\(id)") as? [String: Any]
        #expect(shown?["info"] != nil, "\(String(describing: shown))")
        await controller.stop()
    }

    @Test func logSequenceHasNoGapAcrossAControllerRestartAndAnOutage() async throws {
        let controller = try await ChildController(tag: "logs")
        let device = RecordingDevice()
        let client = try Self.client(controller, "l", device)
        for i in 1...50 { client.log(source: "test", "before \(i)") }
        try await offPool { try client.register(); try client.sendLogs() }
        let id = try #require(client.status.deviceID)
        await controller.stop()
        for i in 1...50 { client.log(source: "test", "outage \(i)") }
        let uploadFailed = try await offPool { () -> Bool in
            do { try client.sendLogs(); return false } catch { return true }
        }
        #expect(uploadFailed)
        try await controller.start()
        let restarted = try Self.client(controller, "l", device)
        for i in 1...50 { restarted.log(source: "test", "after \(i)") }
        try await offPool { try restarted.sendLogs() }
        let logs = try await controller.admin("GET", "/devices/\(id)/logs?limit=10000") as? [String: Any]
        let sequences = ((logs?["entries"] as? [[String: Any]]) ?? []).compactMap { ($0["sequence"] as? NSNumber)?.uint64Value }
        #expect(!sequences.isEmpty)
        #expect(sequences == Array(1...UInt64(sequences.count)), "\(sequences)")
        #expect(sequences.count >= 150)
        await controller.stop()
    }
}
