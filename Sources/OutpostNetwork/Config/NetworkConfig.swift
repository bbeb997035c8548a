import FoundationEssentials
import OutpostHTTP

/// Why a network configuration was refused. Each case names the field, so the one-line
/// description tells a technician exactly what to fix; the previous configuration stays active.
public enum NetworkConfigError: Error, Equatable, CustomStringConvertible {
    case malformedJSON(detail: String)
    case missing(field: String)
    case invalid(field: String, value: String, reason: String)
    case noPorts

    public var description: String {
        switch self {
        case .malformedJSON(let detail): return "network config: malformed JSON: \(detail)"
        case .missing(let field): return "network config: \(field): missing"
        case .invalid(let field, let value, let reason): return "network config: \(field): '\(value)' \(reason)"
        case .noPorts: return "network config: ports: no port configured"
        }
    }
}

/// An IPv4 address, kept as octets; network byte order is a conversion at the socket edge.
public struct IPv4: Equatable, Hashable, Sendable, CustomStringConvertible {
    public let octets: [UInt8]
    public var description: String { octets.map(String.init).joined(separator: ".") }
    /// The address as a host-order integer, for masks and comparisons.
    public var value: UInt32 { octets.reduce(0) { $0 << 8 | UInt32($1) } }

    public init(value: UInt32) {
        octets = [UInt8(value >> 24), UInt8(value >> 16 & 0xFF), UInt8(value >> 8 & 0xFF), UInt8(value & 0xFF)]
    }

    /// Parses dotted quad only: a device configuration has no business with hostnames here.
    public init?(_ text: String) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var octets: [UInt8] = []
        for part in parts {
            guard !part.isEmpty, part.count <= 3, part.allSatisfy({ $0.isASCII && $0.isNumber }), let v = UInt8(part) else { return nil }
            octets.append(v)
        }
        self.octets = octets
    }

    /// The network part under a prefix of `length` bits.
    public func masked(_ length: Int) -> IPv4 {
        let mask: UInt32 = length <= 0 ? 0 : UInt32.max << UInt32(32 - min(length, 32))
        return IPv4(value: value & mask)
    }
}

/// How one port gets its address: a supervised DHCP client, or the site's static settings.
public enum AddressingMode: Equatable, Sendable {
    case dhcp
    case staticAddress(address: IPv4, prefixLength: Int, gateway: IPv4, dns: [IPv4])
}

/// One uplink as the operator described it. Lower cost is preferred.
public struct PortConfig: Equatable, Sendable {
    public let name: String
    public let mode: AddressingMode
    public let cost: Int
    /// An HTTP proxy the probe (and later controller traffic) goes through via CONNECT.
    public let proxy: HTTPURL?
    /// A PAC URL, fetched through the port and evaluated by PACScript (the subset sites deploy);
    /// a static `proxy` wins over it.
    public let pac: HTTPURL?
    /// When set, the link with this MAC is renamed to `name` at start ("52:54:00:12:34:56", lower case).
    public let mac: String?

    public init(name: String, mode: AddressingMode, cost: Int, proxy: HTTPURL? = nil, pac: HTTPURL? = nil, mac: String? = nil) {
        self.name = name
        self.mode = mode
        self.cost = cost
        self.proxy = proxy
        self.pac = pac
        self.mac = mac
    }
}

/// The validated network configuration: the only form the rest of the module accepts, so an
/// invalid file can never reach the kernel.
///
///     { "probe": "http://10.200.0.1:8080/id",     optional; absent → carrier+address+route suffice
///       "testTime": 60,                           optional seconds a pushed config has to prove itself
///       "ports": { "eth0": { "mode": "dhcp", "cost": 10, "mac": "52:54:00:12:34:56",
///                            "proxy": "http://10.0.0.3:3128" },
///                  "wlan0": { "mode": "static", "address": "10.2.0.2/24", "gateway": "10.2.0.1",
///                             "dns": ["10.2.0.53"], "cost": 20, "pac": "http://wpad/proxy.pac" } } }
public struct NetworkConfig: Equatable, Sendable {
    public static let knownPorts = ["eth0", "wlan0", "wwan0"]
    public static let defaultTestTime: Duration = .seconds(60)
    public let ports: [PortConfig]
    /// Where connectivity is tested; nil means a port is usable once it has carrier, address and route.
    public let probe: HTTPURL?
    /// How long a pushed configuration may take to yield a usable port before it is rolled back.
    public let testTime: Duration
    /// The bytes it was parsed from (the canonical encoding for one read back
    /// from the last-known-good list).
    public let source: Data

    /// The built-in fallback when neither the last-known-good list nor the bootstrap file gives a
    /// configuration: every port on DHCP, wired preferred, cellular last.
    public static let allDHCP: NetworkConfig = {
        let text = #"{"ports":{"eth0":{"mode":"dhcp","cost":10},"wlan0":{"mode":"dhcp","cost":20},"wwan0":{"mode":"dhcp","cost":30}}}"#
        // The literal above is valid by construction; the unit tests parse it too.
        return (try? NetworkConfig(json: Data(text.utf8))) ?? NetworkConfig(
            ports: ["eth0", "wlan0", "wwan0"].enumerated().map { PortConfig(name: $1, mode: .dhcp, cost: 10 * ($0 + 1)) },
            probe: nil, testTime: defaultTestTime, source: Data(text.utf8))
    }()

