import Dispatch
import Foundation
import OutpostQEMU
import OutpostTestSupport
import Testing
@testable import OutpostTrust

/// The EK certificate in the TPM's NV, read as the device does and checked against
/// tpm2-tools' own `tpm2_nvread` of the same index.
@Suite("Trust: EK certificate from NV (swtpm)", .serialized)
struct EKCertificateTests {
    @Test func aTPMWithAnEKCertificateGivesTheSameDERAsTpm2Nvread() throws {
        let tmp = try TemporaryDirectory("ekcert")
        let ca = try SoftwareTPM.EndorsementCA(directory: tmp.path + "/ca")
        let tpm = try SoftwareTPM(stateDirectory: tmp.path + "/tpm", endorsementCA: ca)
        let attestor = try TPMAttestor(tcti: tpm.tcti)
        let read = try #require(try attestor.endorsementCertificate())

        let out = tmp.path + "/nvread.der"
        let nvread = try runCommand(["tpm2_nvread", "-T", tpm.tcti, SoftwareTPM.p256EKCertificateIndex, "-o", out], timeout: .seconds(20))
        #expect(nvread.status == 0, "\(nvread.output)")
        let expected = try #require(FileManager.default.contents(atPath: out))
        #expect(read == Array(expected))
        #expect(read.count > 500 && read.first == 0x30, "not a DER SEQUENCE of a certificate's size: \(read.count) bytes")

        // The certificate names this TPM's P-256 EK, as openssl reads it.
        try Data(read).write(to: URL(fileURLWithPath: tmp.path + "/ek.der"))
        let text = try runCommand(["openssl", "x509", "-inform", "der", "-in", tmp.path + "/ek.der", "-noout", "-text"], timeout: .seconds(20))
        #expect(text.stdout.contains("NIST CURVE: P-256") && text.stdout.contains("Issuer: CN = swtpm-localca"), "\(text.output)")

        // Chunks far smaller than the TPM's NV_BUFFER_MAX read the same bytes.
        let max = try attestor.connection.nvBufferMax()
        #expect(max >= 512, "TPM_PT_NV_BUFFER_MAX \(max)")
        let small = try attestor.connection.readNV(index: EKCertificateIndex.eccP256, bufferMax: 100)
        #expect(small == read)
    }

    /// `outpost run`'s manufacture (OutpostQEMU): the device reads a P-256 EK certificate that
    /// chains, through the local CA's intermediate, to its root (openssl as the independent check).
    @Test func outpostRunsManufacturedTPMHasAnEKCertificateThatChainsToTheLocalCA() async throws {
        let tmp = try TemporaryDirectory("ekcert-run")
        let maker = TPMManufacture(caDirectory: tmp.path + "/ek-ca")
        let state = tmp.path + "/image.tpm"
        #expect(TPMManufacture.isFresh(state))
        // HostProcess's synchronous API must not wait on a pool thread: a Dispatch thread waits.
        try await withCheckedThrowingContinuation { (done: CheckedContinuation<Void, any Error>) in
            DispatchQueue.global().async {
                do { try maker.manufacture(stateDirectory: state); done.resume() } catch { done.resume(throwing: error) }
            }
        }
        #expect(!TPMManufacture.isFresh(state))
        let tpm = try SoftwareTPM(stateDirectory: state)
        let read = try #require(try TPMAttestor(tcti: tpm.tcti).endorsementCertificate())
        try Data(read).write(to: URL(fileURLWithPath: tmp.path + "/ek.der"))
        _ = try sh("openssl", "x509", "-inform", "der", "-in", tmp.path + "/ek.der", "-out", tmp.path + "/ek.pem")
        let verify = try runCommand(["openssl", "verify", "-CAfile", maker.rootCertificate, "-untrusted", maker.issuerCertificate,
                                     tmp.path + "/ek.pem"], timeout: .seconds(20))
        #expect(verify.status == 0 && verify.stdout.contains("ek.pem: OK"), "\(verify.output)")
        // The RSA and P-384 EK certificates swtpm_setup makes are there too, as on a real part.
        for index in ["0x01c00002", "0x01c00016"] {
            let r = try runCommand(["tpm2_nvreadpublic", "-T", tpm.tcti, index], timeout: .seconds(20))
            #expect(r.status == 0, "\(index): \(r.output)")
        }
    }

    @Test func aTPMWithoutAnEKCertificateGivesNil() throws {
        let tmp = try TemporaryDirectory("ekcert-none")
        let tpm = try SoftwareTPM(stateDirectory: tmp.path + "/tpm")
        let attestor = try TPMAttestor(tcti: tpm.tcti)
        #expect(try attestor.endorsementCertificate() == nil)
        // And through the fleet client's protocol.
        #expect(try TPMDeviceAttestor(attestor: attestor).endorsementCertificate() == nil)
    }

    @Test func theChunkPlanCoversTheIndexInPiecesNoLargerThanTheBuffer() {
        #expect(NVReadPlan.chunks(size: 1500, bufferMax: 512) == [
            .init(offset: 0, count: 512), .init(offset: 512, count: 512), .init(offset: 1024, count: 476),
        ])
        #expect(NVReadPlan.chunks(size: 1024, bufferMax: 512).map(\.count) == [512, 512])
        #expect(NVReadPlan.chunks(size: 300, bufferMax: 1024) == [.init(offset: 0, count: 300)])
        #expect(NVReadPlan.chunks(size: 0, bufferMax: 1024).isEmpty)
        #expect(NVReadPlan.chunks(size: 3, bufferMax: 0).count == 3)
        for size in [1, 2, 511, 512, 513, 1999, 2048, 65535] {
            for buffer in [1, 7, 256, 512, 768, 1024, 2048] {
                let plan = NVReadPlan.chunks(size: size, bufferMax: buffer)
                var next = 0
                var contiguous = true
                for c in plan {
                    contiguous = contiguous && c.offset == next && c.count > 0 && c.count <= buffer
                    next = c.offset + c.count
                }
                #expect(contiguous && next == size && plan.count == (size + buffer - 1) / buffer, "size \(size) buffer \(buffer)")
            }
        }
    }
}
