import Crypto
import Foundation
import OutpostBundle
@testable import OutpostController
import OutpostProto
import OutpostTestSupport
import Testing

/// What the controller refuses, and that a refusal stores nothing.
@Suite("Controller refusals", .serialized)
struct RefusalTests {
    static let endpoints = [DeviceAPI.register, DeviceAPI.config, DeviceAPI.info, DeviceAPI.metrics, DeviceAPI.logs, DeviceAPI.attestQuote]

    @Test func randomBodiesToEveryEndpointAre400AndStoreNothing() async throws {
        var g = SplitMix64.forTest()  // prints the seed; OUTPOST_TEST_SEED replays it
        let seed = g.seed
        let c = try await RunningController(tag: "fuzz")
        defer { Task { await c.stop() } }
        let (dc, id) = try await c.newDevice(serial: "SN-FUZZ")
        let onboard = try c.onboardingClient()
        let devicesBefore = try await c.store.allDevices().count
        for endpoint in Self.endpoints {
            // register is the onboarding certificate's; the rest the device's.
            let client = endpoint == DeviceAPI.register ? onboard : dc
            for n in 0..<40 {
                let len = Int.random(in: 16...400, using: &g)
                let body = Data((0..<len).map { _ in UInt8.random(in: 0...255, using: &g) })
                let r = try await client.post(endpoint, body)
                let line = String(decoding: r.body, as: UTF8.self)
                #expect(r.status == 400, "seed \(seed) \(endpoint) #\(n): \(r.status) \(line)")
                #expect(line.hasSuffix("\n") && line.dropLast().split(separator: "\n").count == 1, "one line: \(line)")
            }
        }
        // A gzip body that is not gzip, and gzip of random bytes.
        let junk = Data((0..<64).map { _ in UInt8.random(in: 0...255, using: &g) })
        #expect(try await dc.post(DeviceAPI.logs, junk, headers: [("Content-Encoding", "gzip")]).status == 400)
        #expect(try await dc.post(DeviceAPI.logs, try gzip(junk + junk), headers: [("Content-Encoding", "gzip")]).status == 400)
        // Well-formed protobuf that breaks the contract: sequence 0, no time.
        var b = LogBatch()
        b.entries = [logEntry(0, "no sequence")]
        #expect(try await dc.post(DeviceAPI.logs, try b.serializedBytes()).status == 400)
        #expect(try await dc.post(DeviceAPI.info, try DeviceInfo().serializedBytes()).status == 400)
        var bad = RegisterRequest()
        bad.serial = "SN-X"
        bad.deviceCertPem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        #expect(try await onboard.post(DeviceAPI.register, try bad.serializedBytes()).status == 400)

        #expect(try await c.store.counts(deviceID: id) == StoredCounts(info: 0, metrics: 0, logs: 0))
        #expect(try await c.store.allDevices().count == devicesBefore)
        #expect(try await c.store.logAck(deviceID: id) == 0)
        try await dc.shutdown()
        try await onboard.shutdown()
    }

    @Test func oversizedBodiesAre413() async throws {
        let c = try await RunningController(tag: "big")
        defer { Task { await c.stop() } }
        let (dc, id) = try await c.newDevice(serial: "SN-BIG")
        let onboard = try c.onboardingClient()
        let big = Data(repeating: 0x0a, count: Limits.body + 1)
        for endpoint in Self.endpoints {
            let r = try await (endpoint == DeviceAPI.register ? onboard : dc).post(endpoint, big)
            #expect(r.status == 413, "\(endpoint): \(r.status)")
        }
        // Small on the wire, too large once decompressed.
        let bomb = try gzip(Data(repeating: 0, count: Limits.decompressedLogs + 1024))
        #expect(bomb.count < Limits.body)
        let bombReply = try await dc.post(DeviceAPI.logs, bomb, headers: [("Content-Encoding", "gzip")])
        #expect(bombReply.status == 413, "\(bombReply.status) \(String(decoding: bombReply.body, as: UTF8.self))")
        #expect(try await c.store.counts(deviceID: id) == StoredCounts(info: 0, metrics: 0, logs: 0))
        try await dc.shutdown()
        try await onboard.shutdown()
    }

    @Test func theAdminSocketIsTheOwnersOnly() async throws {
        let c = try await RunningController(tag: "sock")
        defer { Task { await c.stop() } }
        var st = stat()
        #expect(stat(c.dir.adminSocket, &st) == 0)
        #expect(st.st_mode & S_IFMT == S_IFSOCK)
        #expect(st.st_mode & 0o777 == 0o600)
        var k = stat()
        #expect(stat(c.dir.caKey, &k) == 0)
        #expect(k.st_mode & 0o777 == 0o600)
        // The TLS port has no admin routes.
        let (dc, _) = try await c.newDevice(serial: "SN-SOCK")
        #expect(try await dc.request(.GET, "/devices").status == 404)
        try await dc.shutdown()
    }
}

