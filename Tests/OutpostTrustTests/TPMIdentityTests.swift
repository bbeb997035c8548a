import CTSS2
import Foundation
import OutpostFleet
import OutpostHTTP
import OutpostTestSupport
import Testing
@testable import OutpostTrust

/// Each test runs its own swtpm on free loopback ports and kills it by PID.
@Suite("Trust: the device identity in a TPM (swtpm)")
struct TPMIdentityTests {
    @Test func keyIsMadeInTheTPMAndNoFileHoldsItsPrivateKey() throws {
        let tmp = try TemporaryDirectory("tpm-key")
        let tpm = try SoftwareTPM(stateDirectory: tmp.path + "/tpm")
        let dir = tmp.path + "/fleet"
        let identity = try TPMIdentity.loadOrCreate(directory: dir, serial: "SN-TPM-1", tcti: tpm.tcti)
        #expect(identity.serial == "SN-TPM-1")

        // The public blob describes a key the TPM generated and will not export.
        let blobs = identity.signer.blobs
        let attributes = try blobs.unmarshalPublic().publicArea.objectAttributes
        for (name, bit) in [("fixedTPM", TPMA_OBJECT_FIXEDTPM), ("fixedParent", TPMA_OBJECT_FIXEDPARENT),
                            ("sensitiveDataOrigin", TPMA_OBJECT_SENSITIVEDATAORIGIN), ("sign", TPMA_OBJECT_SIGN_ENCRYPT)] {
            #expect(attributes & UInt32(bit) != 0, "\(name) is not set")
        }
        let files = try FileManager.default.contentsOfDirectory(atPath: dir).sorted()
        #expect(files == [TPMIdentity.certificateFile, TPMIdentity.publicFile, TPMIdentity.privateFile].sorted())
        let privateAttributes = try FileManager.default.attributesOfItem(atPath: dir + "/" + TPMIdentity.privateFile)
        #expect((privateAttributes[.posixPermissions] as? Int) == 0o600)
        // No file is a private key OpenSSL can read, in PEM or DER.
        for file in files {
            let path = dir + "/" + file
            let text = String(decoding: try Data(contentsOf: URL(fileURLWithPath: path)), as: UTF8.self)
            #expect(!text.contains("PRIVATE KEY"), "\(file)")
            for form in ["PEM", "DER"] {
                let read = try runCommand(["openssl", "pkey", "-inform", form, "-in", path, "-noout"], timeout: .seconds(20))
                #expect(read.status != 0, "openssl read a private key from \(file)")
            }
        }
        // Yet the key signs: it is in the TPM. And the storage root key stays at 0x81000001.
        #expect(try identity.sign(Array("proof".utf8)).count > 8)
        let connection = try TPMConnection(tcti: tpm.tcti)
        _ = try connection.storageRootKey()
    }

    @Test func signatureVerifiesWithOpenSSLAgainstTheCertificatesKey() throws {
        let tmp = try TemporaryDirectory("tpm-sign")
        let tpm = try SoftwareTPM(stateDirectory: tmp.path + "/tpm")
        let identity = try TPMIdentity.loadOrCreate(directory: tmp.path + "/fleet", serial: "SN-TPM-2", tcti: tpm.tcti)
        let message = Array("attest me \(UUID())".utf8)
        let signature = try identity.sign(message)
        let cert = tmp.path + "/cert.pem"
        try identity.certificatePEM.write(toFile: cert, atomically: true, encoding: .utf8)
        try Data(message).write(to: URL(fileURLWithPath: tmp.path + "/message"))
        try Data(message + [0x21]).write(to: URL(fileURLWithPath: tmp.path + "/other"))
        try Data(signature).write(to: URL(fileURLWithPath: tmp.path + "/sig.der"))
        let pub = try runCommand(["openssl", "x509", "-in", cert, "-pubkey", "-noout", "-out", tmp.path + "/pub.pem"], timeout: .seconds(20))
        #expect(pub.status == 0, "\(pub.output)")
        let good = try runCommand(["openssl", "dgst", "-sha256", "-verify", tmp.path + "/pub.pem", "-signature", tmp.path + "/sig.der",
                                   tmp.path + "/message"], timeout: .seconds(20))
        #expect(good.status == 0 && good.stdout.contains("Verified OK"), "\(good.output)")
        let bad = try runCommand(["openssl", "dgst", "-sha256", "-verify", tmp.path + "/pub.pem", "-signature", tmp.path + "/sig.der",
                                  tmp.path + "/other"], timeout: .seconds(20))
        #expect(bad.status != 0, "a signature verified over another message")

        // The certificate: signed by the TPM key itself, CN = serial, no expiry.
        let verify = try runCommand(["openssl", "verify", "-CAfile", cert, cert], timeout: .seconds(20))
        #expect(verify.status == 0, "\(verify.output)")
        let text = try runCommand(["openssl", "x509", "-in", cert, "-noout", "-subject", "-enddate"], timeout: .seconds(20)).stdout
        #expect(text.contains("CN = SN-TPM-2") && text.contains("O = Outpost device") && text.contains("9999"), "\(text)")
    }

