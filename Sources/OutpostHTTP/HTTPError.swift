// Every way a request can fail, with the URL (or proxy) and the step, so the
// one line a technician reads says where it broke: DNS, TCP, proxy, TLS or
// the server's answer.

import OutpostPlatform

public enum HTTPError: Error, Equatable, CustomStringConvertible {
    case badURL(String, reason: String)
    case resolve(host: String, detail: String)
    /// A socket call failed; the error names the call and the URL or proxy.
    case system(SystemError)
    case timeout(step: String, target: String)
    case tls(step: String, target: String, detail: String)
    case proxy(proxy: String, statusLine: String)
    case malformedResponse(target: String, detail: String)
    case closed(target: String, step: String)

    public var description: String {
        switch self {
        case let .badURL(u, why): return "'\(u.flattenedToOneLine)' is not a usable URL: \(why.flattenedToOneLine)"
        case let .resolve(h, d): return "cannot resolve \(h): \(d)"
        case let .system(error): return error.description
        case let .timeout(step, t): return "\(t): timed out during \(step)"
        case let .tls(step, t, d): return "\(t): TLS \(step): \(d)"
        case let .proxy(p, line): return "proxy \(p) refused CONNECT: '\(line)'"
        case let .malformedResponse(t, d): return "\(t): malformed HTTP response: \(d)"
        case let .closed(t, step): return "\(t): connection closed during \(step)"
        }
    }
}

// Array's withUnsafe*Bytes rethrow untyped errors; these keep HTTPError typed.
extension Array where Element == UInt8 {
    mutating func withTypedMutableBytes<R>(_ body: (UnsafeMutableRawBufferPointer) throws(HTTPError) -> R) throws(HTTPError) -> R {
        let result = withUnsafeMutableBytes { raw in Result { () throws(HTTPError) -> R in try body(raw) } }
        return try result.get()
    }

    func withTypedBytes<R>(_ body: (UnsafeRawBufferPointer) throws(HTTPError) -> R) throws(HTTPError) -> R {
        let result = withUnsafeBytes { raw in Result { () throws(HTTPError) -> R in try body(raw) } }
        return try result.get()
    }
}
