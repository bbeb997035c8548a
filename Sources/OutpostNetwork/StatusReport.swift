import FoundationEssentials

/// `outpostd status --json`'s network section; field names are the wire format the controller
/// will read later, so they change only with care.
public struct NetworkStatusDocument: Encodable, Sendable {
    public struct Port: Encodable, Sendable {
        public var mode: String
        public var carrier: Bool
        public var address: String?
        public var gateway: String?
        public var dns: [String]
        public var cost: Int
        public var proxy: String?
        public var pac: String?
        /// "passed", "failed", or "not configured" (no probe URL: carrier, address and route suffice).
        public var test: String
        public var usable: Bool
        public var lastError: String?
        public var lastLeaseLoss: String?
        /// Unix seconds of the last change of carrier, address or test result.
        public var lastChange: Int?
        public var renamedFrom: String?
    }
    public var active: String?
    public var configOrigin: String
    public var configError: String?
    public var lastPush: String?
    public var probe: String?
    public var routeChanges: Int
    public var error: String?
    public var healthy: Bool
    public var ports: [String: Port]
}

extension NetworkService {
    /// The status document rendered as one line of JSON, keys sorted (the console's
    /// `network status --json`).
    public func statusJSON() -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        guard let data = try? encoder.encode(statusDocument()) else { return #"{"error":"network status: cannot encode"}"# }
        return String(decoding: data, as: UTF8.self)
    }

    /// Per port: carrier, address, gateway, DNS, cost, proxy, test result, last error and last
    /// change; the active port; the configuration's origin and any configuration error. The
    /// agent embeds it under `network` in `outpostd status --json`.
    public func statusDocument() -> NetworkStatusDocument {
        let s = snapshot()
        var ports: [String: NetworkStatusDocument.Port] = [:]
        for port in s.config?.ports ?? [] {
            let o = s.status?.ports[port.name] ?? PortObservation()
            let r = s.status?.reports[port.name]
            let a = r?.addressing
            let mode: String
            if case .staticAddress = port.mode { mode = "static" } else { mode = "dhcp" }
            ports[port.name] = .init(
                mode: mode, carrier: o.carrier, address: a.map { "\($0.address)/\($0.prefixLength)" },
                gateway: a?.gateway.map(\.description), dns: a?.dns.map(\.description) ?? [], cost: port.cost,
                proxy: port.proxy?.description, pac: port.pac?.description,
                test: s.config?.probe == nil ? "not configured" : (o.probeOK ? "passed" : "failed"),
                usable: o.usable, lastError: r?.lastError, lastLeaseLoss: r?.lastLeaseLoss, lastChange: r?.lastChange,
                renamedFrom: s.status?.renamed[port.name])
        }
        let document = NetworkStatusDocument(
            active: s.status?.active, configOrigin: s.origin, configError: s.configError, lastPush: s.lastPush,
            probe: s.config?.probe?.description, routeChanges: s.status?.routeChanges ?? 0, error: s.status?.lastError,
            healthy: isHealthy, ports: ports)
        return document
    }

    /// Short lines for the local console when the controller stays unreachable, so a
    /// technician at the device sees per port why it is not working.
    public func connectivityReport() -> [String] {
        let s = snapshot()
        var lines = ["network: active \(s.status?.active ?? "none"), config \(s.origin)\(s.config?.probe.map { ", probe \($0)" } ?? "")"]
        if let e = s.configError { lines.append("network: config error: \(e)") }
        for port in s.config?.portsByPreference ?? [] {
            let o = s.status?.ports[port.name] ?? PortObservation()
            let r = s.status?.reports[port.name]
            let a = r?.addressing
            var line = "\(port.name): carrier \(o.carrier ? "up" : "down")"
            line += a.map { ", \($0.address)/\($0.prefixLength) via \($0.gateway?.description ?? "none")" } ?? ", no address"
            line += ", dns \(a.map { $0.dns.isEmpty ? "none" : $0.dns.map(\.description).joined(separator: " ") } ?? "none")"
            line += ", proxy \(port.proxy?.description ?? "none")"
            if let pac = port.pac { line += ", pac \(pac)\(port.proxy == nil ? "" : " (the static proxy wins)")" }
            line += o.usable ? ", usable" : ", not usable"
            if let e = r?.lastError { line += ", last error: \(e)" }
            lines.append(line)
        }
        if let e = s.status?.lastError { lines.append("network: \(e)") }
        return lines
    }
}
