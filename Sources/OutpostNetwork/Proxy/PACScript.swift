// Proxy auto-configuration (PAC) for enterprise ports. A PAC file is
// JavaScript, and the device has no JavaScript engine; what sites actually
// deploy is a small, regular subset, and that subset is interpreted here:
//
//   function FindProxyForURL(url, host) {
//       var local = "DIRECT";                                // var, string concatenation (+)
//       if (isPlainHostName(host) || dnsDomainIs(host, ".corp.example")) return local;
//       if (isInNet(host, "10.0.0.0", "255.0.0.0")) { return "DIRECT"; } else return "PROXY p1:3128; PROXY p2:3128; DIRECT";
//   }
//
// Statements: function, var, if/else, return, blocks. Expressions: string
// literals, url/host/variables, + on strings, ==, !=, !, &&, ||, parentheses,
// and the PAC helpers shExpMatch, dnsDomainIs, isPlainHostName,
// localHostOrDomainIs, isInNet (literal addresses only: no DNS lookups on a
// device that may have none), dnsDomainLevels. Anything else is a one-line
// error naming the line, never a guess: a proxy chosen by a misread script
// would be worse than a clear "unsupported".

/// Why a PAC file was refused or could not be evaluated; carries the line.
public enum PACError: Error, Equatable, CustomStringConvertible {
    case syntax(line: Int, detail: String)
    case unsupported(line: Int, what: String)
    case noFunction
    case evaluation(String)
    case badResult(String)

    public var description: String {
        switch self {
        case let .syntax(line, d): return "pac: line \(line): \(d)"
        case let .unsupported(line, what): return "pac: line \(line): \(what) is not supported (no JavaScript engine on the device)"
        case .noFunction: return "pac: no function FindProxyForURL(url, host)"
        case let .evaluation(d): return "pac: \(d)"
        case let .badResult(r): return "pac: FindProxyForURL returned '\(r.prefix(80))', not PROXY host:port or DIRECT"
        }
    }
}

/// One choice of a PAC result, in order of preference.
public enum PACRoute: Equatable, Sendable {
    case direct
    case proxy(host: String, port: Int)
}

/// A parsed PAC script, ready to evaluate for any URL.
public struct PACScript: Sendable {
    indirect enum Expr: Sendable {
        case string(String)
        case variable(String, line: Int)
        case call(String, [Expr], line: Int)
        case not(Expr)
        case binary(String, Expr, Expr)
    }
    indirect enum Stmt: Sendable {
        case variable(String, Expr)
        case assign(String, Expr, line: Int)
        case ifElse(Expr, Stmt, Stmt?)
        case returns(Expr)
        case block([Stmt])
    }

    let parameters: [String]
    let body: [Stmt]

    public init(source: String) throws(PACError) {
        guard source.utf8.count <= 256 << 10 else { throw .syntax(line: 1, detail: "larger than 256 KiB") }
        var parser = Parser(tokens: try Lexer.tokens(source))
        (parameters, body) = try parser.program()
    }

    /// The routes for `url` (whose host is `host`), most preferred first.
    public func routes(url: String, host: String) throws(PACError) -> [PACRoute] {
        var variables: [String: String] = [:]
        if parameters.count > 0 { variables[parameters[0]] = url }
        if parameters.count > 1 { variables[parameters[1]] = host }
        var steps = 0
        guard let result = try run(body, &variables, &steps) else { throw .evaluation("FindProxyForURL returned nothing") }
        return try Self.parseResult(result)
    }

    /// "PROXY a:1; DIRECT" → [.proxy(a, 1), .direct]. SOCKS and HTTPS entries are not supported.
    static func parseResult(_ text: String) throws(PACError) -> [PACRoute] {
        var routes: [PACRoute] = []
        for entry in text.split(separator: ";") {
            let words = entry.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard let kind = words.first?.uppercased() else { continue }
            switch (kind, words.count) {
            case ("DIRECT", 1): routes.append(.direct)
            case ("PROXY", 2):
                let hostPort = words[1]
                guard let colon = hostPort.lastIndex(of: ":"), let port = Int(hostPort[hostPort.index(after: colon)...]),
                      (1...65535).contains(port), colon > hostPort.startIndex else { throw .badResult(text) }
                routes.append(.proxy(host: String(hostPort[..<colon]), port: port))
            default: throw .badResult(text)
            }
        }
        guard !routes.isEmpty else { throw .badResult(text) }
        return routes
    }

    // MARK: evaluation