    private init(ports: [PortConfig], probe: HTTPURL?, testTime: Duration, source: Data) {
        self.ports = ports
        self.probe = probe
        self.testTime = testTime
        self.source = source
    }

    /// A configuration read back from its encoded form; `source` is that canonical encoding.
    init(_ document: Document) {
        let settings = NetworkConfig(ports: document.ports, probe: document.probe, testTime: document.testTime, source: Data())
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        self.init(ports: document.ports, probe: document.probe, testTime: document.testTime,
                  source: (try? encoder.encode(settings)) ?? Data())
    }

    /// Ports ordered by preference: cost, then the fixed eth0/wlan0/wwan0 order.
    public var portsByPreference: [PortConfig] {
        ports.sorted { ($0.cost, Self.knownPorts.firstIndex(of: $0.name) ?? 9) < ($1.cost, Self.knownPorts.firstIndex(of: $1.name) ?? 9) }
    }

    /// True when both describe the same network, whatever their formatting.
    public func sameSettings(as other: NetworkConfig) -> Bool {
        ports == other.ports && probe == other.probe && testTime == other.testTime
    }

    /// Parses and validates in one step; throws the first problem found, naming its field.
    public init(json: Data) throws(NetworkConfigError) {
        guard json.count <= 256 * 1024 else { throw .malformedJSON(detail: "larger than 256 KiB") }
        let document: Document
        do {
            document = try JSONDecoder().decode(Document.self, from: json)
        } catch let error as NetworkConfigError {
            throw error
        } catch {
            throw .malformedJSON(detail: Self.summary(of: error))
        }
        self.init(ports: document.ports, probe: document.probe, testTime: document.testTime, source: json)
    }

    /// The settings as the file holds them, decoded field by field so that a
    /// wrong type, an unknown key or a bad value is reported with its path
    /// ("ports.eth0.cost") instead of the decoder's nested context.
    struct Document: Decodable {
        var ports: [PortConfig]
        var probe: HTTPURL?
        var testTime: Duration

        init(from decoder: any Decoder) throws {
            let root = try ConfigObject(decoder: decoder)
            for key in root.keys where !["ports", "probe", "testTime"].contains(key) {
                throw NetworkConfigError.invalid(field: key, value: key, reason: "is not a known setting (ports, probe, testTime)")
            }
            guard root.has("ports") else { throw NetworkConfigError.missing(field: "ports") }
            let ports = try root.object("ports")
            guard !ports.keys.isEmpty else { throw NetworkConfigError.noPorts }
            var parsed: [PortConfig] = []
            for name in ports.keys {
                guard NetworkConfig.knownPorts.contains(name) else {
                    throw NetworkConfigError.invalid(field: "ports.\(name)", value: name, reason: "is not one of eth0, wlan0, wwan0")
                }
                parsed.append(try NetworkConfig.parsePort(name: name, try ports.object(name)))
            }
            let macs = parsed.compactMap(\.mac)
            if let duplicate = macs.first(where: { m in macs.filter { $0 == m }.count > 1 }) {
                throw NetworkConfigError.invalid(field: "ports.*.mac", value: duplicate, reason: "is given to more than one port")
            }
            self.ports = parsed
            probe = nil
            if root.has("probe") {
                guard let text = root.string("probe"), let url = try? HTTPURL(text), url.isIPv4OrName else {
                    throw NetworkConfigError.invalid(field: "probe", value: root.render("probe"), reason: "is not an http(s)://host[:port]/path URL")
                }
                probe = url
            }
            testTime = NetworkConfig.defaultTestTime
            if root.has("testTime") {
                guard let seconds = root.int("testTime"), (1...3600).contains(seconds) else {
                    throw NetworkConfigError.invalid(field: "testTime", value: root.render("testTime"),
                                                     reason: "is not a whole number of seconds in 1...3600")
                }
                testTime = .seconds(seconds)
            }
        }
    }

    private static let portKeys: Set<String> = ["mode", "cost", "proxy", "pac", "mac", "address", "gateway", "dns"]

