import Foundation
import Testing
@testable import OutpostAgent

/// An interrupted download resumes with a Range request: a Python test
/// server cuts the first transfer at 40% and counts every body byte it sends.
@Suite("HTTP download with Range resume")
struct HTTPDownloadTests {
    static let server = #"""
    import http.server, os, sys, socketserver
    data = open(sys.argv[1], 'rb').read()
    counter = sys.argv[2]
    state = {'sent': 0, 'requests': 0}
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = 'HTTP/1.1'
        def log_message(self, *a): pass
        def do_GET(self):
            state['requests'] += 1
            rng = self.headers.get('Range')
            start = int(rng.split('=')[1].split('-')[0]) if rng else 0
            body = data[start:]
            if rng:
                self.send_response(206)
                self.send_header('Content-Range', 'bytes %d-%d/%d' % (start, len(data) - 1, len(data)))
            else:
                self.send_response(200)
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            if state['requests'] == 1:
                body = body[:len(data) * 4 // 10]      # cut the first transfer
            self.wfile.write(body)
            self.wfile.flush()
            state['sent'] += len(body)
            open(counter, 'w').write('%d %d' % (state['sent'], state['requests']))
            if state['requests'] == 1:
                self.connection.shutdown(2)
                self.close_connection = True
    srv = socketserver.TCPServer(('127.0.0.1', 0), H)
    print(srv.server_address[1], flush=True)
    srv.timeout = 20
    for _ in range(10):
        srv.handle_request()
    """#

    @Test func anInterruptedDownloadResumesAndSendsAtMostFivePercentExtra() throws {
        let dir = NSTemporaryDirectory() + "outpost-http-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var payload = [UInt8](repeating: 0, count: 3 << 20)
        for i in payload.indices { payload[i] = UInt8(truncatingIfNeeded: i &* 2_654_435_761 >> 13) }
        FileManager.default.createFile(atPath: dir + "/payload", contents: Data(payload))
        try Self.server.write(toFile: dir + "/server.py", atomically: true, encoding: .utf8)

        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3", dir + "/server.py", dir + "/payload", dir + "/count"]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        defer { if p.isRunning { kill(p.processIdentifier, SIGKILL) } }
        var portText = ""
        while !portText.contains("\n") {
            let d = out.fileHandleForReading.availableData
            if d.isEmpty { break }
            portText += String(decoding: d, as: UTF8.self)
        }
        let port = try #require(Int(portText.trimmingCharacters(in: .whitespacesAndNewlines)))

        var download = HTTPDownload(url: "http://127.0.0.1:\(port)/update.bundle", destination: dir + "/download")
        download.timeoutSeconds = 10
        let received = try download.run()
        let got = try Data(contentsOf: URL(fileURLWithPath: dir + "/download"))
        #expect(got == Data(payload))
        let counted = try String(contentsOfFile: dir + "/count", encoding: .utf8).split(separator: " ")
        let sent = try #require(UInt64(counted.first ?? ""))
        #expect(counted.last == "2", "one cut transfer and one resumed request")
        #expect(Double(sent) <= 1.05 * Double(payload.count), "server sent \(sent) bytes for \(payload.count)")
        #expect(received == UInt64(payload.count))
    }

    @Test(arguments: ["https://x/y", "ftp://x", "http://", "http://host:99999/x"])
    func nonHTTPURLsAreRefused(_ url: String) {
        #expect(throws: DownloadError.self) { try HTTPDownload.parse(url) }
    }
}