    private func run(_ statements: [Stmt], _ vars: inout [String: String], _ steps: inout Int) throws(PACError) -> String? {
        for statement in statements {
            steps += 1
            guard steps < 100_000 else { throw .evaluation("script too long to evaluate") }
            switch statement {
            case let .variable(name, value): vars[name] = try eval(value, vars)
            case let .assign(name, value, line):
                guard vars[name] != nil else { throw .syntax(line: line, detail: "assignment to undeclared '\(name)'") }
                vars[name] = try eval(value, vars)
            case let .ifElse(condition, then, otherwise):
                if truthy(try eval(condition, vars)) {
                    if let r = try run([then], &vars, &steps) { return r }
                } else if let otherwise {
                    if let r = try run([otherwise], &vars, &steps) { return r }
                }
            case let .returns(value): return try eval(value, vars)
            case let .block(inner): if let r = try run(inner, &vars, &steps) { return r }
            }
        }
        return nil
    }

    // Values are strings; booleans are "true" / "false" as JavaScript would print them.
    private func truthy(_ s: String) -> Bool { s == "true" }
    private func bool(_ b: Bool) -> String { b ? "true" : "false" }

    private func eval(_ e: Expr, _ vars: [String: String]) throws(PACError) -> String {
        switch e {
        case .string(let s): return s
        case let .variable(name, line):
            guard let v = vars[name] else { throw .unsupported(line: line, what: "the identifier '\(name)'") }
            return v
        case .not(let inner): return bool(!truthy(try eval(inner, vars)))
        case let .binary(op, l, r):
            switch op {
            case "&&": return truthy(try eval(l, vars)) ? bool(truthy(try eval(r, vars))) : "false"
            case "||": return truthy(try eval(l, vars)) ? "true" : bool(truthy(try eval(r, vars)))
            case "==": return bool(try eval(l, vars) == eval(r, vars))
            case "!=": return bool(try eval(l, vars) != eval(r, vars))
            default: return try eval(l, vars) + eval(r, vars)   // "+"
            }
        case let .call(name, arguments, line):
            var a: [String] = []
            for argument in arguments { a.append(try eval(argument, vars)) }
            return try call(name, a, line: line)
        }
    }

    private func call(_ name: String, _ a: [String], line: Int) throws(PACError) -> String {
        func need(_ n: Int) throws(PACError) {
            guard a.count == n else { throw .syntax(line: line, detail: "\(name) takes \(n) argument\(n == 1 ? "" : "s")") }
        }
        switch name {
        case "isPlainHostName":
            try need(1); return bool(!a[0].contains("."))
        case "dnsDomainIs":
            try need(2); return bool(a[0].lowercased().hasSuffix(a[1].lowercased()))
        case "localHostOrDomainIs":
            try need(2)
            let host = a[0].lowercased(), full = a[1].lowercased()
            return bool(host == full || (!host.contains(".") && full.hasPrefix(host + ".")))
        case "dnsDomainLevels":
            try need(1); return String(a[0].filter { $0 == "." }.count)
        case "shExpMatch":
            try need(2); return bool(Self.globMatch(Array(a[0].utf8), Array(a[1].utf8)))
        case "isInNet":
            try need(3)
            guard let pattern = IPv4(a[1]), let mask = IPv4(a[2]) else {
                throw .syntax(line: line, detail: "isInNet needs a dotted-quad pattern and mask")
            }
            // Only literal addresses: a name would need DNS, which a device in trouble may not have.
            guard let host = IPv4(a[0]) else { return "false" }
            return bool(host.value & mask.value == pattern.value & mask.value)
        default:
            throw .unsupported(line: line, what: "the function '\(name)'")
        }
    }

    /// Shell glob: * any run, ? one character, everything else literal.
    static func globMatch(_ s: [UInt8], _ p: [UInt8]) -> Bool {
        var si = 0, pi = 0, star = -1, mark = 0
        while si < s.count {
            if pi < p.count && (p[pi] == UInt8(ascii: "?") || p[pi] == s[si]) {
                si += 1; pi += 1
            } else if pi < p.count && p[pi] == UInt8(ascii: "*") {
                star = pi; mark = si; pi += 1
            } else if star >= 0 {
                pi = star + 1; mark += 1; si = mark
            } else {
                return false
            }
        }
        while pi < p.count && p[pi] == UInt8(ascii: "*") { pi += 1 }
        return pi == p.count
    }
}

// MARK: lexer

