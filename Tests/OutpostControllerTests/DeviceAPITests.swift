import Foundation
import OutpostBundle
@testable import OutpostController
import OutpostProto
import Testing

/// The device API end to end over mutual TLS on loopback: a real controller
/// (Hummingbird, NIOSSL, SQLite) and clients with real certificates.
@Suite("Controller device API", .serialized)
struct DeviceAPITests {
    @Test func registrationIsIdempotentAndTheOnboardingCertificateOnlyRegisters() async throws {
        let c = try await RunningController(tag: "reg")
        defer { Task { await c.stop() } }
        let device = try PKI.makeSelfSigned(commonName: "SN-1")
        let onboard = try c.onboardingClient()
        let (s1, r1) = try await onboard.register(deviceCertificatePEM: device.certificatePEM, serial: "SN-1")
        let (s2, r2) = try await onboard.register(deviceCertificatePEM: device.certificatePEM, serial: "SN-1")
        #expect(s1 == 201)
        #expect(s2 == 200)
        #expect(r1?.deviceID == r2?.deviceID)
        #expect(r2?.alreadyRegistered == true)
        #expect(try await c.store.allDevices().count == 1)

        // The onboarding certificate on anything but register: 403.
        #expect(try await onboard.config(hash: "").0 == 403)
        #expect(try await onboard.request(.GET, DeviceAPI.ping).status == 403)
        try await onboard.shutdown()

        // A certificate the controller never saw: 403 everywhere, register included.
        let stranger = try PKI.makeSelfSigned(commonName: "stranger")
        let sc = try c.client(cert: stranger.certificatePEM, key: stranger.keyPEM)
        #expect(try await sc.config(hash: "").0 == 403)
        #expect(try await sc.register(deviceCertificatePEM: stranger.certificatePEM, serial: "X").0 == 403)
        let refusal = try await sc.request(.GET, DeviceAPI.ping)
        #expect(refusal.status == 403)
        #expect(String(decoding: refusal.body, as: UTF8.self).split(separator: "\n").count == 1)
        try await sc.shutdown()

        // The device's own certificate works, and may repeat registration.
        let dc = try c.client(cert: device.certificatePEM, key: device.keyPEM)
        #expect(try await dc.request(.GET, DeviceAPI.ping).status == 200)
        #expect(try await dc.register(deviceCertificatePEM: device.certificatePEM, serial: "SN-1").0 == 200)
        try await dc.shutdown()
        #expect(try await c.store.allDevices().count == 1)
    }

    @Test func theAllowListDecidesWhichSerialsEnrol() async throws {
        let c = try await RunningController(tag: "allow")
        defer { Task { await c.stop() } }
        let pem = try text(c.dir.onboardCert)
        _ = try await c.call("POST", "/onboard/remove", body: ["certPEM": pem])
        let onboard = try c.onboardingClient()
        let d = try PKI.makeSelfSigned(commonName: "A")
        #expect(try await onboard.register(deviceCertificatePEM: d.certificatePEM, serial: "A-1").0 == 403)
        _ = try await c.call("POST", "/onboard/allow", body: ["certPEM": pem, "serial": "A-1"])
        #expect(try await onboard.register(deviceCertificatePEM: d.certificatePEM, serial: "A-2").0 == 403)
        #expect(try await onboard.register(deviceCertificatePEM: d.certificatePEM, serial: "A-1").0 == 201)
        let list = try await c.call("GET", "/onboard") as? [[String: Any]] ?? []
        #expect(list.map { $0["serial"] as? String } == ["A-1"])
        try await onboard.shutdown()
    }