    @Test func mutualTLSWithTheTPMKeyPresentsTheDeviceName() throws {
        let tmp = try TemporaryDirectory("tpm-mtls")
        let tpm = try SoftwareTPM(stateDirectory: tmp.path + "/tpm")
        let dir = tmp.path + "/fleet"
        let identity = try TPMIdentity.loadOrCreate(directory: dir, serial: "SN-TPM-TLS", tcti: tpm.tcti)
        let pki = try TestPKI(dir: tmp.path)
        // The server trusts exactly the TPM identity's self-signed certificate.
        let server = try MutualTLSEchoServer(dir: tmp.path, pki: pki, clientTrust: dir + "/" + TPMIdentity.certificateFile)
        var options = HTTPOptions()
        options.tls = try identity.tlsContext(trusting: [pki.ca])
        for _ in 0..<2 {  // two handshakes: the key is loaded and flushed for each
            let (status, body) = try HTTPClient.get(try HTTPURL("https://127.0.0.1:\(server.port)/who"), options: options)
            #expect(status == 200)
            #expect(String(decoding: body, as: UTF8.self) == "SN-TPM-TLS")
        }

        // With the TPM gone, the handshake fails instead of signing some other way.
        tpm.stop()
        do {
            _ = try HTTPClient.get(try HTTPURL("https://127.0.0.1:\(server.port)/who"), options: options)
            Issue.record("a handshake succeeded without the TPM")
        } catch {
            #expect(!error.description.contains("\n"), "\(error)")
            #expect(identity.signer.lastFailure() != nil)
        }
    }

    @Test func tls12ServerAskingForSHA384GetsAVerifiableTPMSignature() throws {
        // TLS 1.2 lets the server pick the client's hash; the TPM key signs
        // ECDSA-SHA256, and ECDSA over P-256 uses only a digest's first 256 bits.
        let tmp = try TemporaryDirectory("tpm-tls12")
        let tpm = try SoftwareTPM(stateDirectory: tmp.path + "/tpm")
        let dir = tmp.path + "/fleet"
        let identity = try TPMIdentity.loadOrCreate(directory: dir, serial: "SN-TPM-12", tcti: tpm.tcti)
        let pki = try TestPKI(dir: tmp.path)
        let port = try freeLoopbackPort()
        let server = try ChildProcess(["openssl", "s_server", "-accept", "127.0.0.1:\(port)", "-cert", pki.cert, "-key", pki.key,
                                       "-Verify", "1", "-verify_return_error", "-CAfile", dir + "/" + TPMIdentity.certificateFile,
                                       "-tls1_2", "-client_sigalgs", "ECDSA+SHA384", "-www"], withInput: true)
        defer { server.kill() }
        try waitFor("openssl s_server on \(port)", within: .seconds(10)) { SoftwareTPM.accepts(port) }
        var options = HTTPOptions()
        options.tls = try identity.tlsContext(trusting: [pki.ca])
        let (status, body) = try HTTPClient.get(try HTTPURL("https://127.0.0.1:\(port)/"), options: options)
        let page = String(decoding: body, as: UTF8.self)
        #expect(status == 200)
        // s_server's page: the handshake it verified, with the client's digest and name.
        #expect(page.contains("Protocol  : TLSv1.2"), "\(page.prefix(400))")
        #expect(page.contains("Peer signing digest: SHA384") && page.contains("CN=SN-TPM-12"), "\(page)")
    }

