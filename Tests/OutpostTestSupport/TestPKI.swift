import Foundation

/// A throwaway PKI made with the openssl CLI in `dir`: a CA, a server certificate for one
/// name or IP address signed by it, and an unrelated CA a client should refuse. Real
/// certificates from an independent tool, so TLS tests exercise OpenSSL's own checks.
public struct TestPKI: Sendable {
    public let dir: String
    public let serverName: String
    public var ca: String { dir + "/ca.pem" }
    public var caKey: String { dir + "/ca.key" }
    public var otherCA: String { dir + "/other-ca.pem" }
    public var cert: String { dir + "/server.pem" }
    public var key: String { dir + "/server.key" }

    /// `serverName` becomes the certificate's only subjectAltName: an IP SAN when it parses
    /// as an address (a client checks IP SANs for IP URLs), otherwise a DNS SAN.
    public init(dir: String, serverName: String = "127.0.0.1") throws {
        self.dir = dir
        self.serverName = serverName
        for name in ["ca", "other-ca"] {
            try sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                   "-keyout", "\(dir)/\(name).key", "-out", "\(dir)/\(name).pem", "-days", "2", "-subj", "/CN=outpost test \(name)")
        }
        let san = Self.isAddress(serverName) ? "IP:\(serverName)" : "DNS:\(serverName)"
        try sign(name: "server", commonName: serverName, extensions: "subjectAltName=\(san)\nextendedKeyUsage=serverAuth\n")
    }

    /// A client certificate for `name` signed by the CA (for mutual TLS): its PEM and key paths.
    public func clientCertificate(_ name: String) throws -> (cert: String, key: String) {
        let base = "client-" + name.map { $0.isLetter || $0.isNumber ? String($0) : "_" }.joined()
        try sign(name: base, commonName: name, extensions: "extendedKeyUsage=clientAuth\n")
        return ("\(dir)/\(base).pem", "\(dir)/\(base).key")
    }

    private func sign(name: String, commonName: String, extensions: String) throws {
        try sh("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
               "-keyout", "\(dir)/\(name).key", "-out", "\(dir)/\(name).csr", "-subj", "/CN=\(commonName)")
        let ext = "\(dir)/\(name).ext"
        guard FileManager.default.createFile(atPath: ext, contents: Data(extensions.utf8)) else {
            throw TestSupportError.pki(step: "write \(ext)", output: "")
        }
        try sh("openssl", "x509", "-req", "-in", "\(dir)/\(name).csr", "-CA", ca, "-CAkey", caKey,
               "-CAcreateserial", "-out", "\(dir)/\(name).pem", "-days", "2", "-extfile", ext)
    }

    private static func isAddress(_ text: String) -> Bool {
        var v4 = in_addr(), v6 = in6_addr()
        return inet_pton(AF_INET, text, &v4) == 1 || inet_pton(AF_INET6, text, &v6) == 1
    }
}