    @Test func configIs304UntilAnAdminChangeBumpsTheHash() async throws {
        let c = try await RunningController(tag: "config")
        defer { Task { await c.stop() } }
        let (dc, id) = try await c.newDevice(serial: "SN-CFG")
        let (s0, first) = try await dc.config(hash: "")
        #expect(s0 == 200)
        let h0 = try #require(first?.configHash)
        #expect(first?.config.deviceID == id)
        #expect(h0.count == 64)
        #expect(try await dc.config(hash: h0).0 == 304)

        let network = #"{"ports":{"eth0":{"mode":"dhcp","cost":10}}}"#
        _ = try await c.call("POST", "/devices/\(id)/set-network", body: ["networkJSON": network])
        let (s1, second) = try await dc.config(hash: h0)
        #expect(s1 == 200)
        let h1 = try #require(second?.configHash)
        #expect(h1 != h0)
        #expect(second?.config.network.networkJson == Data(network.utf8))
        #expect(second?.config.commands.reboot == 0)

        // A reboot command is a counter bump, addressed here by serial.
        _ = try await c.call("POST", "/devices/SN-CFG/reboot")
        let (s2, third) = try await dc.config(hash: h1)
        #expect(s2 == 200)
        #expect(third?.config.commands.reboot == 1)
        #expect(third?.config.network.networkJson == Data(network.utf8))
        let h2 = try #require(third?.configHash)
        #expect(h2 != h1)
        #expect(try await dc.config(hash: h2).0 == 304)
        _ = try await c.call("POST", "/devices/\(id)/retry-update")
        _ = try await c.call("POST", "/devices/\(id)/shutdown")
        let (_, fourth) = try await dc.config(hash: h2)
        #expect(fourth?.config.commands.updateRetry == 1)
        #expect(fourth?.config.commands.shutdown == 1)
        #expect(fourth?.config.commands.reboot == 1)

        // An unknown device and a bad network config are one-line refusals.
        await #expect(throws: ControllerError.self) { try await c.call("POST", "/devices/nope-nope/reboot") }
        await #expect(throws: ControllerError.self) { try await c.call("POST", "/devices/\(id)/set-network", body: ["networkJSON": "[1"]) }
        try await dc.shutdown()
    }

    @Test func logsAreAcknowledgedUpToTheContiguousSequenceAcrossARestart() async throws {
        let c = try await RunningController(tag: "logs")
        let (dc, id, identity) = try await c.newDeviceWithIdentity(serial: "SN-LOG")
        #expect(try await sendLogs(dc, (1...5).map { logEntry($0, "line \($0)") }) == (200, 5))
        // A gap: 6 is missing, so the mark stays at 5.
        #expect(try await sendLogs(dc, (7...9).map { logEntry($0, "line \($0)") }) == (200, 5))
        try await dc.shutdown()

        // A new controller process state over the same data directory.
        await c.stop()
        try await c.start()
        let again = try c.client(cert: identity.certificatePEM, key: identity.keyPEM)
        #expect(try await again.config(hash: "").0 == 200)
        // The missing entry arrives: the mark jumps over everything held.
        #expect(try await sendLogs(again, [logEntry(6, "line 6")]) == (200, 9))
        // Resent entries are stored once; uncompressed bodies are accepted too.
        var b = LogBatch()
        b.entries = (1...3).map { logEntry($0, "resent \($0)") } + [logEntry(10, "line 10")]
        let r = try await again.post(DeviceAPI.logs, try b.serializedBytes())
        #expect(r.status == 200)
        #expect(try LogsResponse(serializedBytes: r.body).ackedSequence == 10)
        // Entries the device dropped over its quota are declared, not awaited.
        #expect(try await sendLogs(again, [logEntry(15, "dropped 4 entries")], droppedBefore: 15) == (200, 15))

        let stored = try await c.store.logs(deviceID: id, after: 0, limit: 100)
        #expect(stored.map(\.sequence) == Array(1...10) + [15])
        #expect(stored.first?.message == "line 1")
        let v = try await c.call("GET", "/devices/\(id)/logs?after=8") as? [String: Any]
        #expect((v?["entries"] as? [[String: Any]])?.count == 3)
        try await again.shutdown()
        await c.stop()
    }
}
