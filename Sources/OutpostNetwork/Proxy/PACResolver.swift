import OutpostHTTP
import Synchronization

/// Which proxy a port's traffic to a URL takes: the port's static `proxy`, or the first
/// route its PAC file gives for that URL. The PAC file is fetched through the port itself
/// (pinned, direct), parsed once and kept for `refresh`; a PAC that cannot be fetched or is
/// outside the supported subset makes the probe fail with that reason, so the console report
/// shows it instead of the device guessing a route.
final class PACResolver: Sendable {
    private let refresh: Duration
    private let cache = Mutex([String: (fetched: ContinuousClock.Instant, script: PACScript)]())

    init(refresh: Duration = .seconds(300)) { self.refresh = refresh }

    /// nil means DIRECT.
    func proxy(for port: PortConfig, url: HTTPURL, tls: TLSContext?, timeout: Duration) throws(ProbeError) -> HTTPURL? {
        if let proxy = port.proxy { return proxy }
        guard let pac = port.pac else { return nil }
        let script = try script(for: port.name, pac: pac, tls: tls, timeout: timeout)
        let routes: [PACRoute]
        do { routes = try script.routes(url: url.description, host: url.host) } catch { throw .pac(error.description) }
        switch routes.first {
        case .proxy(let host, let port)?:
            guard let proxy = try? HTTPURL("http://\(host):\(port)/"), proxy.isIPv4OrName else { throw .pac("pac: proxy '\(host):\(port)' is not usable") }
            return proxy
        case .direct?, nil:
            return nil
        }
    }

    private func script(for name: String, pac: HTTPURL, tls: TLSContext?, timeout: Duration) throws(ProbeError) -> PACScript {
        if let hit = cache.withLock({ $0[name] }), hit.fetched.duration(to: .now) < refresh { return hit.script }
        let text: String
        do { text = try HTTPProbe.get(pac, device: name, tls: tls, timeout: timeout) } catch {
            throw .pac("pac: cannot fetch \(pac): \(error.description.dropPrefix("probe: "))")
        }
        do {
            let script = try PACScript(source: text)
            cache.withLock { $0[name] = (.now, script) }
            return script
        } catch {
            throw .pac(error.description)
        }
    }
}

extension String {
    fileprivate func dropPrefix(_ prefix: String) -> String { hasPrefix(prefix) ? String(dropFirst(prefix.count)) : self }
}
