import OutpostTestSupport
import Testing
@testable import OutpostNetwork

/// The PAC subset: what sites deploy is evaluated exactly; anything else is a one-line error
/// naming the line, and no input crashes the interpreter.
struct PACTests {
    static let corporate = """
    // Corporate proxy rules
    function FindProxyForURL(url, host) {
        var direct = "DIRECT";
        /* internal names and networks go direct */
        if (isPlainHostName(host) || dnsDomainIs(host, ".corp.example") ||
            localHostOrDomainIs(host, "intranet.corp.example"))
            return direct;
        if (isInNet(host, "10.0.0.0", "255.0.0.0")) { return direct; }
        if (shExpMatch(url, "http://*.updates.example/*") && !(host == "blocked.updates.example"))
            return "PROXY fast.proxy:8080; " + direct;
        else
            return 'PROXY p1.corp.example:3128; PROXY p2.corp.example:3128; DIRECT';
    }
    """

    @Test(arguments: [
        ("https://build/x", "build", [PACRoute.direct]),
        ("https://git.corp.example/", "git.corp.example", [.direct]),
        ("https://10.20.30.40:8443/", "10.20.30.40", [.direct]),
        ("http://eu.updates.example/os.bundle", "eu.updates.example", [.proxy(host: "fast.proxy", port: 8080), .direct]),
        ("http://blocked.updates.example/a", "blocked.updates.example",
         [.proxy(host: "p1.corp.example", port: 3128), .proxy(host: "p2.corp.example", port: 3128), .direct]),
        ("https://controller.example:8443/api", "controller.example",
         [.proxy(host: "p1.corp.example", port: 3128), .proxy(host: "p2.corp.example", port: 3128), .direct]),
    ])
    func aCorporatePACFileChoosesTheRoutesItsAuthorsMeant(_ url: String, _ host: String, _ expected: [PACRoute]) throws {
        let script = try PACScript(source: Self.corporate)
        #expect(try script.routes(url: url, host: host) == expected)
    }

    @Test func shellGlobsMatchLikeShExpMatch() {
        func m(_ s: String, _ p: String) -> Bool { PACScript.globMatch(Array(s.utf8), Array(p.utf8)) }
        #expect(m("http://a.b/c", "http://*/*"))
        #expect(m("abc", "a?c") && !m("abbc", "a?c"))
        #expect(m("", "*") && !m("", "?"))
        #expect(m("x.example.com", "*.example.com") && !m("example.com", "*.example.com"))
    }

    @Test(arguments: [
        ("function FindProxyForURL(url, host) { return dnsResolve(host); }", "line 1: the function 'dnsResolve' is not supported"),
        ("function FindProxyForURL(url, host) {\n  for (;;) {}\n}", "line 2: the statement starting 'for' is not supported"),
        ("var x = 1;", "line 1: top-level code other than function declarations is not supported"),
        ("function other(a) { return 'DIRECT'; }", "line 1: the helper function 'other' is not supported"),
        ("function FindProxyForURL(url, host) { return \"DIRECT; }", "line 1: unterminated string"),
        ("function FindProxyForURL(url, host) {\n\n  return 'SOCKS s:1080';\n}", "not PROXY host:port or DIRECT"),
        ("", "no function FindProxyForURL"),
        ("function FindProxyForURL(url, host) { return 'PROXY nohostport'; }", "not PROXY host:port or DIRECT"),
    ])
    func whatIsNotInTheSubsetIsRefusedNamingTheLine(_ source: String, _ message: String) {
        do {
            let script = try PACScript(source: source)
            _ = try script.routes(url: "http://h/", host: "h")
            Issue.record("accepted: \(source)")
        } catch {
            #expect(error.description.contains(message), "\(error)")
            #expect(!error.description.contains("\n"))
        }
    }

    @Test func randomAndMutatedScriptsEndInAResultOrAnErrorNeverACrash() {
        var rng = SplitMix64.forTest()
        let seed = Array(Self.corporate.utf8)
        let alphabet = Array("(){};,!=+&|\"'/*.abcdefghijklmnopqrstuvwxyz0123456789 \n".utf8)
        var results = 0, errors = 0
        for round in 0..<3000 {
            var bytes = seed
            if round % 3 == 0 {
                bytes = (0..<Int.random(in: 0...300, using: &rng)).map { _ in alphabet.randomElement(using: &rng) ?? 32 }
            } else {
                for _ in 0..<Int.random(in: 1...8, using: &rng) {
                    let i = Int.random(in: 0..<bytes.count, using: &rng)
                    switch Int.random(in: 0..<3, using: &rng) {
                    case 0: bytes[i] = alphabet.randomElement(using: &rng) ?? 32
                    case 1: bytes.remove(at: i)
                    default: bytes.insert(alphabet.randomElement(using: &rng) ?? 32, at: i)
                    }
                    if bytes.isEmpty { break }
                }
            }
            do {
                let script = try PACScript(source: String(decoding: bytes, as: UTF8.self))
                _ = try script.routes(url: "http://eu.updates.example/x", host: "eu.updates.example")
                results += 1
            } catch {
                errors += 1
            }
        }
        #expect(results + errors == 3000)
        #expect(errors > 0 && results > 0, "results \(results), errors \(errors) (seed \(rng.seed))")
    }

    @Test func deeplyNestedInputIsRefusedNotAStackOverflow() {
        let nested = "function FindProxyForURL(url, host) { return " + String(repeating: "(", count: 5000) + "'DIRECT'"
            + String(repeating: ")", count: 5000) + "; }"
        #expect(throws: PACError.self) { try PACScript(source: nested) }
    }
}