struct Token: Equatable, Sendable {
    enum Kind: Equatable, Sendable { case identifier, string, punct, number, end }
    var kind: Kind
    var text: String
    var line: Int
}

enum Lexer {
    static func tokens(_ source: String) throws(PACError) -> [Token] {
        let s = Array(source.utf8)
        var out: [Token] = []
        var i = 0, line = 1
        func at(_ k: Int) -> UInt8 { k < s.count ? s[k] : 0 }
        while i < s.count {
            let c = s[i]
            if c == 10 { line += 1; i += 1; continue }
            if c == 32 || c == 9 || c == 13 { i += 1; continue }
            if c == UInt8(ascii: "/") && at(i + 1) == UInt8(ascii: "/") {
                while i < s.count && s[i] != 10 { i += 1 }
                continue
            }
            if c == UInt8(ascii: "/") && at(i + 1) == UInt8(ascii: "*") {
                i += 2
                while i < s.count && !(s[i] == UInt8(ascii: "*") && at(i + 1) == UInt8(ascii: "/")) {
                    if s[i] == 10 { line += 1 }
                    i += 1
                }
                guard i < s.count else { throw .syntax(line: line, detail: "unterminated comment") }
                i += 2
                continue
            }
            if c == UInt8(ascii: "\"") || c == UInt8(ascii: "'") {
                var j = i + 1, text: [UInt8] = []
                while j < s.count && s[j] != c {
                    if s[j] == 10 { throw .syntax(line: line, detail: "line break in a string") }
                    if s[j] == UInt8(ascii: "\\") {
                        j += 1
                        guard j < s.count else { break }
                    }
                    text.append(s[j])
                    j += 1
                }
                guard j < s.count else { throw .syntax(line: line, detail: "unterminated string") }
                out.append(Token(kind: .string, text: String(decoding: text, as: UTF8.self), line: line))
                i = j + 1
                continue
            }
            if isIdentifierStart(c) {
                var j = i
                while j < s.count && (isIdentifierStart(s[j]) || (s[j] >= 48 && s[j] <= 57)) { j += 1 }
                out.append(Token(kind: .identifier, text: String(decoding: s[i..<j], as: UTF8.self), line: line))
                i = j
                continue
            }
            if c >= 48 && c <= 57 {
                var j = i
                while j < s.count && s[j] >= 48 && s[j] <= 57 { j += 1 }
                out.append(Token(kind: .number, text: String(decoding: s[i..<j], as: UTF8.self), line: line))
                i = j
                continue
            }
            let two = String(decoding: s[i..<min(i + 2, s.count)], as: UTF8.self)
            if ["&&", "||", "==", "!="].contains(two) {
                // JavaScript's === and !== mean the same as == and != on strings.
                let three = at(i + 2) == UInt8(ascii: "=") && (two == "==" || two == "!=")
                out.append(Token(kind: .punct, text: two, line: line))
                i += three ? 3 : 2
                continue
            }
            guard "(){};,!=+".utf8.contains(c) else {
                throw .unsupported(line: line, what: "the character '\(String(decoding: [c], as: UTF8.self))'")
            }
            out.append(Token(kind: .punct, text: String(decoding: [c], as: UTF8.self), line: line))
            i += 1
        }
        out.append(Token(kind: .end, text: "", line: line))
        return out
    }

    static func isIdentifierStart(_ c: UInt8) -> Bool {
        (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c == UInt8(ascii: "_") || c == UInt8(ascii: "$")
    }
}

// MARK: parser

struct Parser {
    let tokens: [Token]
    var position = 0
    var depth = 0

    init(tokens: [Token]) { self.tokens = tokens }

    var current: Token { tokens[min(position, tokens.count - 1)] }

    mutating func advance() -> Token {
        let t = current
        if position < tokens.count - 1 { position += 1 }
        return t
    }

    mutating func expect(_ text: String) throws(PACError) {
        guard current.text == text, current.kind != .string else {
            throw .syntax(line: current.line, detail: "expected '\(text)', found '\(current.text.prefix(40))'")
        }
        _ = advance()
    }

    mutating func identifier() throws(PACError) -> String {
        guard current.kind == .identifier else { throw .syntax(line: current.line, detail: "expected a name, found '\(current.text.prefix(40))'") }
        return advance().text
    }