    @Test func identityReloadsAfterTheTPMRestartsOnTheSameState() throws {
        let tmp = try TemporaryDirectory("tpm-restart")
        let tpm = try SoftwareTPM(stateDirectory: tmp.path + "/tpm")
        let dir = tmp.path + "/fleet"
        let first = try TPMIdentity.loadOrCreate(directory: dir, serial: nil, tcti: tpm.tcti)
        tpm.stop()
        try tpm.start()
        let again = try TPMIdentity.loadOrCreate(directory: dir, serial: nil, tcti: tpm.tcti)
        #expect(again.certificatePEM == first.certificatePEM)
        #expect(again.serial == first.serial && first.serial.hasPrefix("OP-"))
        #expect(try again.sign([1, 2, 3]).count > 8)
    }

    @Test func anotherTPMCannotUseTheSavedKeyAndSaysSoInOneLine() throws {
        let tmp = try TemporaryDirectory("tpm-other")
        let dir = tmp.path + "/fleet"
        do {
            let tpm = try SoftwareTPM(stateDirectory: tmp.path + "/tpm-a")
            _ = try TPMIdentity.loadOrCreate(directory: dir, serial: "SN-TPM-A", tcti: tpm.tcti)
        }
        let other = try SoftwareTPM(stateDirectory: tmp.path + "/tpm-b")
        do {
            _ = try TPMIdentity.loadOrCreate(directory: dir, serial: "SN-TPM-A", tcti: other.tcti)
            Issue.record("another TPM loaded the saved key")
        } catch {
            #expect(error.description.contains("another TPM") && error.description.contains(TPMIdentity.privateFile), "\(error)")
            #expect(!error.description.contains("\n"), "\(error)")
        }
        // And the selection does not swap in a file key for the TPM key it cannot use.
        #expect(throws: FleetError.self) {
            _ = try IdentitySelection.choose(directory: dir, serial: "SN-TPM-A", device: tmp.path, tcti: other.tcti)
        }
        #expect(!FileManager.default.fileExists(atPath: dir + "/" + SoftwareIdentity.keyFile))
    }

    @Test func noTPMIsAOneLineErrorAndTheSelectionSaysWhy() throws {
        let tmp = try TemporaryDirectory("tpm-none")
        let nothing = "swtpm:host=127.0.0.1,port=\(try SoftwareTPM.freePortPair())"
        do {
            _ = try TPMIdentity.loadOrCreate(directory: tmp.path + "/direct", serial: "SN-NONE", tcti: nothing)
            Issue.record("an identity was made without a TPM")
        } catch {
            #expect(error.description.hasPrefix("TPM: ") && !error.description.contains("\n"), "\(error)")
        }
        #expect(!TPMIdentity.hasKey(directory: tmp.path + "/direct"))

        // No device node: the file identity, and the reason in the status line.
        let missing = tmp.path + "/no-tpmrm0"
        let choice = try IdentitySelection.choose(directory: tmp.path + "/fleet", serial: "SN-NONE", device: missing)
        #expect(!choice.inTPM && choice.identity is SoftwareIdentity)
        #expect(choice.status == "no TPM: \(missing) missing; using the file identity")
        // A device node that does not answer: the file identity, and the TPM's own line.
        let broken = try IdentitySelection.choose(directory: tmp.path + "/fleet2", serial: "SN-NONE", device: tmp.path, tcti: nothing)
        #expect(!broken.inTPM && broken.status.hasPrefix("no TPM: TPM: ") && !broken.status.contains("\n"), "\(broken.status)")
    }

    @Test func selectionPrefersAWorkingTPMAndKeepsAnOlderFileIdentity() throws {
        let tmp = try TemporaryDirectory("tpm-choice")
        let tpm = try SoftwareTPM(stateDirectory: tmp.path + "/tpm")
        let chosen = try IdentitySelection.choose(directory: tmp.path + "/fleet", serial: "SN-C", device: tmp.path, tcti: tpm.tcti)
        #expect(chosen.inTPM && chosen.identity is TPMIdentity, "\(chosen.status)")
        // A device registered with a file key before it had a TPM stays that device.
        _ = try SoftwareIdentity.loadOrCreate(directory: tmp.path + "/old", serial: "SN-OLD")
        let old = try IdentitySelection.choose(directory: tmp.path + "/old", serial: "SN-OLD", device: tmp.path, tcti: tpm.tcti)
        #expect(!old.inTPM && old.identity is SoftwareIdentity && old.status.hasPrefix("file identity"), "\(old.status)")
    }
}