/// Bundles: verified on the way in, served with Range so downloads resume.
@Suite("Controller bundles", .serialized)
struct BundleTests {
    @Test func aBundleDownloadResumesWithRangeRequests() async throws {
        let key = SigningKey.generate()
        let c = try await RunningController(tag: "bundle", trustKey: key)
        defer { Task { await c.stop() } }
        let (dc, id) = try await c.newDevice(serial: "SN-OS")
        var random = SplitMix64.forTest()
        let bytes = try makeBundle(key: key, version: "2.0.0", size: 300_000, random: &random)
        let path = c.root + "/v2.bundle"
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let v = try await c.call("POST", "/devices/\(id)/set-os", body: ["bundle": path]) as? [String: Any]
        #expect((v?["bundle"] as? [String: Any])?["version"] as? String == "2.0.0")

        let (_, cfg) = try await dc.config(hash: "")
        let os = try #require(cfg?.config.baseOs)
        #expect(os.version == "2.0.0")
        #expect(os.activate)
        #expect(os.size == UInt64(bytes.count))
        #expect(os.bundleURL.hasPrefix(try c.dir.loadSettings().url + DeviceAPI.bundles))
        let path2 = String(os.bundleURL.dropFirst(try c.dir.loadSettings().url.count))

        // An interrupted download: the first 100,000 bytes, then the rest.
        let first = try await dc.request(.GET, path2, headers: [("Range", "bytes=0-99999")])
        #expect(first.status == 206)
        #expect(first.header("Content-Range") == "bytes 0-99999/\(bytes.count)")
        #expect(first.body.count == 100_000)
        let rest = try await dc.request(.GET, path2, headers: [("Range", "bytes=100000-")])
        #expect(rest.status == 206)
        #expect(rest.header("Content-Range") == "bytes 100000-\(bytes.count - 1)/\(bytes.count)")
        #expect(first.body + rest.body == Data(bytes))
        #expect(Crypto.SHA256Digest.hexOf(first.body + rest.body) == os.sha256)
        let whole = try await dc.request(.GET, path2)
        #expect(whole.status == 200)
        #expect(whole.body == Data(bytes))
        #expect(try await dc.request(.GET, path2, headers: [("Range", "bytes=\(bytes.count)-")]).status == 416)

        // The onboarding certificate cannot download.
        let onboard = try c.onboardingClient()
        #expect(try await onboard.request(.GET, path2).status == 403)
        try await onboard.shutdown()
        try await dc.shutdown()
    }

    @Test func aBundleTheFleetWouldRefuseIsRefused() async throws {
        let c = try await RunningController(tag: "badbundle", trustKey: SigningKey.generate())
        defer { Task { await c.stop() } }
        let (dc, id) = try await c.newDevice(serial: "SN-BAD")
        let (_, before) = try await dc.config(hash: "")
        // Signed by a key the fleet does not trust.
        var random = SplitMix64.forTest()
        let stranger = try makeBundle(key: SigningKey.generate(), version: "9.9.9", size: 10_000, random: &random)
        let p1 = c.root + "/stranger.bundle"
        try Data(stranger).write(to: URL(fileURLWithPath: p1))
        await #expect(throws: ControllerError.self) { try await c.call("POST", "/devices/\(id)/set-os", body: ["bundle": p1]) }
        // A URL needs a version.
        await #expect(throws: ControllerError.self) { try await c.call("POST", "/devices/\(id)/set-os", body: ["url": "https://x.example/b"]) }
        #expect(try await dc.config(hash: before?.configHash ?? "").0 == 304)
        #expect((try await c.call("GET", "/bundles") as? [Any])?.isEmpty == true)
        try await dc.shutdown()
    }

    /// TPM keys the controller cannot use are refused before the device is registered: one line, no device.
    @Test func aRegistrationWithUnusableTPMKeysIs400AndRegistersNothing() async throws {
        let c = try await RunningController(tag: "badkeys")
        defer { Task { await c.stop() } }
        let onboard = try c.onboardingClient()
        let id = try PKI.makeSelfSigned(commonName: "SN-KEYS")
        var cases: [(String, RegisterRequest)] = []
        var r = RegisterRequest()
        r.deviceCertPem = id.certificatePEM
        r.serial = "SN-KEYS"
        var onlyEK = r
        onlyEK.ekPublic = Data([0, 1, 2])
        cases.append(("ek_public without ak_public", onlyEK))
        var garbage = r
        garbage.ekPublic = Data([0, 4, 0, 0, 0, 0])
        garbage.akPublic = Data([0, 4, 0, 0, 0, 0])
        cases.append(("RegisterRequest.ak_public", garbage))
        for (expected, request) in cases {
            let reply = try await onboard.post(DeviceAPI.register, try request.serializedBytes())
            let line = String(decoding: reply.body, as: UTF8.self)
            #expect(reply.status == 400 && line.contains(expected) && line.dropLast().split(separator: "\n").count == 1, "\(reply.status) \(line)")
        }
        #expect(try await c.store.allDevices().isEmpty)
        try await onboard.shutdown()
    }
}

extension Crypto.SHA256Digest {
    static func hexOf(_ d: Data) -> String { Crypto.SHA256.hash(data: d).map { String(format: "%02x", $0) }.joined() }
}