    /// The whole file: exactly the function FindProxyForURL (other top-level code is refused).
    mutating func program() throws(PACError) -> ([String], [PACScript.Stmt]) {
        var found: ([String], [PACScript.Stmt])?
        while current.kind != .end {
            guard current.text == "function" else {
                throw .unsupported(line: current.line, what: "top-level code other than function declarations")
            }
            _ = advance()
            let name = try identifier()
            try expect("(")
            var parameters: [String] = []
            while current.text != ")" {
                parameters.append(try identifier())
                if current.text == "," { _ = advance() } else { break }
            }
            try expect(")")
            let body = try block()
            guard name == "FindProxyForURL" else {
                throw .unsupported(line: current.line, what: "the helper function '\(name)'")
            }
            found = (parameters, body)
        }
        guard let found else { throw .noFunction }
        return found
    }

    mutating func block() throws(PACError) -> [PACScript.Stmt] {
        try expect("{")
        var statements: [PACScript.Stmt] = []
        while current.text != "}" {
            guard current.kind != .end else { throw .syntax(line: current.line, detail: "missing '}'") }
            statements.append(try statement())
        }
        _ = advance()
        return statements
    }

    mutating func statement() throws(PACError) -> PACScript.Stmt {
        depth += 1
        defer { depth -= 1 }
        guard depth < 200 else { throw .syntax(line: current.line, detail: "nested too deeply") }
        let line = current.line
        if current.text == "{" && current.kind == .punct { return .block(try block()) }
        if current.text == ";" && current.kind == .punct { _ = advance(); return .block([]) }
        guard current.kind == .identifier else { throw .syntax(line: line, detail: "unexpected '\(current.text.prefix(40))'") }
        switch current.text {
        case "var", "let", "const":
            _ = advance()
            let name = try identifier()
            var value = PACScript.Expr.string("")
            if current.text == "=" { _ = advance(); value = try expression() }
            try endStatement()
            return .variable(name, value)
        case "if":
            _ = advance()
            try expect("(")
            let condition = try expression()
            try expect(")")
            let then = try statement()
            var otherwise: PACScript.Stmt?
            if current.text == "else" && current.kind == .identifier { _ = advance(); otherwise = try statement() }
            return .ifElse(condition, then, otherwise)
        case "return":
            _ = advance()
            let value = try expression()
            try endStatement()
            return .returns(value)
        default:
            let name = try identifier()
            guard current.text == "=" && current.kind == .punct else {
                throw .unsupported(line: line, what: "the statement starting '\(name)'")
            }
            _ = advance()
            let value = try expression()
            try endStatement()
            return .assign(name, value, line: line)
        }
    }

    /// A semicolon, or nothing before '}' (JavaScript inserts it).
    mutating func endStatement() throws(PACError) {
        if current.text == ";" && current.kind == .punct { _ = advance(); return }
        if (current.text == "}" && current.kind == .punct) || current.kind == .end { return }
        throw .syntax(line: current.line, detail: "expected ';', found '\(current.text.prefix(40))'")
    }

    mutating func expression() throws(PACError) -> PACScript.Expr { try binary(level: 0) }

    static let levels: [[String]] = [["||"], ["&&"], ["==", "!="], ["+"]]

    mutating func binary(level: Int) throws(PACError) -> PACScript.Expr {
        guard level < Self.levels.count else { return try unary() }
        var left = try binary(level: level + 1)
        while current.kind == .punct && Self.levels[level].contains(current.text) {
            let op = advance().text
            left = .binary(op, left, try binary(level: level + 1))
        }
        return left
    }

    mutating func unary() throws(PACError) -> PACScript.Expr {
        depth += 1
        defer { depth -= 1 }
        guard depth < 200 else { throw .syntax(line: current.line, detail: "nested too deeply") }
        let t = current
        switch t.kind {
        case .string: _ = advance(); return .string(t.text)
        case .number: _ = advance(); return .string(t.text)
        case .punct where t.text == "!": _ = advance(); return .not(try unary())
        case .punct where t.text == "(":
            _ = advance()
            let inner = try expression()
            try expect(")")
            return inner
        case .identifier:
            _ = advance()
            if t.text == "true" || t.text == "false" { return .string(t.text) }
            guard current.text == "(" && current.kind == .punct else { return .variable(t.text, line: t.line) }
            _ = advance()
            var arguments: [PACScript.Expr] = []
            while !(current.text == ")" && current.kind == .punct) {
                arguments.append(try expression())
                if current.text == "," && current.kind == .punct { _ = advance() } else { break }
            }
            try expect(")")
            return .call(t.text, arguments, line: t.line)
        default:
            throw .syntax(line: t.line, detail: "unexpected '\(t.text.prefix(40))'")
        }
    }
}
