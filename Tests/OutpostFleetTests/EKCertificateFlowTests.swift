import Foundation
import OutpostController
import OutpostTestSupport
import Testing
@testable import OutpostFleet
@testable import OutpostTrust

/// The EK certificate chain at registration: the reference controller (child process), swtpm
/// devices whose EK certificates a swtpm-localca "maker" issued, and the operator's EK CAs
/// set through the CLI.
@Suite("Fleet: EK certificate chain against the reference controller (swtpm)", .serialized)
struct EKCertificateFlowTests {
    typealias Flow = AttestationFlowTests

    static func ekStatus(_ controller: ChildController, _ id: String) async throws -> String {
        try await Flow.attestation(controller, id)["ekCertificate"] as? String ?? "(none)"
    }

    /// On the data directory's SQLite and on a private PostgreSQL (`serve --database`).
    @Test(arguments: ["sqlite", "postgres"])
    func theChainIsNotCheckedWithoutCAsRefusedWithAnotherRootAndVerifiedWithTheMakers(_ store: String) async throws {
        let tmp = try TemporaryDirectory("fleet-ekcert")
        let controller = try await ChildController(tag: "ekcert", store: store)
        let ctl = [ChildController.executable]
        let data = ["--data", controller.dir.path]
        let maker = try SoftwareTPM.EndorsementCA(directory: tmp.path + "/maker")
        let certified = try SoftwareTPM(stateDirectory: tmp.path + "/tpm-a", endorsementCA: maker)
        let plain = try SoftwareTPM(stateDirectory: tmp.path + "/tpm-b")
        let device = RecordingDevice()
        let console = Flow.Lines()

        // No EK CA configured: the certificate is recorded, not checked; a TPM without one says so.
        let a = try Flow.client(controller, "a", device, console,
                                attestor: TPMDeviceAttestor(attestor: try TPMAttestor(tcti: certified.tcti)))
        try await offPool { try a.register() }
        let idA = try #require(a.status.deviceID)
        #expect(try await Self.ekStatus(controller, idA) == "not checked: no EK CA configured")
        let keyA = try await Flow.attestation(controller, idA)["key"] as? [String: Any]
        #expect((keyA?["ekCertificate"] as? String ?? "").count > 1000, "the certificate's DER is kept: \(keyA ?? [:])")
        let b = try Flow.client(controller, "b", device, console,
                                attestor: TPMDeviceAttestor(attestor: try TPMAttestor(tcti: plain.tcti)))
        try await offPool { try b.register() }
        let idB = try #require(b.status.deviceID)
        #expect(try await Self.ekStatus(controller, idB) == "no EK certificate in the TPM")
        #expect(console.all.allSatisfy { !$0.contains("EK certificate") }, "\(console.all)")

        // Another maker's root: a certificate that does not chain to it is refused, naming its issuer,
        // and nothing is stored.
        let other = tmp.path + "/other-root.pem"
        _ = try sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                   "-keyout", tmp.path + "/other-root.key", "-out", other, "-subj", "/CN=Other TPM Maker Root", "-days", "30")
        let added = try runCommand(ctl + ["ek-ca", "add", other] + data)
        #expect(added.status == 0 && added.stdout.contains("added root") && added.stdout.contains("CN=Other TPM Maker Root"), "\(added.output)")
        let devicesBefore = try await controller.admin("GET", "/devices") as? [Any] ?? []
        let third = try SoftwareTPM(stateDirectory: tmp.path + "/tpm-c", endorsementCA: maker)
        let c = try Flow.client(controller, "c", device, console,
                                attestor: TPMDeviceAttestor(attestor: try TPMAttestor(tcti: third.tcti)))
        var refusal = ""
        do { try await offPool { try c.register() } } catch { refusal = "\(error)" }
        #expect(refusal.contains("HTTP 403") && refusal.contains("issued by CN=swtpm-localca does not chain to a configured EK CA root"),
                "\(refusal)")
        #expect(refusal.split(separator: "\n").count == 1 && refusal.hasSuffix("(roots: CN=Other TPM Maker Root)"), "\(refusal)")
        #expect(c.status.deviceID == nil)
        let devicesAfter = try await controller.admin("GET", "/devices") as? [Any] ?? []
        #expect(devicesAfter.count == devicesBefore.count && devicesBefore.count == 2)
        // The maker's intermediate alone is no root: still refused.
        let intermediate = try runCommand(ctl + ["ek-ca", "add", maker.issuerCertificate] + data)
        #expect(intermediate.status == 0 && intermediate.stdout.contains("added intermediate"), "\(intermediate.output)")
        var again = ""
        do { try await offPool { try c.register() } } catch { again = "\(error)" }
        #expect(again.contains("HTTP 403"), "\(again)")

        // The maker's root too: the same device registers, its certificate verified through the intermediate.
        let root = try runCommand(ctl + ["ek-ca", "add", maker.rootCertificate] + data)
        #expect(root.status == 0 && root.stdout.contains("CN=swtpm-localca-rootca"), "\(root.output)")
        try await offPool { try c.register() }
        let idC = try #require(c.status.deviceID)
        #expect(try await Self.ekStatus(controller, idC) == "verified by CN=swtpm-localca-rootca")
        let shown = try runCommand(ctl + ["device", "attestation", idC] + data)
        #expect(shown.status == 0 && shown.stdout.contains("EK certificate: verified by CN=swtpm-localca-rootca"), "\(shown.output)")
        let json = try runCommand(ctl + ["device", "attestation", idC, "--json"] + data)
        let parsed = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any]
        #expect(parsed?["ekCertificate"] as? String == "verified by CN=swtpm-localca-rootca", "\(json.output)")
        // Device a registers again (a reboot): now checked, and verified.
        try await offPool { try a.register() }
        #expect(try await Self.ekStatus(controller, idA) == "verified by CN=swtpm-localca-rootca")

        // list and remove.
        let list = try runCommand(ctl + ["ek-ca", "list", "--json"] + data)
        let cas = try JSONSerialization.jsonObject(with: Data(list.stdout.utf8)) as? [[String: Any]] ?? []
        #expect(cas.count == 3 && cas.map { $0["kind"] as? String ?? "" }.sorted() == ["intermediate", "root", "root"], "\(list.output)")
        let otherFP = try #require(cas.first { $0["subject"] as? String == "CN=Other TPM Maker Root" }?["fingerprint"] as? String)
        let removed = try runCommand(ctl + ["ek-ca", "remove", otherFP] + data)
        #expect(removed.status == 0 && removed.stdout.contains("removed \(otherFP)"), "\(removed.output)")
        let gone = try runCommand(ctl + ["ek-ca", "remove", otherFP] + data)
        #expect(gone.status == 1 && gone.stderr.contains("no EK CA with fingerprint"), "\(gone.output)")
        let text = try sh(ctl + ["ek-ca", "list"] + data)
        #expect(!text.contains("Other TPM Maker") && text.contains("CN=swtpm-localca-rootca"), "\(text)")
        let notCA = try runCommand(ctl + ["ek-ca", "add", tmp.path + "/tpm-a/../maker/swtpm-localca.conf"] + data)
        #expect(notCA.status == 1 && notCA.stderr.split(separator: "\n").count == 1, "\(notCA.output)")
        await controller.stop()
        if let postgres = controller.postgres {
            // The CAs are PostgreSQL's rows, not the data directory's.
            #expect(try postgres.sql("ekcert", "SELECT count(*) FROM ek_cas") == "2")
        }
    }
}
