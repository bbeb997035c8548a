import Foundation

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

/// An IPv4 address with an optional prefix length, kept as text for `ip` and as octets for checks.
public struct IPv4: Equatable, Sendable, CustomStringConvertible {
    public let octets: [UInt8]
    public var description: String { octets.map(String.init).joined(separator: ".") }

    /// Parses dotted quad only: a device configuration has no business with hostnames here.
    public init?(_ text: String) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var octets: [UInt8] = []
        for part in parts {
            guard !part.isEmpty, part.count <= 3, part.allSatisfy(\.isASCII), let v = UInt8(part) else { return nil }
            octets.append(v)
        }
        self.octets = octets
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
    public let proxy: String?
}

/// The validated network configuration: the only form the rest of the module accepts, so an
/// invalid file can never reach the kernel.
public struct NetworkConfig: Equatable, Sendable {
    public static let knownPorts = ["eth0", "wlan0", "wwan0"]
    public let ports: [PortConfig]
    /// The original bytes, persisted as-is in the last-known-good list.
    public let source: Data

    /// Ports ordered by preference: cost, then the fixed eth0/wlan0/wwan0 order.
    public var portsByPreference: [PortConfig] {
        ports.sorted { ($0.cost, Self.knownPorts.firstIndex(of: $0.name) ?? 9) < ($1.cost, Self.knownPorts.firstIndex(of: $1.name) ?? 9) }
    }

    /// Parses and validates in one step; throws the first problem found, naming its field.
    public init(json: Data) throws(NetworkConfigError) {
        let root: Any
        do { root = try JSONSerialization.jsonObject(with: json) } catch {
            throw .malformedJSON(detail: "not valid JSON")
        }
        guard let object = root as? [String: Any] else { throw .invalid(field: "(root)", value: "\(type(of: root))", reason: "is not an object") }
        guard let portsValue = object["ports"] else { throw .missing(field: "ports") }
        guard let ports = portsValue as? [String: Any] else { throw .invalid(field: "ports", value: "\(portsValue)", reason: "is not an object") }
        guard !ports.isEmpty else { throw .noPorts }
        var parsed: [PortConfig] = []
        for name in ports.keys.sorted() {
            guard Self.knownPorts.contains(name) else {
                throw .invalid(field: "ports.\(name)", value: name, reason: "is not one of eth0, wlan0, wwan0")
            }
            guard let port = ports[name] as? [String: Any] else { throw .invalid(field: "ports.\(name)", value: "\(ports[name] ?? "")", reason: "is not an object") }
            parsed.append(try Self.parsePort(name: name, port))
        }
        self.ports = parsed
        self.source = json
    }

    private static func parsePort(name: String, _ port: [String: Any]) throws(NetworkConfigError) -> PortConfig {
        let f = "ports.\(name)"
        guard let modeValue = port["mode"] else { throw .missing(field: "\(f).mode") }
        guard let mode = modeValue as? String else { throw .invalid(field: "\(f).mode", value: "\(modeValue)", reason: "is not a string") }
        guard let costValue = port["cost"] else { throw .missing(field: "\(f).cost") }
        // JSON numbers arrive as NSNumber, which also bridges to Bool for 0 and 1; only a
        // JSON true/false has the "c" type code, so that is what excludes booleans.
        let isBoolean = (costValue as? NSNumber).map { String(cString: $0.objCType) == "c" } ?? false
        guard !isBoolean, let cost = costValue as? Int, (0...10_000).contains(cost) else {
            throw .invalid(field: "\(f).cost", value: "\(costValue)", reason: "is not an integer in 0...10000")
        }
        var proxy: String?
        if let p = port["proxy"] {
            guard let s = p as? String, s.hasPrefix("http://") || s.hasPrefix("https://"), URL(string: s)?.host != nil else {
                throw .invalid(field: "\(f).proxy", value: "\(p)", reason: "is not an http(s) URL")
            }
            proxy = s
        }
        switch mode {
        case "dhcp":
            return PortConfig(name: name, mode: .dhcp, cost: cost, proxy: proxy)
        case "static":
            guard let addressValue = port["address"] else { throw .missing(field: "\(f).address") }
            let text = addressValue as? String ?? "\(addressValue)"
            let pieces = text.split(separator: "/", omittingEmptySubsequences: false)
            guard pieces.count == 2, let address = IPv4(String(pieces[0])), let prefix = Int(pieces[1]), (1...32).contains(prefix) else {
                throw .invalid(field: "\(f).address", value: text, reason: "is not an IPv4 address with prefix (a.b.c.d/n)")
            }
            guard let gwValue = port["gateway"] else { throw .missing(field: "\(f).gateway") }
            guard let gwText = gwValue as? String, let gateway = IPv4(gwText) else {
                throw .invalid(field: "\(f).gateway", value: "\(gwValue)", reason: "is not an IPv4 address")
            }
            var dns: [IPv4] = []
            if let dnsValue = port["dns"] {
                guard let list = dnsValue as? [Any] else { throw .invalid(field: "\(f).dns", value: "\(dnsValue)", reason: "is not a list") }
                for (i, item) in list.enumerated() {
                    guard let s = item as? String, let ip = IPv4(s) else {
                        throw .invalid(field: "\(f).dns[\(i)]", value: "\(item)", reason: "is not an IPv4 address")
                    }
                    dns.append(ip)
                }
            }
            return PortConfig(name: name, mode: .staticAddress(address: address, prefixLength: prefix, gateway: gateway, dns: dns),
                              cost: cost, proxy: proxy)
        default:
            throw .invalid(field: "\(f).mode", value: mode, reason: "is not dhcp or static")
        }
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
