// The one URL type on the device: http:// and https:// with a host (name,
// IPv4 or [IPv6]), an optional port and a path. Downloads, probes, proxies
// and PAC files all use it. Anything else is refused with the reason, before
// a socket is opened; host names are lower-cased (DNS is case-insensitive) so
// equal URLs compare equal.

public struct HTTPURL: Equatable, Sendable, CustomStringConvertible {
    public enum Scheme: String, Sendable { case http, https }

    public var scheme: Scheme
    /// Without brackets for IPv6 literals.
    public var host: String
    public var port: Int
    /// Path and query, always starting with "/".
    public var path: String

    public var description: String { "\(scheme.rawValue)://\(authority)\(path)" }

    /// host[:port] as a Host header or CONNECT target writes it.
    public var authority: String {
        let h = host.contains(":") ? "[\(host)]" : host
        return port == Self.defaultPort(scheme) ? h : "\(h):\(port)"
    }

    /// host:port, always with the port (CONNECT needs it).
    public var hostPort: String { (host.contains(":") ? "[\(host)]" : host) + ":\(port)" }

    public static func defaultPort(_ scheme: Scheme) -> Int { scheme == .https ? 443 : 80 }

    public init(_ text: String) throws(HTTPError) {
        guard text.utf8.count <= 2048 else { throw .badURL(String(text.prefix(60)) + "...", reason: "longer than 2048 bytes") }
        guard let colon = text.firstIndex(of: ":"), text[colon...].hasPrefix("://") else { throw .badURL(text, reason: "no scheme") }
        guard let scheme = Scheme(rawValue: text[..<colon].lowercased()) else {
            throw .badURL(text, reason: "scheme '\(text[..<colon])' is not http or https")
        }
        let rest = text[text.index(colon, offsetBy: 3)...]
        let authority = rest.prefix { $0 != "/" && $0 != "?" && $0 != "#" }
        var path = String(rest.dropFirst(authority.count).prefix { $0 != "#" })
        if path.isEmpty { path = "/" } else if path.first == "?" { path = "/" + path }
        guard !authority.isEmpty else { throw .badURL(text, reason: "no host") }
        guard !authority.contains("@") else { throw .badURL(text, reason: "credentials in URLs are not supported") }
        var host: Substring
        var portText: Substring?
        let bracketed = authority.first == "["
        if bracketed {
            guard let close = authority.firstIndex(of: "]") else { throw .badURL(text, reason: "unclosed '[' in the host") }
            host = authority[authority.index(after: authority.startIndex)..<close]
            let after = authority[authority.index(after: close)...]
            if !after.isEmpty {
                guard after.first == ":" else { throw .badURL(text, reason: "junk after ']'") }
                portText = after.dropFirst()
            }
        } else if let colon = authority.lastIndex(of: ":") {
            host = authority[..<colon]
            portText = authority[authority.index(after: colon)...]
        } else {
            host = authority
        }
        guard !host.isEmpty else { throw .badURL(text, reason: "no host") }
        guard host.allSatisfy({ $0.isASCII && !$0.isWhitespace }) else { throw .badURL(text, reason: "the host has spaces or non-ASCII") }
        if bracketed {
            guard host.contains(":"), host.allSatisfy({ $0.isHexDigit || $0 == ":" || $0 == "." }) else {
                throw .badURL(text, reason: "'[\(host)]' is not an IPv6 address")
            }
        } else {
            guard host.utf8.count <= 253, host.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "." || $0 == "-" }),
                  host.first != ".", host.first != "-" else {
                throw .badURL(text, reason: "'\(host)' is not a host name or IPv4 address")
            }
            // Something that looks numeric must be a real dotted quad, so 10.0.0.300 is refused.
            if host.allSatisfy({ $0.isNumber || $0 == "." }) && !Self.isDottedQuad(host) {
                throw .badURL(text, reason: "'\(host)' is not an IPv4 address")
            }
        }
        var port = Self.defaultPort(scheme)
        if let portText {
            guard let p = Int(portText), (1...65535).contains(p) else { throw .badURL(text, reason: "port '\(portText)' is not 1...65535") }
            port = p
        }
        guard path.allSatisfy({ $0.isASCII && $0 != " " && $0 != "\r" && $0 != "\n" }) else {
            throw .badURL(text, reason: "the path has spaces, line breaks or non-ASCII")
        }
        self.scheme = scheme
        self.host = host.lowercased()
        self.port = port
        self.path = path
    }

    /// Four decimal octets 0...255, nothing else.
    static func isDottedQuad(_ text: Substring) -> Bool {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts.allSatisfy { !$0.isEmpty && $0.count <= 3 && UInt8($0) != nil }
    }
}