    private static func parsePort(name: String, _ port: ConfigObject) throws(NetworkConfigError) -> PortConfig {
        let f = port.path
        for key in port.keys where !portKeys.contains(key) {
            throw .invalid(field: "\(f).\(key)", value: key, reason: "is not a known port setting")
        }
        guard port.has("mode") else { throw .missing(field: "\(f).mode") }
        guard let mode = port.string("mode") else { throw .invalid(field: "\(f).mode", value: port.render("mode"), reason: "is not a string") }
        guard port.has("cost") else { throw .missing(field: "\(f).cost") }
        guard let cost = port.int("cost"), (0...10_000).contains(cost) else {
            throw .invalid(field: "\(f).cost", value: port.render("cost"), reason: "is not an integer in 0...10000")
        }
        var proxy: HTTPURL?
        if port.has("proxy") {
            guard let s = port.string("proxy"), let url = try? HTTPURL(s), url.isIPv4OrName, url.scheme == .http, url.path == "/" else {
                throw .invalid(field: "\(f).proxy", value: port.render("proxy"), reason: "is not an http://host:port proxy URL")
            }
            proxy = url
        }
        var pac: HTTPURL?
        if port.has("pac") {
            guard let s = port.string("pac"), let url = try? HTTPURL(s), url.isIPv4OrName else {
                throw .invalid(field: "\(f).pac", value: port.render("pac"), reason: "is not an http(s) URL")
            }
            pac = url
        }
        var mac: String?
        if port.has("mac") {
            guard let s = port.string("mac"), let normal = normalizedMAC(s) else {
                throw .invalid(field: "\(f).mac", value: port.render("mac"), reason: "is not a MAC address (six hex pairs separated by ':')")
            }
            mac = normal
        }
        switch mode {
        case "dhcp":
            for key in ["address", "gateway", "dns"] where port.has(key) {
                throw .invalid(field: "\(f).\(key)", value: port.render(key), reason: "is only allowed with mode static")
            }
            return PortConfig(name: name, mode: .dhcp, cost: cost, proxy: proxy, pac: pac, mac: mac)
        case "static":
            guard port.has("address") else { throw .missing(field: "\(f).address") }
            guard let text = port.string("address") else {
                throw .invalid(field: "\(f).address", value: port.render("address"), reason: "is not an IPv4 address with prefix (a.b.c.d/n)")
            }
            let pieces = text.split(separator: "/", omittingEmptySubsequences: false)
            guard pieces.count == 2, let address = IPv4(String(pieces[0])), let prefix = Int(pieces[1]), (1...32).contains(prefix) else {
                throw .invalid(field: "\(f).address", value: text, reason: "is not an IPv4 address with prefix (a.b.c.d/n)")
            }
            guard port.has("gateway") else { throw .missing(field: "\(f).gateway") }
            guard let gwText = port.string("gateway"), let gateway = IPv4(gwText) else {
                throw .invalid(field: "\(f).gateway", value: port.render("gateway"), reason: "is not an IPv4 address")
            }
            guard gateway.masked(prefix) == address.masked(prefix), gateway != address else {
                throw .invalid(field: "\(f).gateway", value: gwText, reason: "is not another address inside \(address.masked(prefix))/\(prefix)")
            }
            var dns: [IPv4] = []
            if port.has("dns") {
                guard let list = port.strings("dns"), list.count <= 3 else {
                    throw .invalid(field: "\(f).dns", value: port.render("dns"), reason: "is not a list of at most 3 addresses")
                }
                for (i, item) in list.enumerated() {
                    guard let s = item, let ip = IPv4(s) else {
                        throw .invalid(field: "\(f).dns[\(i)]", value: item ?? "(not a string)", reason: "is not an IPv4 address")
                    }
                    dns.append(ip)
                }
            }
            return PortConfig(name: name, mode: .staticAddress(address: address, prefixLength: prefix, gateway: gateway, dns: dns),
                              cost: cost, proxy: proxy, pac: pac, mac: mac)
        default:
            throw .invalid(field: "\(f).mode", value: mode, reason: "is not dhcp or static")
        }
    }

    /// The decoder's complaint about bytes that are not JSON, as one short line.
    static func summary(of error: any Error) -> String {
        let text: String
        switch error {
        case DecodingError.dataCorrupted(let context):
            text = context.underlyingError.map { "\($0)" }.flatMap { $0.isEmpty ? nil : $0 } ?? context.debugDescription
        case DecodingError.typeMismatch(_, let context), DecodingError.valueNotFound(_, let context),
             DecodingError.keyNotFound(_, let context):
            text = context.debugDescription
        default:
            text = "\(error)"
        }
        return oneLine(text, limit: 120)
    }

    /// Lower-case "aa:bb:cc:dd:ee:ff", or nil.
    static func normalizedMAC(_ text: String) -> String? {
        let pairs = text.lowercased().split(separator: ":", omittingEmptySubsequences: false)
        guard pairs.count == 6, pairs.allSatisfy({ $0.count == 2 && $0.allSatisfy(\.isHexDigit) }) else { return nil }
        return pairs.joined(separator: ":")
    }
}

/// Holds the configuration in force; a rejected candidate leaves it untouched and records why,
/// so status can show the error while the device keeps its working network.
public struct ConfigSlot: Sendable {
    public private(set) var current: NetworkConfig?
    public private(set) var lastError: NetworkConfigError?

    public init(current: NetworkConfig? = nil) { self.current = current }

    /// Returns true when the candidate replaced the current configuration.
    @discardableResult
    public mutating func offer(_ json: Data) -> Bool {
        do {
            current = try NetworkConfig(json: json)
            lastError = nil
            return true
        } catch {
            lastError = error
            return false
        }
    }
}
