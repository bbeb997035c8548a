import FoundationEssentials
import OutpostHTTP

// The network configuration's JSON, read and written with FoundationEssentials'
// JSONDecoder and JSONEncoder: the same Codable approach as the status
// documents and the update state, with no second JSON model beside it.

/// Any key of a JSON object, so unknown settings can be named instead of ignored.
struct JSONKey: CodingKey {
    let stringValue: String
    var intValue: Int? { nil }
    init(_ string: String) { stringValue = string }
    init?(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}

/// A JSON value of any type rendered for an error message: strings as they
/// are, numbers and booleans as written, lists and objects by kind. Decoding
/// it never fails, so a wrong value can always be shown.
struct RenderedValue: Decodable {
    let text: String

    init(from decoder: any Decoder) throws {
        if let single = try? decoder.singleValueContainer() {
            if single.decodeNil() { text = "null"; return }
            if let value = try? single.decode(String.self) { text = oneLine(value, limit: 60); return }
            if let value = try? single.decode(Bool.self) { text = String(value); return }
            if let value = try? single.decode(Int.self) { text = String(value); return }
            if let value = try? single.decode(Double.self) { text = String(value); return }
        }
        text = (try? decoder.unkeyedContainer()) != nil ? "(a list)" : "(an object)"
    }
}

/// One JSON object of the configuration and the field path it sits at
/// ("ports.eth0"), so every refusal names the field in one line.
struct ConfigObject {
    let container: KeyedDecodingContainer<JSONKey>
    let path: String

    /// The document's root, which must be an object.
    init(decoder: any Decoder) throws {
        do { container = try decoder.container(keyedBy: JSONKey.self) } catch {
            let value = (try? RenderedValue(from: decoder))?.text ?? "?"
            throw NetworkConfigError.invalid(field: "(root)", value: value, reason: "is not an object")
        }
        path = ""
    }

    private init(container: KeyedDecodingContainer<JSONKey>, path: String) {
        self.container = container
        self.path = path
    }

    /// Keys in sorted order, so the first problem reported does not depend on the file's order.
    var keys: [String] { container.allKeys.map(\.stringValue).sorted() }

    func field(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    func has(_ key: String) -> Bool { container.contains(JSONKey(key)) }

    /// The value at `key` for an error message.
    func render(_ key: String) -> String {
        (try? container.decode(RenderedValue.self, forKey: JSONKey(key)))?.text ?? "null"
    }

    /// The string at `key`; nil when absent or of another type.
    func string(_ key: String) -> String? { try? container.decode(String.self, forKey: JSONKey(key)) }

    /// The integer at `key`; nil when absent, fractional, a boolean or of another type.
    func int(_ key: String) -> Int? { try? container.decode(Int.self, forKey: JSONKey(key)) }

    /// The list at `key`, each element a string or nil (for the error message to say which).
    func strings(_ key: String) -> [String?]? {
        guard var list = try? container.nestedUnkeyedContainer(forKey: JSONKey(key)) else { return nil }
        var items: [String?] = []
        while !list.isAtEnd {
            if let text = try? list.decode(String.self) {
                items.append(text)
            } else {
                // Consumes the element so the next one is read; its text goes into no message.
                _ = try? list.decode(RenderedValue.self)
                items.append(nil)
            }
        }
        return items
    }

    /// The object at `key`; refused with the field's name when it is something else.
    func object(_ key: String) throws(NetworkConfigError) -> ConfigObject {
        do {
            return ConfigObject(container: try container.nestedContainer(keyedBy: JSONKey.self, forKey: JSONKey(key)),
                                path: field(key))
        } catch {
            throw .invalid(field: field(key), value: render(key), reason: "is not an object")
        }
    }
}

/// `text` on one line and at most `limit` characters, for error messages.
func oneLine(_ text: String, limit: Int) -> String {
    let flat = String(text.map { $0.isNewline ? " " : $0 })
    return flat.count > limit ? String(flat.prefix(limit - 3)) + "..." : flat
}

extension HTTPURL {
    /// The network manager's routes and probes are IPv4: a URL with an IPv6
    /// literal host cannot be reached through it and is refused in the config.
    var isIPv4OrName: Bool { !host.contains(":") }
}

extension NetworkConfig: Encodable {
    /// The same fields the file uses, so an encoded configuration decodes to
    /// the same settings (the last-known-good list stores configurations this way).
    public func encode(to encoder: any Encoder) throws {
        var root = encoder.container(keyedBy: JSONKey.self)
        var ports = root.nestedContainer(keyedBy: JSONKey.self, forKey: JSONKey("ports"))
        for port in self.ports {
            var entry = ports.nestedContainer(keyedBy: JSONKey.self, forKey: JSONKey(port.name))
            try entry.encode(port.cost, forKey: JSONKey("cost"))
            switch port.mode {
            case .dhcp:
                try entry.encode("dhcp", forKey: JSONKey("mode"))
            case let .staticAddress(address, prefixLength, gateway, dns):
                try entry.encode("static", forKey: JSONKey("mode"))
                try entry.encode("\(address)/\(prefixLength)", forKey: JSONKey("address"))
                try entry.encode(gateway.description, forKey: JSONKey("gateway"))
                if !dns.isEmpty { try entry.encode(dns.map(\.description), forKey: JSONKey("dns")) }
            }
            try entry.encodeIfPresent(port.proxy?.description, forKey: JSONKey("proxy"))
            try entry.encodeIfPresent(port.pac?.description, forKey: JSONKey("pac"))
            try entry.encodeIfPresent(port.mac, forKey: JSONKey("mac"))
        }
        try root.encodeIfPresent(probe?.description, forKey: JSONKey("probe"))
        if testTime != Self.defaultTestTime { try root.encode(testTime.components.seconds, forKey: JSONKey("testTime")) }
    }
}
