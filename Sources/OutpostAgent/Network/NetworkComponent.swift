// The network manager (OutpostNetwork) as one of PID 1's components. The
// service runs its own threads (netlink events, DHCP clients, probes); this
// component starts it, reports changes of the active port on the console,
// and, when no port has been usable for 30 s (then every minute), prints the connectivity
// report a technician at the device needs: per port carrier, address,
// gateway, DNS, proxy and the last test error.

#if canImport(Glibc)
import Glibc
#endif
import OutpostHTTP
import OutpostNetwork
import OutpostPlatform
import OutpostEarlyBoot

enum NetworkComponent {
    /// Where the service keeps its inputs and outputs on the device.
    static let bootstrapConfig = "/config/network.json"
    static let persistDirectory = "network"
    /// /etc/resolv.conf on the read-only root is a link to this file.
    static let resolvConf = "/run/outpost/resolv.conf"
    /// How long without a usable port before the console report starts, and its period.
    static let reportAfterMilliseconds: Int64 = 30_000
    static let reportEveryMilliseconds: Int64 = 60_000

    /// The controller's CA from CONFIG: https:// probe URLs (the controller) are checked against it.
    static let controllerCA = "/config/root-ca.pem"

    static func service(persistMount: String?) -> NetworkService {
        let state = persistMount.map { $0 + "/" + persistDirectory } ?? "/run/outpost/network"
        var options = NetworkService.Options()
        do {
            options.probeTLS = try TLSContext(caFiles: Sys.exists(controllerCA) ? [controllerCA] : [], systemDefaults: true)
        } catch {
            Console.line("warning: network: \(error); https probes use the system store only")
        }
        return NetworkService(configPath: bootstrapConfig, stateDirectory: state, resolvConfPath: resolvConf, options: options)
    }

    /// `changed` is told when the active port or the controller's ports change (the fleet client's info).
    static func spec(_ service: NetworkService, changed: @escaping @Sendable () -> Void = {}) -> ComponentSpec {
        ComponentSpec(name: "network", livenessDeadlineMilliseconds: 30_000, body: .task { context in
            try? Sys.mkdir("/run/outpost", 0o755)
            try? Sys.mkdir(service.stateDirectory, 0o700)
            try service.start()
            defer { service.stop() }
            try context.beat()
            var reported: String?? = .none
            var unusableSince: Int64? = MonotonicClock.now().milliseconds
            var lastReport: Int64 = 0
            var lastPorts: [String] = []
            while context.sleep(for: .milliseconds(1000)) {
                guard service.isHealthy else { throw NetworkComponentError.stopped }
                try context.beat()
                let active = service.activePort
                let ports = service.controllerPorts
                if reported != .some(active) || ports != lastPorts {
                    lastPorts = ports
                    changed()
                }
                // Boot starts with no port; that is news only once a port was active (or after 30 s, below).
                if reported != .some(active) && !(reported == nil && active == nil) {
                    if let active {
                        Console.line("network: active port \(active)" + (reported.flatMap { $0 }.map { " (was \($0))" } ?? ""))
                    } else {
                        Console.line("network: no usable port" + (reported.flatMap { $0 }.map { " (was \($0))" } ?? ""))
                    }
                    reported = .some(active)
                }
                let now = MonotonicClock.now().milliseconds
                if active != nil {
                    unusableSince = nil
                } else {
                    let since = unusableSince ?? now
                    unusableSince = since
                    if now - since >= reportAfterMilliseconds && now - lastReport >= reportEveryMilliseconds {
                        lastReport = now
                        for line in service.connectivityReport() { Console.line(line.hasPrefix("network:") ? line : "network: " + line) }
                    }
                }
            }
        })
    }
}

enum NetworkComponentError: Error, CustomStringConvertible {
    case stopped
    var description: String { "the network service's threads stopped" }
}
