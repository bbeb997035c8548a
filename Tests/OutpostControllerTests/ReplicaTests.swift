import Foundation
import Logging
@testable import OutpostController
import OutpostProto
import OutpostTestSupport
import Synchronization
import Testing

/// Calls made, across every device of a test.
final class CallCount: Sendable {
    private let n = Mutex(0)
    func add() { n.withLock { $0 += 1 } }
    var value: Int { n.withLock { $0 } }
}

/// A device behind a load balancer: one identity, one client per replica, and every call goes
/// to a replica picked at random. A call that fails to connect (a stopped replica) goes to
/// another pick, as a device's retry would. Used from one task at a time.
final class SpreadDevice: @unchecked Sendable {
    let id: String
    let serial: String
    let clients: [DeviceClient]
    private var random: SplitMix64
    /// Calls made, across every device of a test (the stopper waits for a number of them).
    let calls: CallCount

    var hash = ""
    /// Every reboot counter value this device was served, in order.
    var rebootsSeen: [UInt32] = []
    var rebootActed: UInt32 = 0
    var rebootActions = 0
    var nextLog: UInt64 = 1

    init(id: String, serial: String, clients: [DeviceClient], seed: UInt64, calls: CallCount) {
        self.id = id
        self.serial = serial
        self.clients = clients
        random = SplitMix64(seed: seed)
        self.calls = calls
    }

    /// Replicas a call failed to reach; not picked again, as a load balancer's health check would.
    private var down: Set<Int> = []

    /// `body` on a random replica; up to 12 picks while calls fail to go through.
    func call<T>(_ body: (DeviceClient) async throws -> T) async throws -> T {
        var last: (any Error)?
        for _ in 0..<12 {
            let up = clients.indices.filter { !down.contains($0) }
            let i = up[Int(random.next() % UInt64(up.count))]
            do {
                let r = try await body(clients[i])
                calls.add()
                return r
            } catch {
                last = error
                if up.count > 1 { down.insert(i) }
            }
        }
        throw last ?? ControllerError.invalidInput("no replica answered")
    }

    /// One config poll, acting on a reboot counter the way the agent does: once per new value.
    /// Returns the status.
    @discardableResult
    func poll() async throws -> Int {
        let h = hash
        let (status, resp) = try await call { try await $0.config(hash: h) }
        if status == 200, let resp {
            hash = resp.configHash
            let r = resp.config.commands.reboot
            rebootsSeen.append(r)
            if r > rebootActed {
                rebootActed = r
                rebootActions += 1
            }
        }
        return status
    }

    /// Sends the next `count` log entries; returns the acknowledged sequence.
    func sendNextLogs(_ count: Int) async throws -> (status: Int, acked: UInt64, last: UInt64) {
        let entries = (0..<UInt64(count)).map { logEntry(nextLog + $0, "\(serial) line \(nextLog + $0)") }
        let (status, acked) = try await call { try await sendLogs($0, entries) }
        if status == 200 { nextLog += UInt64(count) }
        return (status, acked, nextLog - 1)
    }

    func shutdown() async { for c in clients { try? await c.shutdown() } }
}

