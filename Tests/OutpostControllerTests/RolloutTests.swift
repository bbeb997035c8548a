import Foundation
import Logging
import OutpostBundle
@testable import OutpostController
import OutpostProto
import OutpostTestSupport
import Testing

/// A simulated device for rollouts: registered through the device API with its own certificate,
/// it polls its config there and, once told to run the target version, reports the outcome
/// through the API's info endpoint as the agent does (or, silent, never reports).
final class RolloutDeviceFake: @unchecked Sendable {
    enum Behaviour { case commit, fail, silent }
    let id: String
    let client: DeviceClient
    var behaviour = Behaviour.commit
    var hash = ""
    /// The base-OS version this device was told to run.
    var target = ""
    var reported = false

    init(id: String, client: DeviceClient) {
        self.id = id
        self.client = client
    }

    /// One poll, and the report the version calls for.
    func step() async throws {
        let (status, resp) = try await client.config(hash: hash)
        if status == 200, let resp {
            hash = resp.configHash
            if resp.config.hasBaseOs { target = resp.config.baseOs.version }
        }
        guard !target.isEmpty, !reported, behaviour != .silent else { return }
        let info = behaviour == .commit ? InfoMetricsTests.info(step: .committed, version: target)
                                        : InfoMetricsTests.info(step: .failed, version: target, reason: "health check failed")
        let r = try await client.post(DeviceAPI.info, try info.serializedBytes())
        if r.status == 200 { reported = true }
    }
}

@Suite("Staged rollouts", .postgresServer)
struct RolloutTests {
    /// A controller with a fast rollout advancer, `count` devices registered through the API, and a bundle.
    static func fleet(_ tag: String, count: Int) async throws -> (RunningController, [RolloutDeviceFake], String) {
        let key = SigningKey.generate()
        let c = try await RunningController(tag: tag, trustKey: key, rolloutTick: .milliseconds(100))
        var devices: [RolloutDeviceFake] = []
        for n in 0..<count {
            let (client, id) = try await c.newDevice(serial: "SN-\(tag)-\(n)")
            devices.append(RolloutDeviceFake(id: id, client: client))
        }
        var random = SplitMix64(seed: 14)
        let bundle = c.root + "/v2.bundle"
        try Data(try makeBundle(key: key, version: "2.0.0", size: 4096, random: &random)).write(to: URL(fileURLWithPath: bundle))
        return (c, devices, bundle)
    }

