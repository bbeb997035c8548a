// The app instances a device should run: each binds a VMManifest to the
// images' sources and carries the controller's activate flag and restart and
// purge counters. The same document comes from the controller's `apps` section
// and from `apps.json` on CONFIG (factory-preloaded apps, offline autonomy):
//
//   { "apps": [ { "name": "counter",
//                 "manifest": { ...VMManifest... },
//                 "images": [ { "name": "<imagename>", "url": "https://...",
//                               "sha256": "<64 hex>", "size": <bytes> } ],
//                 "activate": true, "restart": 0, "purge": 0,
//                 "vault": false } ] }
//
// A counter that goes up asks for one restart (or purge) of the instance; the
// device remembers the last value it acted on.

import OutpostHTTP
import OutpostPlatform

/// Where one image of an app comes from and what it must be.
public struct ImageSource: Equatable, Sendable {
    /// The manifest's `imagename` this source provides.
    public var name: String
    public var url: HTTPURL
    /// 64 lower-case hex characters.
    public var sha256: String
    /// The file's exact size in bytes: the free-space check runs on it before the download.
    public var size: UInt64

    public init(name: String, url: HTTPURL, sha256: String, size: UInt64) {
        self.name = name
        self.url = url
        self.sha256 = sha256
        self.size = size
    }
}

/// One app instance the device should have.
public struct AppInstanceConfig: Equatable, Sendable {
    /// The instance's name: its directory on PERSIST, its cgroup and its tap are named after it.
    public var name: String
    public var manifest: VMManifest
    /// One source per distinct `imagename` of the manifest.
    public var images: [ImageSource]
    /// False keeps the instance (and its disks) but does not run it.
    public var activate: Bool
    public var restartCounter: UInt64
    public var purgeCounter: UInt64
    /// A console marker the guest must keep printing (nil: no health check).
    public var health: AppHealthCheck? = nil
    /// `"vault": true`: the instance's directory (overlays, console log, counters) lives in the
    /// device's encrypted vault, and the app does not start while the vault is closed. The
    /// content store's base images are public and hash-verified, so they stay on plain PERSIST.
    public var vault = false

    /// The source of a manifest image.
    public func source(for image: VMManifest.Image) -> ImageSource? { images.first { $0.name == image.imageName } }
}

/// `"health": {"consoleMarker": "alive", "tcpPort": 8080, "httpPath": "/healthz", "timeoutSeconds": 30,
/// "graceSeconds": 60}`: once the app has run for the grace period, it must show it is alive at
/// least every `timeout`, by a console line containing the marker or by answering the probe on
/// its app-network address (a TCP connect, or an HTTP GET answered 2xx/3xx); otherwise the
/// agent kills its QEMU, which restarts it like after a crash. At least one of the two is given.
public struct AppHealthCheck: Equatable, Sendable {
    public var consoleMarker: String?
    public var tcpPort: Int?
    public var httpPath: String?
    public var timeoutSeconds: Int
    public var graceSeconds: Int

    public init(consoleMarker: String?, tcpPort: Int? = nil, httpPath: String? = nil, timeoutSeconds: Int, graceSeconds: Int = 60) {
        self.consoleMarker = consoleMarker
        self.tcpPort = tcpPort
        self.httpPath = httpPath
        self.timeoutSeconds = timeoutSeconds
        self.graceSeconds = graceSeconds
    }
}

/// Every app instance of a device config.
public struct AppsConfig: Equatable, Sendable {
    public var apps: [AppInstanceConfig]
    /// The apps' local network: `"network": { "bridge": "outpost-apps", "subnet": "10.200.0.1/24" }`,
    /// the subnet written as the bridge's own address and the prefix; both optional.
    public var network: AppNetworkConfig

    public init(apps: [AppInstanceConfig], network: AppNetworkConfig = .default) {
        self.apps = apps
        self.network = network
    }

    /// Parses `apps.json` (or the controller's apps section in the same shape); the first problem is thrown with its field path.
    public init(json: [UInt8], document: String = "apps.json") throws(AppsError) {
        let root = try JSONNode(value: try JSONValue.parse(json, document: document), path: "").object(known: ["apps", "network"])
        var apps: [AppInstanceConfig] = []
        for node in try root.required("apps").array {
            let app = try Self.instance(node)
            if apps.contains(where: { $0.name == app.name }) {
                throw AppsError.invalid(field: node.child("name"), reason: "\"\(app.name)\" names two app instances")
            }
            apps.append(app)
        }
        self.apps = apps
        network = try root.optional("network").map(Self.network) ?? .default
    }

    static func network(_ node: JSONNode) throws(AppsError) -> AppNetworkConfig {
        let fields = try node.object(known: ["bridge", "subnet"])
        var config = AppNetworkConfig.default
        if let bridge = fields.optional("bridge") {
            config.bridge = try bridge.string
            // A Linux link name: 1 to 15 characters, none of them '/', ':' or white space.
            guard !config.bridge.isEmpty, config.bridge.utf8.count <= 15,
                  config.bridge.unicodeScalars.allSatisfy({ $0.isASCII && $0.value > 0x20 && $0 != "/" && $0 != ":" && $0.value != 0x7f })
            else { throw bridge.fail("\(bridge.value.rendered) is not a link name (1 to 15 characters, no '/', ':' or spaces)") }
        }
        if let subnet = fields.optional("subnet") {
            let text = try subnet.string
            let parts = text.split(separator: "/")
            guard parts.count == 2, let prefix = Int(parts[1]), let address = IPRange(String(parts[0])), !address.isIPv6,
                  (8...29).contains(prefix) else {
                throw subnet.fail("\(subnet.value.rendered) is not the bridge's IPv4 address with a prefix of 8 to 29 (10.200.0.1/24)")
            }
            config.gateway = String(parts[0])
            config.prefixLength = prefix
            guard config.leaseRange != nil, IPRange(text)?.address != address.address else {
                throw subnet.fail("\(subnet.value.rendered) names the network, not an address in it, or leaves no room for leases")
            }
        }
        return config
    }

