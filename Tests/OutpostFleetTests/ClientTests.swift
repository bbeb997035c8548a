import Foundation
import OutpostTestSupport
import OutpostHTTP
import OutpostPlatform
import OutpostProto
import Synchronization
import Testing
@testable import OutpostFleet

/// The agent's side of the protocols, recording what the client asked for.
final class RecordingDevice: BaseOSUpdater, NetworkConfigurator, PowerControl, DeviceStateSource, Sendable {
    let events = Mutex<[String]>([])
    let pushOutcome: NetworkPushOutcome
    /// What deviceInfo() reports as the update step's version: tests change it.
    let updateVersion = Mutex("")
    /// The slot deviceInfo() reports as booted (nil: no slots), for attestation.
    let bootedSlot = Mutex<String?>(nil)
    /// The check the client handed with its last network push.
    let acceptance = Mutex<(@Sendable (String) -> String?)?>(nil)

    init(pushOutcome: NetworkPushOutcome = .applied) { self.pushOutcome = pushOutcome }

    func apply(_ baseOS: Outpost_Api_V1_BaseOS) { events.withLock { $0.append("baseos \(baseOS.version)") } }
    func retryFailedUpdate(counter: UInt32) { events.withLock { $0.append("retry \(counter)") } }
    func push(networkJSON: [UInt8], acceptance: @escaping @Sendable (_ port: String) -> String?) -> NetworkPushOutcome {
        events.withLock { $0.append("network \(networkJSON.count)") }
        self.acceptance.withLock { $0 = acceptance }
        return pushOutcome
    }
    func reboot(reason: String) { events.withLock { $0.append("reboot \(reason)") } }
    func shutdown(reason: String) { events.withLock { $0.append("shutdown \(reason)") } }
    func deviceInfo() -> Outpost_Api_V1_DeviceInfo {
        var info = Outpost_Api_V1_DeviceInfo()
        info.identity.board = "test-board"
        info.update.version = updateVersion.withLock { $0 }
        if let slot = bootedSlot.withLock({ $0 }) {
            var s = Outpost_Api_V1_SlotInfo()
            s.label = slot
            s.booted = true
            info.slots = [s]
        }
        return info
    }
    func watchdogState() -> Outpost_Api_V1_WatchdogState? { nil }

    var recorded: [String] { events.withLock { $0 } }
    func commands() -> [String] { recorded.filter { $0.hasPrefix("reboot") || $0.hasPrefix("shutdown") || $0.hasPrefix("retry") } }
}

/// A CONFIG as `outpost-controller init` writes it, made with the openssl CLI,
/// pointing at `url`.
func makeConfig(_ dir: String, url: String) throws -> FleetConfiguration {
    try makeConfigAndPKI(dir, url: url).configuration
}

