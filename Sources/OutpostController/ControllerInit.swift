import Foundation

/// `outpost-controller init`: a new fleet. Makes the CA, the server and
/// onboarding certificates, and a CONFIG directory that
/// `outpost image build --config DIR/config` takes as it is.
public enum ControllerInit {
    public struct Options: Sendable {
        public var hosts: [String]
        public var port: Int
        /// A directory of bundle trust anchors (public keys) to copy, e.g. out/keys.
        public var trustFrom: String?
        /// Allow the new onboarding certificate for every serial (`*`).
        public var allowAnySerial: Bool

        public init(hosts: [String], port: Int = 8443, trustFrom: String? = nil, allowAnySerial: Bool = true) {
            self.hosts = hosts
            self.port = port
            self.trustFrom = trustFrom
            self.allowAnySerial = allowAnySerial
        }
    }

    /// The same all-DHCP bootstrap network as scripts/dev-config.sh: every
    /// port on DHCP, wired first; MACs as `outpost run` gives QEMU's NICs.
    public static let defaultNetworkJSON = """
    {
      "ports": {
        "eth0":  { "mode": "dhcp", "cost": 10, "mac": "52:54:00:12:34:56" },
        "wlan0": { "mode": "dhcp", "cost": 20, "mac": "52:54:00:12:34:57" },
        "wwan0": { "mode": "dhcp", "cost": 30, "mac": "52:54:00:12:34:58" }
      }
    }

    """

    public static func run(_ dir: DataDirectory, _ options: Options) async throws {
        guard let first = options.hosts.first else {
            throw ControllerError.invalidInput("init needs at least one --host (the name or address devices reach the controller at)")
        }
        for h in options.hosts where h.isEmpty || h.contains("/") || h.contains(" ") {
            throw ControllerError.invalidInput("--host '\(h)' is not a host name or an address")
        }
        guard (1...65535).contains(options.port) else { throw ControllerError.invalidInput("--port \(options.port) is not a TCP port") }
        if FileManager.default.fileExists(atPath: dir.settingsFile) {
            throw ControllerError.dataDirectory(path: dir.path, reason: "already initialised (controller.json exists); use another directory")
        }
        try makeDirectory(dir.path, mode: 0o700)
        for sub in ["ca", "server"] { try makeDirectory(dir.path + "/" + sub, mode: 0o700) }
        for sub in ["config", "trust", "bundles"] { try makeDirectory(dir.path + "/" + sub, mode: 0o755) }

        let ca = try PKI.makeCA(name: "Outpost Controller CA")
        let server = try PKI.makeServer(hosts: options.hosts, ca: ca)
        let onboard = try PKI.makeOnboarding(ca: ca)
        try writeFile(dir.caCert, Data(ca.certificatePEM.utf8))
        try writeFile(dir.caKey, Data(ca.keyPEM.utf8), mode: 0o600)
        try writeFile(dir.serverCert, Data((server.certificatePEM + ca.certificatePEM).utf8))
        try writeFile(dir.serverKey, Data(server.keyPEM.utf8), mode: 0o600)

        let hostPart = first.contains(":") ? "[\(first)]" : first
        let url = "https://\(hostPart):\(options.port)"
        let c = dir.configDir
        try writeFile(c + "/controller-url", Data((url + "\n").utf8))
        try writeFile(c + "/root-ca.pem", Data(ca.certificatePEM.utf8))
        try writeFile(c + "/onboard.cert.pem", Data(onboard.certificatePEM.utf8))
        // 0600 like dev-config.sh: the builder copies it onto CONFIG as it is.
        try writeFile(c + "/onboard.key.pem", Data(onboard.keyPEM.utf8), mode: 0o600)
        try writeFile(c + "/network.json", Data(defaultNetworkJSON.utf8))

        if let from = options.trustFrom { try copyTrustAnchors(from: from, to: dir.trustDir) }

        let settings = DataDirectory.Settings(url: url, port: options.port)
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        guard let settingsData = try? enc.encode(settings) else { throw ControllerError.io(path: dir.settingsFile, reason: "cannot encode") }
        try writeFile(dir.settingsFile, settingsData)

        let store = try SQLiteFleetStore(path: dir.database)
        if options.allowAnySerial {
            try await store.allowOnboarding(fingerprint: try PKI.fingerprint(pem: onboard.certificatePEM, what: "onboarding certificate"),
                                            serial: "*", note: "created by init")
        }
    }

    /// Copies the public keys (and revoked.txt) of a key directory: private
    /// keys beside them (out/keys holds both) are skipped, never copied.
    static func copyTrustAnchors(from: String, to: String) throws(ControllerError) {
        let names: [String]
        do { names = try FileManager.default.contentsOfDirectory(atPath: from).sorted() } catch {
            throw .io(path: from, reason: "cannot list the trust directory")
        }
        var copied = 0
        for n in names where n.hasSuffix(".pem") || n == "revoked.txt" {
            guard let data = FileManager.default.contents(atPath: from + "/" + n) else { continue }
            if String(decoding: data, as: UTF8.self).contains("PRIVATE KEY") { continue }
            try writeFile(to + "/" + n, data)
            if n.hasSuffix(".pem") { copied += 1 }
        }
        guard copied > 0 else { throw .io(path: from, reason: "no public keys (*.pem) to use as trust anchors") }
    }
}
