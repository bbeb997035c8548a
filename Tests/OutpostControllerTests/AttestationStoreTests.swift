import Foundation
@testable import OutpostController
import OutpostTestSupport
import Testing

/// The attestation part of FleetStore on both backends: keys are read-modify-written under a
/// lock, a nonce is taken at most once, the last quote replaces the previous one.
@Suite("Attestation store on SQLite and PostgreSQL", .postgresServer)
struct AttestationStoreTests {
    func withDevice(_ backend: Backend, _ tag: String, _ body: (any FleetStore) async throws -> Void) async throws {
        let fixture = try StoreFixture(backend, tag: tag)
        defer { fixture.remove() }
        let store = try await fixture.open()
        do {
            try await store.insertDevices([FleetStoreTests.device("dev1", registered: 1000)])
            try await body(store)
        } catch {
            await fixture.close(store)
            throw error
        }
        await fixture.close(store)
    }

    static func key(_ ak: UInt8) -> AttestationKeyRecord {
        AttestationKeyRecord(deviceID: "dev1", ekPublic: Data([1, 2]), akPublic: Data([ak]), ekCertificate: Data(),
                             credentialSHA256: Data(repeating: 7, count: 32))
    }

    @Test(arguments: Backend.allCases)
    func keysAreReplacedAndChangedUnderTheirLock(_ backend: Backend) async throws {
        try await withDevice(backend, "attest-keys") { s in
            #expect(try await s.attestationKey(deviceID: "dev1") == nil)
            #expect(try await s.changeAttestationKey(deviceID: "dev1") { $0 } == nil)
            try await s.putAttestationKey(Self.key(3))
            try await s.putAttestationKey(Self.key(4))
            #expect(try await s.attestationKey(deviceID: "dev1") == Self.key(4))
            let bound = try await s.changeAttestationKey(deviceID: "dev1") { k in
                var n = k
                n.boundMs = 5
                n.firstUse = ["0": "aa"]
                return n
            }
            #expect(bound?.boundMs == 5)
            // nil from the change leaves the row as it is.
            #expect(try await s.changeAttestationKey(deviceID: "dev1") { _ in nil }?.firstUse == ["0": "aa"])
            #expect(try await s.attestationKey(deviceID: "dev1")?.boundMs == 5)
        }
    }

    @Test(arguments: Backend.allCases)
    func aNonceIsTakenOnceAndANewOneReplacesTheOld(_ backend: Backend) async throws {
        try await withDevice(backend, "attest-nonce") { s in
            #expect(try await s.takeNonce(deviceID: "dev1") == nil)
            try await s.putNonce(deviceID: "dev1", nonce: Data([1]), expiresMs: 10)
            try await s.putNonce(deviceID: "dev1", nonce: Data([2]), expiresMs: 20)
            let taken = try await s.takeNonce(deviceID: "dev1")
            #expect(taken?.nonce == Data([2]) && taken?.expiresMs == 20)
            #expect(try await s.takeNonce(deviceID: "dev1") == nil)
        }
    }

    @Test(arguments: Backend.allCases)
    func theLastQuoteReplacesThePrevious(_ backend: Backend) async throws {
        try await withDevice(backend, "attest-last") { s in
            var r = AttestationRecord(deviceID: "dev1", receivedMs: 1, passed: false, reason: "failed: PCR 8",
                                      mismatches: [.init(index: 8, expected: "aa", actual: "bb")], nonce: Data([9]),
                                      attest: Data([1, 2, 3]), signatureR: Data([4]), signatureS: Data([5]), pcrs: ["8": "bb"],
                                      akPublic: Data([6]), eventLog: Data(), slot: "IMGA", osVersion: "1.0", tokenSHA256: Data())
            try await s.putAttestation(r)
            #expect(try await s.attestation(deviceID: "dev1") == r)
            r.receivedMs = 2
            r.passed = true
            r.mismatches = []
            try await s.putAttestation(r)
            #expect(try await s.attestation(deviceID: "dev1") == r)
            #expect(try await s.attestation(deviceID: "other") == nil)
        }
    }

    @Test(arguments: Backend.allCases)
    func firmwareReferencesAreSetReplacedAndRemovedByModel(_ backend: Backend) async throws {
        try await withDevice(backend, "attest-models") { s in
            #expect(try await s.firmwareReferences().isEmpty)
            try await s.setFirmwareReference(model: "board-a", pcrs: ["0": "aa"])
            try await s.setFirmwareReference(model: "board-a", pcrs: ["0": "bb", "7": "cc"])
            try await s.setFirmwareReference(model: "board-b", pcrs: ["4": "dd"])
            #expect(try await s.firmwareReferences() == ["board-a": ["0": "bb", "7": "cc"], "board-b": ["4": "dd"]])
            try await s.setFirmwareReference(model: "board-a", pcrs: nil)
            #expect(try await s.firmwareReferences() == ["board-b": ["4": "dd"]])
        }
    }
}
