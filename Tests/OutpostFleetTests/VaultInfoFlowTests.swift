import Crypto
import Foundation
import OutpostBundle
import OutpostProto
import OutpostTestSupport
import Synchronization
import Testing
@testable import OutpostAgent
@testable import OutpostFleet

/// DeviceInfo.vault from the agent's adapter (FleetVault.report, what AgentStateSource adds to
/// the info) through the real client to the reference controller (child process): the state and
/// its line, and the controller's secrets by name, length and SHA-256, never a value. The
/// vault's area is a directory on the host (dm-crypt is VaultVolumeTests' and the QEMU test's).
@Suite("Fleet: the device's vault in its info", .serialized)
struct VaultInfoFlowTests {
    /// RecordingDevice's info with the vault report added, as AgentStateSource adds it to the agent's.
    struct VaultReportingState: DeviceStateSource {
        let device: RecordingDevice
        let vault: @Sendable () -> VaultService?
        func deviceInfo() -> Outpost_Api_V1_DeviceInfo {
            var info = device.deviceInfo()
            info.vault = FleetVault.report(vault())
            return info
        }
        func watchdogState() -> Outpost_Api_V1_WatchdogState? { nil }
    }

    static func openVault(_ tmp: TemporaryDirectory) throws -> (VaultService, VaultPaths) {
        var paths = VaultPaths()
        paths.directory = tmp.path + "/vault"
        try FileManager.default.createDirectory(atPath: paths.mountPoint, withIntermediateDirectories: true)
        let open = VaultService(paths: paths, slot: "IMGA", version: "1.0")
        open.assumeOpened(detail: "a directory on the host")
        return (open, paths)
    }

    static func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool { SecretsFlowTests.contains(haystack, needle) }

    @Test func theReportSaysTheStateAndTheControllersSecretsByHashAndNeverAValue() throws {
        let tmp = try TemporaryDirectory("vault-report")
        let (open, paths) = try Self.openVault(tmp)
        let psk = Array("psk-\(UInt64.random(in: 1...UInt64.max))".utf8)
        let own = Array("the console's own \(UInt64.random(in: 1...UInt64.max))".utf8)
        try open.put("controller.wifi.psk", psk)
        try open.put("controller.api-token", Array("t".utf8))
        try open.put("own", own)

        let report = FleetVault.report(open)
        #expect(report.state == .unlocked && report.detail == "a directory on the host" && !report.hasSecurityFloor)
        #expect(report.secrets.map(\.name) == ["api-token", "wifi.psk"], "the console's own secret is not the controller's: \(report)")
        #expect(report.secrets.last?.sha256 == hex(Array(SHA256.hash(data: psk))) && report.secrets.last?.bytes == UInt32(psk.count))
        let bytes: [UInt8] = try report.serializedBytes()
        #expect(!Self.contains(bytes, psk) && !Self.contains(bytes, own), "a value in the report")

        // Not open: the state and why, and no secrets, though their files are there.
        let closed = VaultService(paths: paths, slot: "IMGA", version: "1.0")
        let notOpened = FleetVault.report(closed)
        #expect(notOpened.state == .unavailable && notOpened.detail == "not opened" && notOpened.secrets.isEmpty)
        var lockedPaths = paths
        lockedPaths.tcti = "swtpm:host=127.0.0.1,port=1"
        lockedPaths.trustDirectory = tmp.path + "/no-trust"
        let lockedVault = VaultService.open(slot: "IMGA", version: "1.0", paths: lockedPaths)
        let locked = FleetVault.report(lockedVault)
        guard case .locked(let reason) = lockedVault.state else {
            Issue.record("the vault without trust anchors is not locked")
            return
        }
        #expect(locked.state == .locked && locked.detail == reason && !reason.isEmpty && locked.secrets.isEmpty, "\(locked)")
        let noPersist = FleetVault.report(nil)
        #expect(noPersist.state == .unavailable && noPersist.detail == "PERSIST is not mounted")

        // A reason of many lines or pages is cut to the one line the controller takes.
        #expect(FleetVault.oneLine("a\nb", limit: 10) == "a b")
        #expect(FleetVault.oneLine(String(repeating: "é", count: 2000), limit: 2048).utf8.count == 2048)
    }

    @Test func theControllerSeesEachSecretDeliveredAndAVaultChangeResendsTheInfo() async throws {
        let controller = try await ChildController(tag: "vaultinfo")
        let tmp = try TemporaryDirectory("vault-info")
        let (open, _) = try Self.openVault(tmp)
        let current = Mutex<VaultService?>(open)
        let device = RecordingDevice()
        let configuration = try controller.deviceConfiguration("v")
        let state = VaultReportingState(device: device, vault: { current.withLock { $0 } })
        let dependencies = FleetDependencies(updater: device, network: device, power: device, state: state,
                                             log: { _ in }, secrets: FleetVault(vault: { current.withLock { $0 } }))
        let client = try FleetClient(configuration: configuration, dependencies: dependencies)
        try await offPool { try client.register(); _ = try client.pollConfig(); try client.composeInfo(); try client.sendInfo() }
        let id = try #require(client.loop.withLock { $0.deviceID })
        let ctl = [ChildController.executable]
        let data = ["--data", controller.dir.path]

        let value = Array("psk-\(UInt64.random(in: 1...UInt64.max))".utf8)
        let sha = hex(Array(SHA256.hash(data: value)))
        _ = try sh(ctl + ["device", "set-secret", id, "wifi.psk", "--value", String(decoding: value, as: UTF8.self)] + data)
        let before = try sh(ctl + ["device", "show", id] + data)
        #expect(before.contains("vault        unlocked: a directory on the host\nvault floor  unset\n"), "\(before)")
        #expect(before.contains("secret       wifi.psk \(value.count) bytes sha256 \(sha) not yet\n"), "\(before)")

        // The config stores it in the vault; the info composed after says so.
        #expect(try await offPool { try client.pollConfig() } == 200)
        try await offPool { try client.composeInfo(); try client.sendInfo() }
        let after = try sh(ctl + ["device", "show", id] + data)
        #expect(after.contains("secret       wifi.psk \(value.count) bytes sha256 \(sha) delivered\n"), "\(after)")
        #expect(!after.contains(String(decoding: value, as: UTF8.self)))

        // Only the vault changes (its copy is replaced on the device): the info is composed and sent again.
        try open.put("controller.wifi.psk", Array("tampered".utf8))
        client.stateChanged()
        try await offPool { try client.composeInfo(); try client.sendInfo() }
        let tampered = try sh(ctl + ["device", "show", id] + data)
        #expect(tampered.contains("secret       wifi.psk \(value.count) bytes sha256 \(sha) differs\n"), "\(tampered)")

        // The vault closes (PERSIST goes): the controller hears that too, and delivery is back to "not yet".
        current.withLock { $0 = nil }
        client.stateChanged()
        try await offPool { try client.composeInfo(); try client.sendInfo() }
        let gone = try sh(ctl + ["device", "show", id] + data)
        #expect(gone.contains("vault        unavailable: PERSIST is not mounted\n") && gone.contains("\(sha) not yet\n"), "\(gone)")
        await controller.stop()
    }
}
