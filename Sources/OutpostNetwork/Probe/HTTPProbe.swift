import OutpostHTTP
import OutpostPlatform

/// Why a connectivity probe failed: the transport's one-line error (DNS, connect, proxy,
/// TLS) or the server's answer, for the console report.
public enum ProbeError: Error, Equatable, CustomStringConvertible {
    case transport(HTTPError)
    case badURL(String)
    case badResponse(status: Int)
    /// The port's PAC file could not be fetched or evaluated (the message starts "pac:").
    case pac(String)

    public var description: String {
        switch self {
        case .transport(.proxy(let p, let line)): return "probe: proxy \(p) refused CONNECT: '\(line)'"
        case .transport(let e): return "probe: \(e)"
        case .badURL(let u): return "probe: '\(u)' is not a usable URL"
        case .badResponse(let status): return "probe: the endpoint answered HTTP \(status)"
        case .pac(let message): return "probe: \(message)"
        }
    }
}

/// A connectivity test through one port: a GET of the probe URL (http or https) over
/// OutpostHTTP, pinned to the interface with SO_BINDTODEVICE so each port is tested on its
/// own whatever the default route says, and tunnelled through the port's HTTP proxy when it
/// has one, as enterprise networks require. One deadline bounds the whole exchange, so a dead
/// path costs at most `timeout`. The request names the port (X-Outpost-Port), so an endpoint
/// can tell which uplink a device is using.
public enum HTTPProbe {
    /// Returns the response body of a 2xx answer (at most 64 KiB).
    public static func get(_ url: HTTPURL, device: String?, proxy: HTTPURL? = nil, tls: TLSContext? = nil,
                           timeout: Duration) throws(ProbeError) -> String {
        var options = HTTPOptions()
        options.proxy = proxy
        options.device = device
        options.tls = tls
        options.connectTimeout = timeout
        options.deadline = Deadline(after: timeout)
        var headers = [("User-Agent", "outpostd-probe")]
        if let device { headers.append(("X-Outpost-Port", device)) }
        do {
            let response = try HTTPClient.send(HTTPRequest(url, headers: headers), options: options)
            let body = try response.readAll(limit: 64 << 10)
            guard (200..<300).contains(response.status) else { throw ProbeError.badResponse(status: response.status) }
            return String(decoding: body, as: UTF8.self)
        } catch let e as HTTPError {
            throw .transport(e)
        } catch let e as ProbeError {
            throw e
        } catch {
            throw .badURL(url.description)
        }
    }
}
