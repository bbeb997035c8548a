import FoundationEssentials

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
    /// The original bytes, persisted as-is in the last-known-good list.
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
        let root: JSONValue
        do { root = try JSONValue.parse(json) } catch { throw .malformedJSON(detail: error.detail) }
        try self.init(value: root, source: json)
    }

    /// Validates an already parsed tree (a last-known-good entry).
    public init(value root: JSONValue, source: Data) throws(NetworkConfigError) {
        guard case .object(let object) = root else { throw .invalid(field: "(root)", value: "\(root)", reason: "is not an object") }
        for key in object.keys.sorted() where !["ports", "probe", "testTime"].contains(key) {
            throw .invalid(field: key, value: key, reason: "is not a known setting (ports, probe, testTime)")
        }
        guard let portsValue = object["ports"] else { throw .missing(field: "ports") }
        guard case .object(let ports) = portsValue else { throw .invalid(field: "ports", value: "\(portsValue)", reason: "is not an object") }
        guard !ports.isEmpty else { throw .noPorts }
        var parsed: [PortConfig] = []
        for name in ports.keys.sorted() {
            guard Self.knownPorts.contains(name) else {
                throw .invalid(field: "ports.\(name)", value: name, reason: "is not one of eth0, wlan0, wwan0")
            }
            guard case .object(let port)? = ports[name] else {
                throw .invalid(field: "ports.\(name)", value: "\(ports[name] ?? .null)", reason: "is not an object")
            }
            parsed.append(try Self.parsePort(name: name, port))
        }
        let macs = parsed.compactMap(\.mac)
        if let duplicate = macs.first(where: { m in macs.filter { $0 == m }.count > 1 }) {
            throw .invalid(field: "ports.*.mac", value: duplicate, reason: "is given to more than one port")
        }
        var probe: HTTPURL?
        if let value = object["probe"] {
            guard case .string(let text) = value, let url = HTTPURL(text) else {
                throw .invalid(field: "probe", value: "\(value)", reason: "is not an http(s)://host[:port]/path URL")
            }
            probe = url
        }
        var testTime = Self.defaultTestTime
        if let value = object["testTime"] {
            guard case .integer(let seconds) = value, (1...3600).contains(seconds) else {
                throw .invalid(field: "testTime", value: "\(value)", reason: "is not a whole number of seconds in 1...3600")
            }
            testTime = .seconds(seconds)
        }
        self.init(ports: parsed, probe: probe, testTime: testTime, source: source)
    }

    private static let portKeys: Set<String> = ["mode", "cost", "proxy", "pac", "mac", "address", "gateway", "dns"]

    private static func parsePort(name: String, _ port: [String: JSONValue]) throws(NetworkConfigError) -> PortConfig {
        let f = "ports.\(name)"
        for key in port.keys.sorted() where !portKeys.contains(key) {
            throw .invalid(field: "\(f).\(key)", value: key, reason: "is not a known port setting")
        }
        guard let modeValue = port["mode"] else { throw .missing(field: "\(f).mode") }
        guard case .string(let mode) = modeValue else { throw .invalid(field: "\(f).mode", value: "\(modeValue)", reason: "is not a string") }
        guard let costValue = port["cost"] else { throw .missing(field: "\(f).cost") }
        guard case .integer(let cost) = costValue, (0...10_000).contains(cost) else {
            throw .invalid(field: "\(f).cost", value: "\(costValue)", reason: "is not an integer in 0...10000")
        }
        var proxy: HTTPURL?
        if let p = port["proxy"] {
            guard case .string(let s) = p, let url = HTTPURL(s), url.scheme == "http", url.path == "/" else {
                throw .invalid(field: "\(f).proxy", value: "\(p)", reason: "is not an http://host:port proxy URL")
            }
            proxy = url
        }
        var pac: HTTPURL?
        if let p = port["pac"] {
            guard case .string(let s) = p, let url = HTTPURL(s) else {
                throw .invalid(field: "\(f).pac", value: "\(p)", reason: "is not an http(s) URL")
            }
            pac = url
        }
        var mac: String?
        if let m = port["mac"] {
            guard case .string(let s) = m, let normal = normalizedMAC(s) else {
                throw .invalid(field: "\(f).mac", value: "\(m)", reason: "is not a MAC address (six hex pairs separated by ':')")
            }
            mac = normal
        }
        switch mode {
        case "dhcp":
            for key in ["address", "gateway", "dns"] where port[key] != nil {
                throw .invalid(field: "\(f).\(key)", value: "\(port[key] ?? .null)", reason: "is only allowed with mode static")
            }
            return PortConfig(name: name, mode: .dhcp, cost: cost, proxy: proxy, pac: pac, mac: mac)
        case "static":
            guard let addressValue = port["address"] else { throw .missing(field: "\(f).address") }
            guard case .string(let text) = addressValue else {
                throw .invalid(field: "\(f).address", value: "\(addressValue)", reason: "is not an IPv4 address with prefix (a.b.c.d/n)")
            }
            let pieces = text.split(separator: "/", omittingEmptySubsequences: false)
            guard pieces.count == 2, let address = IPv4(String(pieces[0])), let prefix = Int(pieces[1]), (1...32).contains(prefix) else {
                throw .invalid(field: "\(f).address", value: text, reason: "is not an IPv4 address with prefix (a.b.c.d/n)")
            }
            guard let gwValue = port["gateway"] else { throw .missing(field: "\(f).gateway") }
            guard case .string(let gwText) = gwValue, let gateway = IPv4(gwText) else {
                throw .invalid(field: "\(f).gateway", value: "\(gwValue)", reason: "is not an IPv4 address")
            }
            guard gateway.masked(prefix) == address.masked(prefix), gateway != address else {
                throw .invalid(field: "\(f).gateway", value: gwText, reason: "is not another address inside \(address.masked(prefix))/\(prefix)")
            }
            var dns: [IPv4] = []
            if let dnsValue = port["dns"] {
                guard case .array(let list) = dnsValue, list.count <= 3 else {
                    throw .invalid(field: "\(f).dns", value: "\(dnsValue)", reason: "is not a list of at most 3 addresses")
                }
                for (i, item) in list.enumerated() {
                    guard case .string(let s) = item, let ip = IPv4(s) else {
                        throw .invalid(field: "\(f).dns[\(i)]", value: "\(item)", reason: "is not an IPv4 address")
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
