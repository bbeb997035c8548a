import Foundation
import OutpostTestSupport
import Testing
@testable import OutpostHTTP

/// An interrupted download resumes with a Range request: the test server cuts
/// the first transfer at 40% and counts every body byte it sends.
@Suite("HTTP(S) download with Range resume")
struct HTTPDownloadTests {
    @Test(arguments: [false, true])
    func anInterruptedDownloadResumesAndSendsAtMostFivePercentExtra(tls: Bool) throws {
        let tmp = try TemporaryDirectory("download")
        let pki = tls ? try TestPKI(dir: tmp.path) : nil
        let payload = testPayload(3 << 20)
        FileManager.default.createFile(atPath: tmp.path + "/payload", contents: Data(payload))
        let server = try TestServer(dir: tmp.path, mode: "cut", payload: tmp.path + "/payload", tls: pki)

        var options = HTTPOptions()
        options.idleTimeout = .seconds(10)
        if let pki { options.tls = try TLSContext(caFiles: [pki.ca], systemDefaults: false) }
        let scheme = tls ? "https" : "http"
        var download = HTTPDownload(url: try HTTPURL("\(scheme)://127.0.0.1:\(server.port)/update.bundle"),
                                    destination: tmp.path + "/download", options: options)
        download.firstBackoff = .milliseconds(50)
        let received = try download.run()
        let got = try Data(contentsOf: URL(fileURLWithPath: tmp.path + "/download"))
        #expect(got == Data(payload))
        let (sent, requests) = try server.counted()
        #expect(requests == 2, "one cut transfer and one resumed request")
        #expect(Double(sent) <= 1.05 * Double(payload.count), "server sent \(sent) bytes for \(payload.count)")
        #expect(received == UInt64(payload.count))
    }

    @Test(arguments: [true, false])
    func aBodyLargerThanMaxBytesIsRefusedAndNothingPastTheLimitIsWritten(announced: Bool) throws {
        let body = String(repeating: "x", count: 5000)
        let head = announced ? "HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" : "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"
        let server = try CannedServer(reply: Array((head + body).utf8))
        let tmp = try TemporaryDirectory("download-too-large")
        var download = HTTPDownload(url: try HTTPURL("http://127.0.0.1:\(server.port)/big"), destination: tmp.path + "/d")
        download.maxBytes = 1000
        do { try download.run(); Issue.record("5000 bytes were accepted with maxBytes 1000") } catch {
            #expect(error == .tooLarge(url: "http://127.0.0.1:\(server.port)/big", limit: 1000))
        }
        let size = (try? FileManager.default.attributesOfItem(atPath: tmp.path + "/d")[.size] as? Int) ?? 0
        #expect(size <= 1000)
    }

    @Test func aServerErrorIsNotRetriedAndNamesTheURL() throws {
        let server = try CannedServer(reply: Array("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".utf8))
        let tmp = try TemporaryDirectory("download-404")
        let download = HTTPDownload(url: try HTTPURL("http://127.0.0.1:\(server.port)/missing.bundle"), destination: tmp.path + "/d")
        do { try download.run(); Issue.record("a 404 was accepted") } catch {
            #expect(error == .status(code: 404, url: "http://127.0.0.1:\(server.port)/missing.bundle"))
        }
    }
}