/// `makeConfig`, and the test PKI (openssl CLI, in `dir`/pki) whose CA is CONFIG's root CA:
/// its server certificate for 127.0.0.1 is one the device trusts, its other CA one it does not.
func makeConfigAndPKI(_ dir: String, url: String) throws -> (configuration: FleetConfiguration, pki: TestPKI) {
    let config = dir + "/config"
    try FileManager.default.createDirectory(atPath: config, withIntermediateDirectories: true)
    try FileManager.default.createDirectory(atPath: dir + "/pki", withIntermediateDirectories: true)
    let pki = try TestPKI(dir: dir + "/pki")
    let onboard = try pki.clientCertificate("onboard")
    try FileManager.default.copyItem(atPath: pki.ca, toPath: config + "/root-ca.pem")
    try FileManager.default.copyItem(atPath: onboard.cert, toPath: config + "/onboard.cert.pem")
    try FileManager.default.copyItem(atPath: onboard.key, toPath: config + "/onboard.key.pem")
    try "\(url)\n".write(toFile: config + "/controller-url", atomically: true, encoding: .utf8)
    try "SN-TEST\n".write(toFile: config + "/serial", atomically: true, encoding: .utf8)
    try FileManager.default.createDirectory(atPath: dir + "/persist", withIntermediateDirectories: true)
    let loaded = try FleetConfiguration.load(configDirectory: config, persistDirectory: dir + "/persist", osVersion: "1.0")
    return (try #require(loaded), pki)
}

@Suite("Fleet: client facade without a controller")
struct ClientTests {
    static func config(reboot: UInt32 = 0, shutdown: UInt32 = 0, retry: UInt32 = 0, network: String = "") -> Outpost_Api_V1_DeviceConfig {
        var c = Outpost_Api_V1_DeviceConfig()
        c.deviceID = "dev-1"
        c.baseOs.version = "2.0"
        c.commands.reboot = reboot
        c.commands.shutdown = shutdown
        c.commands.updateRetry = retry
        c.network.networkJson = Data(network.utf8)
        return c
    }

    @Test func configLoadsFromCONFIGAndAnUnmanagedDeviceHasNone() throws {
        let tmp = try TemporaryDirectory("config")
        let configuration = try makeConfig(tmp.path, url: "https://127.0.0.1:9/")
        #expect(configuration.serial == "SN-TEST")
        #expect(configuration.controllerURL.port == 9)
        #expect(configuration.stateDirectory == tmp.path + "/persist/fleet")
        #expect(try FleetConfiguration.load(configDirectory: tmp.path + "/nothing", persistDirectory: tmp.path, osVersion: "1") == nil)
        try "http://plain:80\n".write(toFile: tmp.path + "/config/controller-url", atomically: true, encoding: .utf8)
        #expect(throws: FleetError.self) {
            _ = try FleetConfiguration.load(configDirectory: tmp.path + "/config", persistDirectory: tmp.path, osVersion: "1")
        }
    }

    @Test func eachCounterBumpActsExactlyOnceAlsoAcrossARestart() throws {
        let tmp = try TemporaryDirectory("counters")
        let configuration = try makeConfig(tmp.path, url: "https://127.0.0.1:9/")
        let device = RecordingDevice()
        let deps = FleetDependencies(updater: device, network: device, power: device, state: device)
        var client: FleetClient? = try FleetClient(configuration: configuration, dependencies: deps)
        // A fresh device records the counters it finds without acting.
        client?.apply(Self.config(reboot: 5, shutdown: 2, retry: 1), atBoot: false)
        #expect(device.commands().isEmpty)
        client?.apply(Self.config(reboot: 6, shutdown: 2, retry: 1), atBoot: false)
        client?.apply(Self.config(reboot: 6, shutdown: 2, retry: 1), atBoot: false)
        #expect(device.commands() == ["reboot controller"])
        client?.apply(Self.config(reboot: 6, shutdown: 2, retry: 2), atBoot: false)
        #expect(device.commands() == ["reboot controller", "retry 2"])
        // The echo is in the outbox, on disk, before the reboot happened.
        let info = try Outpost_Api_V1_DeviceInfo(serializedBytes: try #require(client?.outbox.due().first?.payload))
        #expect(info.handled.reboot == 6 && info.handled.updateRetry == 2)
        #expect(info.identity.serial == "SN-TEST" && info.identity.board == "test-board")
        client = nil

        // Restart: the same counters again do nothing; a new bump acts once.
        let restarted = try FleetClient(configuration: configuration, dependencies: deps)
        restarted.apply(Self.config(reboot: 6, shutdown: 2, retry: 2), atBoot: true)
        #expect(device.commands() == ["reboot controller", "retry 2"])
        restarted.apply(Self.config(reboot: 6, shutdown: 3, retry: 2), atBoot: false)
        #expect(device.commands() == ["reboot controller", "retry 2", "shutdown controller"])
        // The info outbox from before the restart is still pending.
        #expect(restarted.outbox.pendingCount == 1)
    }

    @Test func infoGoesToTheOutboxOnChangeOnlyAndAgainAfterTheInfoInterval() throws {
        let tmp = try TemporaryDirectory("info")
        var configuration = try makeConfig(tmp.path, url: "https://127.0.0.1:9/")
        configuration.intervals.info = .milliseconds(300)
        let device = RecordingDevice()
        let client = try FleetClient(configuration: configuration, dependencies: FleetDependencies(
            updater: device, network: device, power: device, state: device))
        try client.composeInfo()
        let first = try #require(client.outbox.due().first)
        try client.outbox.delivered(first)
        try client.composeInfo()
        #expect(client.outbox.pendingCount == 0)  // unchanged: nothing new
        device.updateVersion.withLock { $0 = "2.0" }
        client.stateChanged()
        try client.composeInfo()
        let changed = try #require(client.outbox.due().first)
        #expect(try Outpost_Api_V1_DeviceInfo(serializedBytes: changed.payload).update.version == "2.0")
        try client.outbox.delivered(changed)
        // Unchanged, but the info interval has passed: sent again anyway.
        MonotonicClock.sleep(for: .milliseconds(350))
        try client.composeInfo()
        #expect(client.outbox.pendingCount == 1)
    }

    @Test func lastGoodConfigIsAppliedAtStartWithNoController() throws {
        let tmp = try TemporaryDirectory("lastgood")
        let configuration = try makeConfig(tmp.path, url: "https://127.0.0.1:9/")
        var stored = Outpost_Api_V1_ConfigResponse()
        stored.config = Self.config(network: "{\"ports\":[]}")
        stored.configHash = "abc123"
        try FleetFiles.makeDirectory(configuration.stateDirectory)
        try FleetState(directory: configuration.stateDirectory).saveConfig(stored)
        let device = RecordingDevice(pushOutcome: .rolledBack(reason: "controller unreachable"))
        let client = try FleetClient(configuration: configuration, dependencies: FleetDependencies(
            updater: device, network: device, power: device, state: device))
        try client.start()
        defer { client.stop() }
        #expect(device.recorded.prefix(2) == ["baseos 2.0", "network 12"])
        #expect(client.status.configHash == "abc123")
        // A pushed network config is not pushed again at the next boot.
        let second = try FleetClient(configuration: configuration, dependencies: FleetDependencies(
            updater: device, network: device, power: device, state: device))
        second.apply(stored.config, atBoot: true)
        #expect(device.recorded.filter { $0.hasPrefix("network") }.count == 1)
    }

    @Test func anUnreachableControllerIsOneLineAndABackoffNotAStampede() throws {
        let tmp = try TemporaryDirectory("unreachable")
        // A port nothing listens on: connection refused at once.
        let configuration = try makeConfig(tmp.path, url: "https://127.0.0.1:9/")
        let device = RecordingDevice()
        let lines = Mutex<[String]>([])
        let client = try FleetClient(configuration: configuration, dependencies: FleetDependencies(
            updater: device, network: device, power: device, state: device, log: { line in lines.withLock { $0.append(line) } }))
        let wait = client.round()
        #expect(wait >= .milliseconds(2400), "\(wait)")  // at least half the 5 s minimum
        let status = client.status
        #expect(!status.registered)
        let error = try #require(status.lastError)
        #expect(!error.contains("\n") && error.contains("register"), "\(error)")
        // Inside the backoff nothing is tried: no second line.
        _ = client.round()
        #expect(lines.withLock { $0.count } == 1)
        #expect(!client.controllerReachable(within: .seconds(600)))
    }

    @Test func fuzzedResponseBodiesEndInAOneLineErrorNeverACrash() throws {
        let tmp = try TemporaryDirectory("fuzz")
        let configuration = try makeConfig(tmp.path, url: "https://127.0.0.1:9/")
        let device = RecordingDevice()
        let client = try FleetClient(configuration: configuration, dependencies: FleetDependencies(
            updater: device, network: device, power: device, state: device))
        var random = SplitMix64.forTest()  // prints the seed; OUTPOST_TEST_SEED replays it
        let seed = random.seed
        var valid = Outpost_Api_V1_ConfigResponse()
        valid.config = Self.config(reboot: 3, network: "{}")
        valid.configHash = "deadbeef"
        let template: [UInt8] = try valid.serializedBytes()
        var errors = 0
        for round in 0..<3000 {
            var body: [UInt8]
            if round % 2 == 0 {
                body = (0..<Int.random(in: 0...64, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }
            } else {
                body = template
                for _ in 0..<Int.random(in: 1...4, using: &random) {
                    body[Int.random(in: 0..<body.count, using: &random)] = UInt8.random(in: 0...255, using: &random)
                }
                if Bool.random(using: &random) { body = Array(body.prefix(Int.random(in: 0...body.count, using: &random))) }
            }
            for what in ["config response", "register response", "logs response"] {
                do {
                    switch what {
                    case "config response": let _: Outpost_Api_V1_ConfigResponse = try client.decode(body, what: what)
                    case "register response": let _: Outpost_Api_V1_RegisterResponse = try client.decode(body, what: what)
                    default: let _: Outpost_Api_V1_LogsResponse = try client.decode(body, what: what)
                    }
                } catch {
                    errors += 1
                    #expect(!error.description.contains("\n") && error.description.contains(what), "seed \(seed): \(error)")
                }
            }
            #expect(!FleetClient.textDetail(body).contains("\n"))
        }
        #expect(errors > 0)
    }
}
