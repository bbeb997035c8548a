// The one error type of the controller client. Every case names what failed
// and where, so the console and the log show one line that a person can act on.

import OutpostHTTP
import OutpostPlatform

public enum FleetError: Error, CustomStringConvertible, Sendable {
    /// A file or directory on PERSIST or CONFIG could not be used.
    case system(SystemError)
    /// CONFIG lacks something the client needs, or holds it in a bad form.
    case configuration(item: String, reason: String)
    /// Key or certificate work in OpenSSL failed.
    case identity(step: String, detail: String)
    /// The controller could not be reached (connect, TLS, timeouts).
    case transport(endpoint: String, HTTPError)
    /// The controller answered with a status the call cannot use.
    case status(endpoint: String, code: Int, detail: String)
    /// A response body (or a stored file) did not decode.
    case malformed(what: String, detail: String)
    /// gzip failed (zlib's return code).
    case compression(detail: String)

    public var description: String {
        switch self {
        case .system(let error): return error.description
        case .configuration(let item, let reason): return "fleet configuration: \(item): \(reason)"
        case .identity(let step, let detail): return "device identity: \(step): \(detail)"
        case .transport(let endpoint, let error): return "controller \(endpoint): \(error)"
        case .status(let endpoint, let code, let detail):
            return "controller \(endpoint): HTTP \(code)" + (detail.isEmpty ? "" : ": \(detail)")
        case .malformed(let what, let detail): return "\(what) is malformed: \(detail)"
        case .compression(let detail): return "gzip: \(detail)"
        }
    }

    /// True when the controller answered at all (a 503 during its upgrade
    /// included): the update test window counts it as reachable.
    public var controllerAnswered: Bool {
        if case .status = self { return true }
        return false
    }
}
