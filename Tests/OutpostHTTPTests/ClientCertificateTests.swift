import Foundation
import OutpostTestSupport
import Testing
@testable import OutpostHTTP

@Suite("HTTP client: client certificates (mutual TLS)")
struct ClientCertificateTests {
    /// A client certificate for CN=device-7 issued by the test CA.
    static func clientCertificate(_ pki: TestPKI, name: String = "device-7") throws -> TLSClientCertificate {
        let (cert, key) = try pki.clientCertificate(name)
        return TLSClientCertificate(certificatePEM: try String(contentsOfFile: cert, encoding: .utf8),
                                    privateKeyPEM: try String(contentsOfFile: key, encoding: .utf8),
                                    label: name)
    }

    @Test func serverThatRequiresACertificateSeesTheClientsName() throws {
        let tmp = try TemporaryDirectory("mtls")
        let pki = try TestPKI(dir: tmp.path)
        let server = try MutualTLSEchoServer(dir: tmp.path, pki: pki, clientTrust: pki.ca)
        let url = try HTTPURL("https://127.0.0.1:\(server.port)/who")

        var options = HTTPOptions()
        options.tls = try TLSContext(caFiles: [pki.ca], systemDefaults: false, client: try Self.clientCertificate(pki))
        let (status, body) = try HTTPClient.get(url, options: options)
        #expect(status == 200)
        #expect(String(decoding: body, as: UTF8.self) == "device-7")

        // Without a certificate the same server refuses the handshake.
        options.tls = try TLSContext(caFiles: [pki.ca], systemDefaults: false)
        #expect(throws: HTTPError.self) { _ = try HTTPClient.get(url, options: options) }
    }

    @Test func keyThatDoesNotMatchTheCertificateIsRefusedAtSetup() throws {
        let tmp = try TemporaryDirectory("mtls-mismatch")
        let pki = try TestPKI(dir: tmp.path)
        let one = try Self.clientCertificate(pki, name: "one")
        let two = try Self.clientCertificate(pki, name: "two")
        let crossed = TLSClientCertificate(certificatePEM: one.certificatePEM, privateKeyPEM: two.privateKeyPEM, label: "crossed")
        do {
            _ = try TLSContext(caFiles: [pki.ca], systemDefaults: false, client: crossed)
            Issue.record("a mismatched key was accepted")
        } catch {
            // OpenSSL itself finds the mismatch ("key values mismatch") when the key is set.
            #expect(error.description.contains("does not match") || error.description.contains("mismatch"), "\(error)")
            #expect(error.description.contains("crossed"), "\(error)")
        }
        let garbage = TLSClientCertificate(certificatePEM: "not a pem", privateKeyPEM: two.privateKeyPEM, label: "garbage")
        #expect(throws: HTTPError.self) { _ = try TLSContext(caFiles: [pki.ca], systemDefaults: false, client: garbage) }
    }
}