    /// Polls every device (eight at a time) until the rollout's state is one of `until`, at most
    /// `rounds` rounds. At every round, no device has been told the target version before its
    /// wave started. Returns the final status.
    static func drive(_ c: RunningController, _ devices: [RolloutDeviceFake], id: String, until: Set<String>,
                      rounds: Int = 400) async throws -> [String: Any] {
        var status: [String: Any] = [:]
        for _ in 0..<rounds {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for lane in 0..<8 {
                    group.addTask { for d in stride(from: lane, to: devices.count, by: 8) { try await devices[d].step() } }
                }
                try await group.waitForAll()
            }
            status = try await c.call("GET", "/rollouts/\(id)") as? [String: Any] ?? [:]
            let waves = status["waves"] as? [[String: Any]] ?? []
            let wave = status["wave"] as? Int ?? 0
            let startedDevices = waves.prefix(wave).map { $0["devices"] as? Int ?? 0 }.reduce(0, +)
            let told = devices.filter { !$0.target.isEmpty }.count
            #expect(told <= startedDevices, "\(told) devices were told the version, but waves 1–\(wave) hold \(startedDevices)")
            if until.contains(status["state"] as? String ?? "") { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        return status
    }

    static func create(_ c: RunningController, bundle: String, select: String = "", waves: String, soakMs: Int,
                       deadlineMs: Int, maxFailures: Double) async throws -> [String: Any] {
        try await c.call("POST", "/rollouts", body: ["bundle": bundle, "select": select, "waves": waves, "soakMs": soakMs,
                                                     "deadlineMs": deadlineMs, "maxFailuresPercent": maxFailures]) as? [String: Any] ?? [:]
    }

    static func waveStarts(_ status: [String: Any]) -> [Int] {
        (status["events"] as? [[String: Any]] ?? []).filter { $0["kind"] as? String == "wave-started" }.compactMap { $0["wave"] as? Int }
    }

    @Test func aRolloutOver200DevicesInFourWavesCompletes() async throws {
        let (c, devices, bundle) = try await Self.fleet("roll", count: 200)
        defer { Task { await c.stop() } }
        let created = try await Self.create(c, bundle: bundle, waves: "1%,10%,50%,100%", soakMs: 200, deadlineMs: 600_000, maxFailures: 5)
        let id = try #require(created["id"] as? String)
        #expect((created["waves"] as? [[String: Any]])?.map { $0["devices"] as? Int ?? 0 } == [2, 18, 80, 100])
        let status = try await Self.drive(c, devices, id: id, until: ["completed", "halted"])
        #expect(status["state"] as? String == "completed", "\(status["reason"] ?? "")")
        #expect(status["committed"] as? Int == 200)
        #expect((status["failed"] as? [Any])?.isEmpty == true)
        // Each wave started once, in order, each after the one before was done.
        #expect(Self.waveStarts(status) == [1, 2, 3, 4])
        let kinds = (status["events"] as? [[String: Any]] ?? []).map { "\($0["kind"] ?? "")\($0["wave"] ?? "")" }
        #expect(kinds == ["created0", "wave-started1", "wave-done1", "wave-started2", "wave-done2", "wave-started3", "wave-done3",
                          "wave-started4", "wave-done4", "completed4"])
        #expect(devices.allSatisfy { $0.target == "2.0.0" })
        for d in devices { try await d.client.shutdown() }
    }

    @Test func tenPercentOfWaveTwoFailingHaltsBeforeWaveThreeAndNamesThem() async throws {
        let (c, devices, bundle) = try await Self.fleet("halt", count: 200)
        defer { Task { await c.stop() } }
        // Wave one may start at once, but wave two only once wave one's devices report, and
        // they report only when driven below: the failing devices are chosen before that.
        let created = try await Self.create(c, bundle: bundle, waves: "1%,10%,50%,100%", soakMs: 200, deadlineMs: 600_000, maxFailures: 5)
        let id = try #require(created["id"] as? String)
        // Two of wave two's 18 devices (11 %) will report failed.
        let waveOf = Dictionary(uniqueKeysWithValues: try await c.store.rolloutDevices(rolloutID: id).map { ($0.deviceID, $0.wave) })
        let failing = Set(devices.filter { waveOf[$0.id] == 1 }.map(\.id).sorted().prefix(2))
        #expect(failing.count == 2)
        for d in devices where failing.contains(d.id) { d.behaviour = .fail }

        let status = try await Self.drive(c, devices, id: id, until: ["completed", "halted"])
        #expect(status["state"] as? String == "halted")
        #expect(status["wave"] as? Int == 2)
        #expect(Self.waveStarts(status) == [1, 2])
        #expect((status["reason"] as? String)?.contains("2 of 20 devices failed") == true, "\(status["reason"] ?? "")")
        let failed = status["failed"] as? [[String: Any]] ?? []
        #expect(Set(failed.compactMap { $0["device"] as? String }) == failing)
        #expect(failed.allSatisfy { $0["reason"] as? String == "reported failed: health check failed" && $0["wave"] as? Int == 2 })
        // No device of waves three and four was told the version.
        #expect(devices.filter { (waveOf[$0.id] ?? 0) >= 2 }.allSatisfy { $0.target.isEmpty })
        // A halted rollout stays halted; abort makes it final.
        let aborted = try await c.call("POST", "/rollouts/\(id)/abort") as? [String: Any]
        #expect(aborted?["state"] as? String == "aborted")
        await #expect(throws: ControllerError.self) { try await c.call("POST", "/rollouts/\(id)/resume") }
        for d in devices { try await d.client.shutdown() }
    }

    @Test func aSilentDeviceCountsAsFailedAtItsDeadlineAndCannotHoldTheRolloutOpen() async throws {
        let (c, devices, bundle) = try await Self.fleet("silent", count: 10)
        defer { Task { await c.stop() } }
        let created = try await Self.create(c, bundle: bundle, waves: "50%,100%", soakMs: 100, deadlineMs: 1500, maxFailures: 50)
        let id = try #require(created["id"] as? String)
        let waveOf = Dictionary(uniqueKeysWithValues: try await c.store.rolloutDevices(rolloutID: id).map { ($0.deviceID, $0.wave) })
        let silent = try #require(devices.filter { waveOf[$0.id] == 0 }.map(\.id).sorted().first)
        for d in devices where d.id == silent { d.behaviour = .silent }

        let status = try await Self.drive(c, devices, id: id, until: ["completed", "halted"])
        #expect(status["state"] as? String == "completed", "\(status["reason"] ?? "")")
        #expect(status["committed"] as? Int == 9)
        let failed = status["failed"] as? [[String: Any]] ?? []
        #expect(failed.compactMap { $0["device"] as? String } == [silent])
        #expect((failed.first?["reason"] as? String)?.hasPrefix("no committed report within 1.5s of its wave's start") == true,
                "\(failed)")
        for d in devices { try await d.client.shutdown() }
    }

    @Test func pauseStopsNewWavesAndResumeContinues() async throws {
        let (c, devices, bundle) = try await Self.fleet("pause", count: 4)
        defer { Task { await c.stop() } }
        let created = try await Self.create(c, bundle: bundle, waves: "50%,100%", soakMs: 0, deadlineMs: 600_000, maxFailures: 0)
        let id = try #require(created["id"] as? String)
        let paused = try await c.call("POST", "/rollouts/latest/pause") as? [String: Any]
        #expect(paused?["state"] as? String == "paused")
        await #expect(throws: ControllerError.self) { try await c.call("POST", "/rollouts/\(id)/pause") }
        // Another rollout while one is open is refused.
        await #expect(throws: ControllerError.self) {
            try await Self.create(c, bundle: bundle, waves: "100%", soakMs: 0, deadlineMs: 1000, maxFailures: 0)
        }
        let status = try await Self.drive(c, devices, id: id, until: [], rounds: 10)
        #expect(status["state"] as? String == "paused")
        #expect((status["wave"] as? Int ?? 0) <= 1)
        _ = try await c.call("POST", "/rollouts/\(id)/resume")
        let done = try await Self.drive(c, devices, id: id, until: ["completed", "halted"])
        #expect(done["state"] as? String == "completed")
        for d in devices { try await d.client.shutdown() }
    }

    @Test func theCommandLineCreatesShowsAndPausesARolloutAndRefusesBadPlansInOneLine() async throws {
        let (c, devices, bundle) = try await Self.fleet("cli", count: 3)
        defer { Task { await c.stop() } }
        let exe = PostgresControllerTests.executable
        for (argv, says) in [(["--waves", "10%,5%,100%"], "'5%' is not larger than the wave before"),
                             (["--waves", "10%,50%"], "the last wave must be 100%"),
                             (["--soak", "10"], "--soak '10' is not a duration"),
                             (["--max-failures", "150%"], "--max-failures '150%' is not a percentage"),
                             (["--select", "a=,b"], "at position 3: a value is missing")] {
            var full = ["rollout", "create", "--data", c.dir.path, "--bundle", bundle, "--select", ""]
            full += argv
            let r = try runCommand([exe] + full, timeout: .seconds(60))
            #expect(r.status == 1, "\(argv): \(r.output)")
            #expect(r.stderr.split(separator: "\n").count == 1 && r.stderr.contains(says), "\(argv): \(r.stderr)")
        }
        let created = try runCommand([exe, "rollout", "create", "--data", c.dir.path, "--bundle", bundle, "--select", "",
                                      "--waves", "50%,100%", "--soak", "1h", "--deadline", "30m", "--max-failures", "5%"], timeout: .seconds(60))
        #expect(created.status == 0, "\(created.output)")
        #expect(created.stdout.contains("version 2.0.0") && created.stdout.contains("0/3 committed"), "\(created.stdout)")
        let paused = try runCommand([exe, "rollout", "pause", "--data", c.dir.path, "--json"], timeout: .seconds(60))
        let o = try JSONSerialization.jsonObject(with: Data(paused.stdout.utf8)) as? [String: Any]
        #expect(o?["state"] as? String == "paused")
        #expect(o?["soakMs"] as? Int == 3_600_000 && o?["deadlineMs"] as? Int == 1_800_000)
        let status = try runCommand([exe, "rollout", "status", "--all", "--data", c.dir.path], timeout: .seconds(60))
        #expect(status.status == 0 && status.stdout.contains("paused"), "\(status.output)")
        for d in devices { try await d.client.shutdown() }
    }

    /// Two controller processes' advancers on one PostgreSQL: one holds the lease and acts; when
    /// it stops, the other takes over; every wave starts exactly once. Devices are store-level
    /// fakes here (they write the update step as the info endpoint does).
    @Test func twoAdvancersOnOnePostgreSQLNeverStartAWaveTwice() async throws {
        let fixture = try StoreFixture(.postgres, tag: "advancers")
        let storeA = try await fixture.open(), storeB = try await fixture.open()
        try await Fleet.seed(store: storeA, count: 40, onboardFingerprint: "onboard")
        let fleetA = try await Fleet(store: storeA, url: "https://controller"), fleetB = try await Fleet(store: storeB, url: "https://controller")
        let a = RolloutAdvancer(fleet: fleetA, holder: "A", leaseTTLMs: 5000)
        let b = RolloutAdvancer(fleet: fleetB, holder: "B", leaseTTLMs: 5000)
        let bundles = try TemporaryDirectory("advancers")
        let admin = AdminRoutes(fleet: fleetA, bundles: BundleStore(directory: bundles.path, trustDirectory: bundles.path))
        let created = try await admin.rolloutCreate(["url": "https://cdn.example/v3.bundle", "version": "3.0.0", "select": "",
                                                     "waves": "10%,25%,50%,100%", "soakMs": 0, "deadlineMs": 600_000, "maxFailuresPercent": 5]) as? [String: Any]
        let id = try #require(created?["id"] as? String)

        /// Devices whose stored config names 3.0.0 report committed once.
        var reported: Set<String> = []
        func devicesReport() async throws {
            for d in try await storeA.allDevices() where !reported.contains(d.id) {
                let config = try DeviceConfig(serializedBytes: d.config)
                guard config.baseOs.version == "3.0.0" else { continue }
                try await storeA.putInfo(deviceID: d.id, body: Data(), receivedMs: nowMs(), step:
                    UpdateStepRecord(step: "committed", version: "3.0.0", reason: "", deviceTimeMs: 0, receivedMs: nowMs()))
                reported.insert(d.id)
            }
        }
        func state() async throws -> RolloutRecord { try #require(try await storeA.rollouts().first { $0.id == id }) }

        // Both tick, concurrently; A takes the lease first, B never gets it while A renews.
        #expect(try await a.tick())
        var bHeld = 0
        for _ in 0..<200 where try await state().wave < 2 {
            async let ta = a.tick()
            async let tb = b.tick()
            let (heldA, heldB) = try await (ta, tb)
            #expect(heldA)
            if heldB { bHeld += 1 }
            try await devicesReport()
        }
        #expect(bHeld == 0)
        #expect(try await state().wave == 2)
        // A stops (a crashed replica). B takes over once the lease runs out, and finishes.
        for _ in 0..<400 where try await state().state == "running" {
            _ = try await b.tick()
            try await devicesReport()
            try await Task.sleep(for: .milliseconds(25))
        }
        let final = try await state()
        #expect(final.state == "completed")
        let events = try await storeA.rolloutEvents(rolloutID: id)
        let starts = events.filter { $0.kind == "wave-started" }
        #expect(starts.map(\.wave) == [0, 1, 2, 3])
        #expect(starts.map(\.holder) == ["A", "A", "A", "B"])
        #expect(try await storeA.rolloutDevices(rolloutID: id).allSatisfy { $0.state == "committed" })
        await fixture.close(storeA)
        await fixture.close(storeB)
    }
}
