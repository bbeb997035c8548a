import Foundation
import OutpostTestSupport
import Testing
@testable import OutpostHTTP

@Suite("HTTP client: URLs, TLS, proxies, framing")
struct HTTPClientTests {
    @Test(arguments: [
        ("http://10.0.2.2:8080/probe", "http", "10.0.2.2", 8080, "/probe"),
        ("https://controller.example/api/v2/ping?x=1", "https", "controller.example", 443, "/api/v2/ping?x=1"),
        ("HTTP://host", "http", "host", 80, "/"),
        ("https://[fd00::1]:8443", "https", "fd00::1", 8443, "/"),
    ])
    func urlsParseIntoSchemeHostPortAndPath(_ text: String, _ scheme: String, _ host: String, _ port: Int, _ path: String) throws {
        let url = try HTTPURL(text)
        #expect(url.scheme.rawValue == scheme && url.host == host && url.port == port && url.path == path)
    }

    @Test(arguments: ["ftp://x/y", "http://", "http://host:99999/", "http://host:0/", "https://user:pw@host/",
                      "nohost", "http://[::1/", "http://ho st/", "http://host/a b"])
    func badURLsAreRefusedWithTheReason(_ text: String) {
        #expect(throws: HTTPError.self) { try HTTPURL(text) }
        do { _ = try HTTPURL(text) } catch { #expect(error.description.contains("is not a usable URL")) }
    }

    /// Found by the apps.json fuzz test (OUTPOST_TEST_SEED=15930084743719026006): the reason
    /// quoted the port with the URL's newline in it, so the error was two lines.
    @Test func aBadURLsReasonIsOneLineToo() throws {
        let error = try #require(throws: HTTPError.self) { try HTTPURL("http://127.0.0.1:8080\nxenial.qcow2") }
        #expect(!error.description.contains("\n") && error.description.contains("port '8080"), "\(error.description)")
    }

    @Test func httpsWithTheRightAnchorReturnsTheBody() throws {
        let tmp = try TemporaryDirectory("tls")
        let pki = try TestPKI(dir: tmp.path)
        let payload = testPayload(100_000)
        FileManager.default.createFile(atPath: tmp.path + "/payload", contents: Data(payload))
        let server = try TestServer(dir: tmp.path, mode: "serve", payload: tmp.path + "/payload", tls: pki)
        var options = HTTPOptions()
        options.tls = try TLSContext(caFiles: [pki.ca], systemDefaults: false)
        let (status, body) = try HTTPClient.get(try HTTPURL("https://127.0.0.1:\(server.port)/x"), options: options)
        #expect(status == 200)
        #expect(body == payload)
        // The same through chunked transfer encoding.
        let chunked = try HTTPClient.get(try HTTPURL("https://127.0.0.1:\(server.port)/chunked"), options: options)
        #expect(chunked.body == payload)
    }

    @Test func anUntrustedCertificateOrAWrongNameIsRefusedWithTheReason() throws {
        let tmp = try TemporaryDirectory("tls-bad")
        let pki = try TestPKI(dir: tmp.path)
        FileManager.default.createFile(atPath: tmp.path + "/payload", contents: Data("x".utf8))
        let server = try TestServer(dir: tmp.path, mode: "serve", payload: tmp.path + "/payload", tls: pki)
        var options = HTTPOptions()
        options.tls = try TLSContext(caFiles: [pki.otherCA], systemDefaults: false)
        do {
            _ = try HTTPClient.get(try HTTPURL("https://127.0.0.1:\(server.port)/"), options: options)
            Issue.record("an untrusted server was accepted")
        } catch {
            #expect(error.description.contains("certificate not trusted"), "\(error)")
        }
        // Right CA, wrong name: the certificate is for 127.0.0.1 only.
        options.tls = try TLSContext(caFiles: [pki.ca], systemDefaults: false)
        do {
            _ = try HTTPClient.get(try HTTPURL("https://localhost:\(server.port)/"), options: options)
            Issue.record("a certificate for another name was accepted")
        } catch {
            #expect(error.description.contains("TLS handshake"), "\(error)")
        }
        // Plain HTTP to a TLS port fails with a one-line error, not a hang.
        options.connectTimeout = .seconds(3)
        #expect(throws: HTTPError.self) { try HTTPClient.get(try HTTPURL("http://127.0.0.1:\(server.port)/"), options: options) }
    }

    @Test func httpsGoesThroughAnHTTPProxyWithConnect() throws {
        let tmp = try TemporaryDirectory("proxy")
        let pki = try TestPKI(dir: tmp.path)
        let payload = testPayload(50_000)
        FileManager.default.createFile(atPath: tmp.path + "/payload", contents: Data(payload))
        let origin = try TestServer(dir: tmp.path, mode: "serve", payload: tmp.path + "/payload", tls: pki)
        let proxy = try TestServer(dir: tmp.path, mode: "serve", payload: "-")
        var options = HTTPOptions()
        options.tls = try TLSContext(caFiles: [pki.ca], systemDefaults: false)
        options.proxy = try HTTPURL("http://127.0.0.1:\(proxy.port)")
        let (status, body) = try HTTPClient.get(try HTTPURL("https://127.0.0.1:\(origin.port)/y"), options: options)
        #expect(status == 200 && body == payload)
        #expect(try proxy.counted().requests == 1, "the request went through the proxy's CONNECT")
        // A proxy that does not answer CONNECT with 2xx is named in the error.
        options.proxy = try HTTPURL("http://127.0.0.1:\(origin.port)")
        do {
            _ = try HTTPClient.get(try HTTPURL("https://127.0.0.1:\(origin.port)/y"), options: options)
            Issue.record("a non-proxy was used as a proxy")
        } catch {
            #expect(error.description.contains("proxy") || error.description.contains("closed"), "\(error)")
        }
    }

    @Test func aConnectionPinnedToAnInterfaceUsesIt() throws {
        let tmp = try TemporaryDirectory("bind")
        FileManager.default.createFile(atPath: tmp.path + "/payload", contents: Data("pinned".utf8))
        let server = try TestServer(dir: tmp.path, mode: "serve", payload: tmp.path + "/payload")
        var options = HTTPOptions()
        options.device = "lo"
        #expect(try HTTPClient.get(try HTTPURL("http://127.0.0.1:\(server.port)/"), options: options).body == Array("pinned".utf8))
        options.device = "outpost-none0"
        #expect(throws: HTTPError.self) { try HTTPClient.get(try HTTPURL("http://127.0.0.1:\(server.port)/"), options: options) }
    }

    @Test func malformedAndTruncatedResponsesEndInAnErrorNeverACrash() throws {
        let fixed: [String] = [
            "", "garbage\r\n\r\n", "HTTP/1.1 2000 OK\r\n\r\n", "HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        ]
        var rng = SplitMix64.forTest()
        var replies = fixed.map { Array($0.utf8) }
        let seed = Array("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n4\r\nbody\r\n0\r\n\r\n".utf8)
        // Well-formed replies among the noise: a client that refused everything fails here.
        let wellFormed = [seed, Array("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody".utf8)]
        replies += wellFormed
        for _ in 0..<150 {
            var mutated = seed
            for _ in 0..<Int.random(in: 1...6, using: &rng) {
                mutated[Int.random(in: 0..<mutated.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
            }
            if Bool.random(using: &rng) { mutated = Array(mutated.prefix(Int.random(in: 0...mutated.count, using: &rng))) }
            replies.append(mutated)
        }
        var errors = 0, accepted = 0
        for reply in replies {
            let server = try CannedServer(reply: reply)
            var options = HTTPOptions()
            options.connectTimeout = .seconds(5)
            options.idleTimeout = .seconds(5)
            do {
                let (status, body) = try HTTPClient.get(try HTTPURL("http://127.0.0.1:\(server.port)/"), options: options, limit: 1 << 16)
                accepted += 1
                if wellFormed.contains(reply) { #expect(status == 200 && body == Array("body".utf8)) }
            } catch {
                errors += 1
                #expect(!error.description.contains("\n"), "one line: \(error)")
                #expect(!wellFormed.contains(reply), "a well-formed reply was refused: \(error)")
            }
        }
        #expect(accepted >= wellFormed.count, "\(accepted) accepted (seed \(rng.seed))")
        #expect(errors >= fixed.count, "every fixed malformed reply is an error (\(errors) errors)")
    }
}
