/// An http:// or https:// URL reduced to what a probe or a proxy needs. FoundationEssentials
/// has no URL host parsing on every platform, and a device needs only this much anyway.
public struct HTTPURL: Equatable, Sendable, CustomStringConvertible {
    public let scheme: String
    /// An IPv4 literal or a DNS name.
    public let host: String
    public let port: UInt16
    /// Starts with "/".
    public let path: String

    public var description: String {
        let defaultPort: UInt16 = scheme == "https" ? 443 : 80
        return "\(scheme)://\(host)\(port == defaultPort ? "" : ":\(port)")\(path)"
    }

    /// The host as an address when it is a literal; names are resolved at connect time.
    public var address: IPv4? { IPv4(host) }

    /// Parses `scheme://host[:port][/path]`; nil for anything else (userinfo, IPv6, empty host).
    public init?(_ text: String) {
        guard text.count <= 2048, text.allSatisfy({ $0.isASCII && !$0.isWhitespace }) else { return nil }
        let scheme: String
        if text.hasPrefix("http://") { scheme = "http" } else if text.hasPrefix("https://") { scheme = "https" } else { return nil }
        let rest = text.dropFirst(scheme.count + 3)
        let authority = rest.prefix { $0 != "/" && $0 != "?" && $0 != "#" }
        var path = String(rest.dropFirst(authority.count))
        if let hash = path.firstIndex(of: "#") { path = String(path[..<hash]) }
        if path.isEmpty || path.hasPrefix("?") { path = "/" + path }
        guard !authority.isEmpty, !authority.contains("@") else { return nil }
        let pieces = authority.split(separator: ":", omittingEmptySubsequences: false)
        guard pieces.count <= 2 else { return nil }
        let host = String(pieces[0]).lowercased()
        guard !host.isEmpty, host.count <= 253,
              host.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "." || $0 == "-" }),
              !host.hasPrefix("."), !host.hasPrefix("-") else { return nil }
        // Something that looks numeric must be a real dotted quad, so "10.0.0.300" is refused.
        if host.allSatisfy({ $0.isNumber || $0 == "." }) && IPv4(host) == nil { return nil }
        var port: UInt16 = scheme == "https" ? 443 : 80
        if pieces.count == 2 {
            guard let p = UInt16(pieces[1]), p > 0 else { return nil }
            port = p
        }
        self.scheme = scheme
        self.host = host
        self.port = port
        self.path = path
    }
}
