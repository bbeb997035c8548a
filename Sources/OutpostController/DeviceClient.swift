import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NIOSSL
import OutpostProto

/// A device's HTTPS client for the controller API, with one client
/// certificate and keep-alive connections. The tests and the throughput
/// benchmark simulate devices with it; outpostd has its own client on
/// OutpostHTTP, and both speak the contract in proto/.
public final class DeviceClient: Sendable {
    public struct Reply: Sendable {
        public var status: Int
        public var body: Data
        public var headers: [(String, String)]
        public func header(_ name: String) -> String? { headers.first { $0.0.lowercased() == name.lowercased() }?.1 }
    }

    let http: HTTPClient
    public let baseURL: String
    /// A request's deadline: the HTTP client keeps retrying a refused connection until then.
    public let timeout: TimeAmount

    /// `rootCA`: the controller CA (CONFIG's root-ca.pem); the certificate
    /// and key: the onboarding pair before registration, the device's own after.
    public init(baseURL: String, rootCAPEM: String, certificatePEM: String, keyPEM: String, timeout: TimeAmount = .seconds(30)) throws {
        self.timeout = timeout
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(Array(rootCAPEM.utf8)))
        tls.certificateChain = try NIOSSLCertificate.fromPEMBytes(Array(certificatePEM.utf8)).map { .certificate($0) }
        tls.privateKey = .privateKey(try NIOSSLPrivateKey(bytes: Array(keyPEM.utf8), format: .pem))
        tls.minimumTLSVersion = .tlsv12
        var config = HTTPClient.Configuration(tlsConfiguration: tls)
        config.connectionPool = .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: 1)
        config.decompression = .disabled
        http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: config)
        self.baseURL = baseURL
    }

    public func shutdown() async throws { try await http.shutdown() }

    /// A client dropped without `shutdown()` (a test that failed half-way) is shut down in the
    /// background rather than left to AsyncHTTPClient's deinit check, which stops the process.
    deinit { http.shutdown(queue: .global()) { _ in } }

    public func request(_ method: HTTPMethod, _ path: String, body: Data? = nil, headers: [(String, String)] = [],
                        timeout: TimeAmount? = nil) async throws -> Reply {
        var req = HTTPClientRequest(url: baseURL + path)
        req.method = method
        if let body {
            req.headers.add(name: "Content-Type", value: DeviceAPI.contentType)
            req.body = .bytes(ByteBuffer(bytes: body))
        }
        for (k, v) in headers { req.headers.add(name: k, value: v) }
        let resp = try await http.execute(req, timeout: timeout ?? self.timeout)
        let buf = try await resp.body.collect(upTo: 64 << 20)
        return Reply(status: Int(resp.status.code), body: Data(buf.readableBytesView), headers: resp.headers.map { ($0.name, $0.value) })
    }

    public func post(_ path: String, _ body: Data, headers: [(String, String)] = []) async throws -> Reply {
        try await request(.POST, path, body: body, headers: headers)
    }

    // The API's calls, typed.

    public func register(deviceCertificatePEM: String, serial: String) async throws -> (Int, RegisterResponse?) {
        var r = RegisterRequest()
        r.deviceCertPem = deviceCertificatePEM
        r.serial = serial
        let reply = try await post(DeviceAPI.register, try r.serializedBytes())
        return (reply.status, reply.status < 300 ? try RegisterResponse(serializedBytes: reply.body) : nil)
    }

    /// (status, response): response is nil for 304.
    public func config(hash: String) async throws -> (Int, ConfigResponse?) {
        var r = ConfigRequest()
        r.configHash = hash
        let reply = try await post(DeviceAPI.config, try r.serializedBytes())
        return (reply.status, reply.status == 200 ? try ConfigResponse(serializedBytes: reply.body) : nil)
    }
}