/// Several `serve` processes on one PostgreSQL behave as one controller: registrations, config,
/// command counters, update steps and log acknowledgements are decided by the database, and a
/// replica stopping mid-run loses nothing.
@Suite("Controller replicas on one PostgreSQL", .postgresServer)
struct ReplicaTests {
    @Test func threeReplicasActAsOneControllerAndLoseNothingWhenOneStops() async throws {
        var random = SplitMix64.forTest()
        let fixture = try StoreFixture(.postgres, tag: "replicas")
        let a = try await RunningController(tag: "rep-a", store: fixture.location)
        let b = try await RunningController(replicaOf: a, tag: "rep-b")
        let c = try await RunningController(replicaOf: a, tag: "rep-c")
        let replicas = [a, b, c]
        let ca = try text(a.dir.caCert)
        let onboardPEM = try text(a.dir.onboardCert), onboardKey = try text(a.dir.configDir + "/onboard.key.pem")
        let onboard = try replicas.map { try DeviceClient(baseURL: $0.url, rootCAPEM: ca, certificatePEM: onboardPEM, keyPEM: onboardKey) }
        let calls = CallCount()

        // Registration: each device registers twice at once, through two different replicas.
        // One device comes of it; one answer is 201, the other 200 with the same id.
        let deviceCount = 8
        var devices: [SpreadDevice] = []
        for n in 0..<deviceCount {
            let serial = "SN-R\(n)"
            let identity = try PKI.makeSelfSigned(commonName: serial)
            let i = Int(random.next() % 3), j = (i + 1 + Int(random.next() % 2)) % 3
            async let first = onboard[i].register(deviceCertificatePEM: identity.certificatePEM, serial: serial)
            async let second = onboard[j].register(deviceCertificatePEM: identity.certificatePEM, serial: serial)
            let (x, y) = try await (first, second)
            #expect([x.0, y.0].sorted() == [200, 201], "\(serial) through replicas \(i) and \(j)")
            let id = try #require(x.1?.deviceID)
            #expect(y.1?.deviceID == id)
            let clients = try replicas.map {
                // A short deadline: a call to the replica that stops fails in seconds, then goes elsewhere.
                try DeviceClient(baseURL: $0.url, rootCAPEM: ca, certificatePEM: identity.certificatePEM, keyPEM: identity.keyPEM,
                                 timeout: .seconds(3))
            }
            devices.append(SpreadDevice(id: id, serial: serial, clients: clients, seed: random.next(), calls: calls))
        }
        // Every replica lists every device (each follows the others' registrations).
        for r in replicas {
            var listed: Set<String> = []
            for _ in 0..<100 {
                listed = Set((try await r.call("GET", "/devices") as? [[String: Any]] ?? []).compactMap { $0["id"] as? String })
                if listed.count >= deviceCount { break }
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(listed == Set(devices.map(\.id)))
        }

        // Config: the first poll gets it (from any replica), every later one is 304 on every replica.
        for d in devices {
            #expect(try await d.poll() == 200)
            for _ in 0..<6 { #expect(try await d.poll() == 304) }
        }

        // Commands: a reboot bumped once through one replica is acted on once, whichever replicas
        // serve the polls; the counter a device is served never goes back.
        for d in devices { _ = try await replicas[Int(random.next() % 3)].call("POST", "/devices/\(d.id)/reboot") }
        // Two administrators bumping one counter through two replicas at once: both bumps count.
        let target = devices[0]
        try await withThrowingTaskGroup(of: Void.self) { group in
            for r in [b, c, b, c] { group.addTask { _ = try await r.call("POST", "/devices/\(target.id)/shutdown") } }
            try await group.waitForAll()
        }
        for d in devices {
            for _ in 0..<200 where d.rebootActions == 0 {
                try await d.poll()
                try await Task.sleep(for: .milliseconds(25))
            }
            for _ in 0..<6 { try await d.poll() }
            #expect(d.rebootActions == 1, "\(d.serial) rebooted \(d.rebootActions) times; served \(d.rebootsSeen)")
            #expect(d.rebootsSeen == d.rebootsSeen.sorted(), "\(d.serial) was served an older counter: \(d.rebootsSeen)")
        }

        // Update steps: one report through two replicas at once is one step in the history.
        for d in devices {
            for step in [UpdateStatus.Step.downloading, .installing] {
                let body: Data = try InfoMetricsTests.info(step: step, version: "2.0.0").serializedBytes()
                let other = d.clients[1 + Int(random.next() % 2)]
                async let x = d.clients[0].post(DeviceAPI.info, body)
                async let y = other.post(DeviceAPI.info, body)
                let (rx, ry) = try await (x, y)
                #expect(rx.status == 200 && ry.status == 200)
            }
        }

        // Logs, with replica C stopped mid-run: every device sends 12 batches of 4 through random
        // replicas, concurrently; C stops once a third of them went through.
        let batches = 12, perBatch = 4
        let start = calls.value
        let stopper = Task {
            for _ in 0..<600 where calls.value - start < deviceCount * batches / 3 {
                try await Task.sleep(for: .milliseconds(10))
            }
            await c.stop()
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for d in devices {
                group.addTask {
                    for _ in 0..<batches {
                        let r = try await d.sendNextLogs(perBatch)
                        #expect(r.status == 200 && r.acked == r.last, "\(d.serial): \(r)")
                    }
                }
            }
            try await group.waitForAll()
        }
        try await stopper.value

        // After the stop: a device registered through A is known to B at once, and a reboot set
        // through B reaches it through A.
        let (late, lateID) = try await a.newDevice(serial: "SN-LATE")
        let shown = try await b.call("GET", "/devices/\(lateID)") as? [String: Any]
        #expect(shown?["id"] as? String == lateID)
        _ = try await b.call("POST", "/devices/SN-LATE/reboot")
        var lateReboot: UInt32 = 0
        var lateHash = ""
        for _ in 0..<200 where lateReboot == 0 {
            let (status, resp) = try await late.config(hash: lateHash)
            if status == 200, let resp {
                lateHash = resp.configHash
                lateReboot = resp.config.commands.reboot
            }
            if lateReboot == 0 { try await Task.sleep(for: .milliseconds(25)) }
        }
        #expect(lateReboot == 1)
        try await late.shutdown()

        // Nothing lost, in the database itself.
        let store = try await fixture.open()
        #expect(Set(try await store.allDevices().map(\.id)) == Set(devices.map(\.id) + [lateID]))
        let total = UInt64(batches * perBatch)
        for d in devices {
            #expect(try await store.logAck(deviceID: d.id) == total)
            #expect(try await store.logs(deviceID: d.id, after: 0, limit: 1000).map(\.sequence) == Array(1...total), "\(d.serial)")
            #expect(try await store.updateHistory(deviceID: d.id).map(\.step) == ["downloading", "installing"], "\(d.serial)")
            let config = try DeviceConfig(serializedBytes: try #require(try await store.device(id: d.id)).record.config)
            #expect(config.commands.reboot == 1)
            #expect(config.commands.shutdown == (d.id == target.id ? 4 : 0))
        }
        await fixture.close(store)

        for d in devices { await d.shutdown() }
        for o in onboard { try? await o.shutdown() }
        await b.stop()
        await a.stop()
        withExtendedLifetime(replicas) {}
    }

    /// Two `serve` processes on one data directory and one PostgreSQL, each with its own admin
    /// socket: the command line talks to either, and a change made through one reaches a device
    /// that polls the other.
    @Test func twoServeProcessesShareADataDirectoryWithTheirOwnAdminSockets() async throws {
        let fixture = try StoreFixture(.postgres, tag: "serve2")
        let server = try #require(fixture.server)
        let t = try TemporaryDirectory("serve2")
        let dir = DataDirectory(path: t.path + "/data")
        let exe = PostgresControllerTests.executable
        let (portA, portB) = (try freeLoopbackPort(), try freeLoopbackPort())
        try sh(exe, "init", dir.path, "--host", "127.0.0.1", "--port", "\(portA)")
        let store = try await fixture.open()
        try await store.allowOnboarding(fingerprint: try PKI.fingerprint(pem: try text(dir.onboardCert), what: "onboarding certificate"),
                                        serial: "*", note: "test")
        await fixture.close(store)
        let url = "postgres://\(server.user)@/\(fixture.name)?host=\(server.root)"
        let socketB = t.path + "/b.sock"
        var processes: [ChildProcess] = []
        defer { for p in processes { p.terminate() } }
        for (port, extra) in [(portA, [String]()), (portB, ["--admin-socket", socketB])] {
            processes.append(try ChildProcess([exe, "serve", "--data", dir.path, "--listen", "127.0.0.1:\(port)", "--database", url,
                                               "--log-level", "warning"] + extra))
        }
        for socket in [dir.adminSocket, socketB] {
            for _ in 0..<300 where !FileManager.default.fileExists(atPath: socket) { try await Task.sleep(for: .milliseconds(100)) }
            #expect(FileManager.default.fileExists(atPath: socket), "\(socket)")
        }
        let identity = try PKI.makeSelfSigned(commonName: "SN-TWO")
        let ca = try text(dir.caCert)
        let onboard = try DeviceClient(baseURL: "https://127.0.0.1:\(portA)", rootCAPEM: ca, certificatePEM: try text(dir.onboardCert),
                                       keyPEM: try text(dir.configDir + "/onboard.key.pem"))
        let (status, registered) = try await onboard.register(deviceCertificatePEM: identity.certificatePEM, serial: "SN-TWO")
        try await onboard.shutdown()
        #expect(status == 201)
        let id = try #require(registered?.deviceID)

        func cli(_ args: [String]) throws -> CommandResult {
            try runCommand([exe] + args + ["--data", dir.path], timeout: .seconds(60))
        }
        // Labelled through B, listed through B, rebooted by selector through A.
        let labelled = try cli(["device", "label", "SN-TWO", "env=prod", "--admin-socket", socketB])
        #expect(labelled.status == 0 && labelled.stdout.contains("env=prod"), "\(labelled.output)")
        let listed = try cli(["device", "list", "--select", "env=prod", "--json", "--admin-socket", socketB])
        let rows = try JSONSerialization.jsonObject(with: Data(listed.stdout.utf8)) as? [[String: Any]]
        #expect(rows?.compactMap { $0["id"] as? String } == [id])
        let rebooted = try cli(["device", "reboot", "--select", "env=prod"])
        #expect(rebooted.status == 0 && rebooted.stdout.contains("1 devices selected"), "\(rebooted.output)")

        // The device polls B, which learns of A's change from the database.
        let device = try DeviceClient(baseURL: "https://127.0.0.1:\(portB)", rootCAPEM: ca, certificatePEM: identity.certificatePEM,
                                      keyPEM: identity.keyPEM)
        var reboot: UInt32 = 0
        var hash = ""
        for _ in 0..<200 where reboot == 0 {
            let (s, resp) = try await device.config(hash: hash)
            if s == 200, let resp {
                hash = resp.configHash
                reboot = resp.config.commands.reboot
            }
            if reboot == 0 { try await Task.sleep(for: .milliseconds(25)) }
        }
        #expect(reboot == 1)
        try await device.shutdown()
    }
}
