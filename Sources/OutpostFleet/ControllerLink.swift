// How requests reach the controller: over one of the ports the network
// manager offers (each socket bound to its port, through the port's proxy
// when it has one), rotating to the next port when one fails, and
// remembering the last port that worked.
//
//   routes() ──▶ [eth0, wlan0]  ──▶ try preferred ──fail──▶ try next ──▶ ...
//
// One request per connection (OutpostHTTP closes after each); a call that
// fails on every route throws, and the caller backs off.

import OutpostHTTP
import OutpostPlatform
import OutpostProto
import Synchronization

/// One way out to the controller: a port to bind to and its proxy, if any.
public struct ControllerRoute: Sendable, Equatable {
    /// The interface to bind (SO_BINDTODEVICE); nil lets routing choose.
    public var device: String?
    /// An http:// proxy for this port (from its configuration or its PAC).
    public var proxy: HTTPURL?

    public init(device: String?, proxy: HTTPURL? = nil) {
        self.device = device
        self.proxy = proxy
    }

    /// No binding, no proxy: the kernel's routing decides.
    public static let direct = ControllerRoute(device: nil)
}

final class ControllerLink: Sendable {
    struct Answer {
        var status: Int
        var body: [UInt8]
    }

    let baseURL: HTTPURL
    private let routes: @Sendable () -> [ControllerRoute]
    private let preferred = Mutex<ControllerRoute?>(nil)
    /// When a call last got any HTTP answer (503 included).
    private let lastAnswer = Mutex<MonotonicClock.Instant?>(nil)
    let connectTimeout: Duration
    let callTimeout: Duration

    init(baseURL: HTTPURL, routes: @escaping @Sendable () -> [ControllerRoute],
         connectTimeout: Duration = .seconds(10), callTimeout: Duration = .seconds(60)) {
        self.baseURL = baseURL
        self.routes = routes
        self.connectTimeout = connectTimeout
        self.callTimeout = callTimeout
    }

    var lastAnswered: MonotonicClock.Instant? { lastAnswer.withLock { $0 } }
    var currentRoute: ControllerRoute? { preferred.withLock { $0 } }

    /// The routes in the order to try: the one that worked last first, then
    /// the rest as offered. None offered means direct.
    func orderedRoutes() -> [ControllerRoute] {
        var offered = routes()
        if offered.isEmpty { offered = [.direct] }
        if let last = preferred.withLock({ $0 }), let index = offered.firstIndex(of: last) {
            offered.insert(offered.remove(at: index), at: 0)
        }
        return offered
    }

    /// Sends one request and reads the whole answer (at most `limit` bytes).
    /// Any HTTP status is an answer; only transport failures move on to the
    /// next route. When all fail, the first route's error is thrown: it is the
    /// one that worked last, so its failure says the most.
    func call(_ path: String, method: String = "POST", body: [UInt8] = [], headers: [(String, String)] = [],
              tls: TLSContext, limit: Int = 4 << 20) throws(FleetError) -> Answer {
        var url = baseURL
        url.path = path
        var request = HTTPRequest(url, method: method, headers: [("Content-Type", APIPath.contentType), ("Accept", APIPath.contentType)] + headers,
                                  body: body)
        request.method = method
        var firstError: HTTPError?
        for route in orderedRoutes() {
            var options = HTTPOptions()
            options.device = route.device
            options.proxy = route.proxy
            options.tls = tls
            options.connectTimeout = connectTimeout
            options.idleTimeout = connectTimeout
            options.deadline = Deadline(after: callTimeout)
            do {
                let response = try HTTPClient.send(request, options: options)
                let bytes = try response.readAll(limit: limit)
                preferred.withLock { $0 = route }
                lastAnswer.withLock { $0 = MonotonicClock.now() }
                return Answer(status: response.status, body: bytes)
            } catch {
                if firstError == nil { firstError = error }
            }
        }
        throw .transport(endpoint: path, firstError ?? .closed(target: baseURL.description, step: "no route"))
    }
}

/// The API paths (proto/outpost/api/v1/register.proto lists them).
enum APIPath {
    static let prefix = "/api/v1/edgedevice/"
    static let register = prefix + "register"
    static let ping = prefix + "ping"
    static let config = prefix + "config"
    static let info = prefix + "info"
    static let metrics = prefix + "metrics"
    static let logs = prefix + "logs"
    static let attestActivate = prefix + "attest/activate"
    static let attestNonce = prefix + "attest/nonce"
    static let attestQuote = prefix + "attest/quote"
    static let contentType = "application/x-proto-binary"
}