    /// Reads `apps.json` from the CONFIG directory; no file means no preloaded apps.
    public static func load(configDirectory: String) throws(AppsError) -> AppsConfig {
        let path = configDirectory + "/apps.json"
        let bytes: [UInt8]?
        do { bytes = try FileIO.readIfPresent(path, limit: 4 << 20) } catch { throw .system(error) }
        guard let bytes else { return AppsConfig(apps: []) }
        return try AppsConfig(json: bytes, document: path)
    }

    static func instance(_ node: JSONNode) throws(AppsError) -> AppInstanceConfig {
        let fields = try node.object(known: ["name", "manifest", "images", "activate", "restart", "purge", "health", "vault"])
        let nameField = try fields.required("name")
        let name = try nameField.string
        guard isInstanceName(name) else {
            throw nameField.fail("\(nameField.value.rendered) is not 1 to 32 of a-z, 0-9 and '-' starting with a letter")
        }
        let manifest = try VMManifest(node: try fields.required("manifest"))
        var sources: [ImageSource] = []
        for sourceNode in try fields.required("images").array {
            let source = try Self.source(sourceNode)
            guard !sources.contains(where: { $0.name == source.name }) else {
                throw AppsError.invalid(field: sourceNode.child("name"), reason: "\"\(source.name)\" has two sources")
            }
            guard manifest.images.contains(where: { $0.imageName == source.name }) else {
                throw AppsError.invalid(field: sourceNode.child("name"), reason: "\"\(source.name)\" is not an imagename of the manifest")
            }
            sources.append(source)
        }
        for (index, image) in manifest.images.enumerated() where !sources.contains(where: { $0.name == image.imageName }) {
            throw AppsError.invalid(field: node.child("manifest.images[\(index)].imagename"),
                                    reason: "\"\(image.imageName)\" has no entry in \(node.child("images"))")
        }
        return AppInstanceConfig(name: name, manifest: manifest, images: sources,
                                 activate: try fields.optional("activate")?.bool ?? true,
                                 restartCounter: UInt64(try fields.optional("restart")?.integer(in: 0...Int64.max) ?? 0),
                                 purgeCounter: UInt64(try fields.optional("purge")?.integer(in: 0...Int64.max) ?? 0),
                                 health: try fields.optional("health").map(Self.health),
                                 vault: try fields.optional("vault")?.bool ?? false)
    }

    static func health(_ node: JSONNode) throws(AppsError) -> AppHealthCheck {
        let fields = try node.object(known: ["consoleMarker", "tcpPort", "httpPath", "timeoutSeconds", "graceSeconds"])
        var marker: String?
        if let markerField = fields.optional("consoleMarker") {
            let text = try markerField.string
            guard !text.isEmpty, text.utf8.count <= 128, text.unicodeScalars.allSatisfy({ $0.value >= 32 && $0.value != 127 }) else {
                throw markerField.fail("\(markerField.value.rendered) is not 1 to 128 printable characters")
            }
            marker = text
        }
        let port = try fields.optional("tcpPort").map { field throws(AppsError) in Int(try field.integer(in: 1...65535)) }
        var path: String?
        if let pathField = fields.optional("httpPath") {
            let text = try pathField.string
            guard port != nil else { throw pathField.fail("needs a tcpPort to send the request to") }
            guard text.hasPrefix("/"), text.utf8.count <= 256, text.unicodeScalars.allSatisfy({ $0.value > 32 && $0.value < 127 }) else {
                throw pathField.fail("\(pathField.value.rendered) is not a path starting with '/' (printable, no spaces)")
            }
            path = text
        }
        guard marker != nil || port != nil else { throw node.fail("has neither a consoleMarker nor a tcpPort to check") }
        return AppHealthCheck(consoleMarker: marker, tcpPort: port, httpPath: path,
                              timeoutSeconds: Int(try fields.required("timeoutSeconds").integer(in: 5...86_400)),
                              graceSeconds: Int(try fields.optional("graceSeconds")?.integer(in: 0...86_400) ?? 60))
    }

    static func source(_ node: JSONNode) throws(AppsError) -> ImageSource {
        let fields = try node.object(known: ["name", "url", "sha256", "size"])
        let urlField = try fields.required("url")
        let url: HTTPURL
        let text = try urlField.string
        do throws(HTTPError) { url = try HTTPURL(text) } catch { throw urlField.fail(error.description) }
        let digestField = try fields.required("sha256")
        let digest = try digestField.string.lowercased()
        guard digest.utf8.count == 64, digest.utf8.allSatisfy({ (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }) else {
            throw digestField.fail("\(digestField.value.rendered) is not 64 hex characters")
        }
        return ImageSource(name: try VMManifest.name(fields.required("name")), url: url, sha256: digest,
                           size: UInt64(try fields.required("size").integer(in: 1...Int64.max)))
    }

    /// Instance names become file, cgroup and interface names, so they are short and plain.
    static func isInstanceName(_ text: String) -> Bool {
        guard let first = text.unicodeScalars.first, ("a"..."z").contains(first), text.utf8.count <= 32 else { return false }
        return text.unicodeScalars.allSatisfy { ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "-" }
    }
}
