import Foundation
import Hummingbird
import HummingbirdTLS
import Logging
import NIOCore
import NIOSSL
import ServiceLifecycle

/// `outpost-controller serve`: the device API on TLS and the admin API on
/// the UNIX socket, over one store, until SIGTERM/SIGINT or cancellation.
public enum ControllerServer {
    public struct Options: Sendable {
        public var host: String
        /// 0: an ephemeral port (tests); the bound port goes to `onRunning`.
        public var port: Int
        /// nil: DIR/admin.sock. Replicas sharing a data directory each need their own.
        public var adminSocket: String?
        /// How often this process pulls other replicas' changes from the store (`Fleet.refresh`).
        public var refreshInterval: Duration
        /// How often the rollout advancer runs; the lease it takes lasts three ticks.
        public var rolloutTick: Duration
        /// Where to serve /metrics (plain HTTP; nil: no metrics port). Port 0: ephemeral (tests).
        public var metricsHost: String?
        public var metricsPort: Int = 0
        public init(host: String, port: Int, adminSocket: String? = nil, refreshInterval: Duration = .milliseconds(500),
                    rolloutTick: Duration = .seconds(5)) {
            self.host = host
            self.port = port
            self.adminSocket = adminSocket
            self.refreshInterval = refreshInterval
            self.rolloutTick = rolloutTick
        }

        /// Parses ADDR:PORT, [IPv6]:PORT or :PORT.
        public static func parse(listen: String, what: String = "--listen") throws(ControllerError) -> Options {
            let bad = ControllerError.invalidInput("\(what) '\(listen)' is not ADDR:PORT")
            guard let colon = listen.lastIndex(of: ":"), let port = Int(listen[listen.index(after: colon)...]),
                  (0...65535).contains(port) else { throw bad }
            var host = String(listen[..<colon])
            if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
            if host.isEmpty { host = "0.0.0.0" }
            return Options(host: host, port: port)
        }
    }

    /// Loads the data directory, opens (and migrates) the store and everything `serve` needs
    /// before a socket is opened, so a bad directory or database is one line and exit 1.
    /// `store` nil: the data directory's SQLite file.
    public static func prepare(_ dir: DataDirectory, store location: StoreLocation? = nil,
                               logger: Logger = Logger(label: "outpost-controller")) async throws -> (Fleet, BundleStore, DataDirectory.Settings) {
        let settings = try dir.loadSettings()
        let store = try await (location ?? .sqlite(path: dir.database)).open(logger: logger)
        let fleet = try await Fleet(store: store, url: settings.url)
        try makeDirectory(dir.bundlesDir, mode: 0o755)
        return (fleet, BundleStore(directory: dir.bundlesDir, trustDirectory: dir.trustDir), settings)
    }

    public static func tlsConfiguration(_ dir: DataDirectory) throws(ControllerError) -> TLSChannelConfiguration {
        let chain: [NIOSSLCertificate]
        let key: NIOSSLPrivateKey
        do {
            chain = try NIOSSLCertificate.fromPEMFile(dir.serverCert)
            key = try NIOSSLPrivateKey(file: dir.serverKey, format: .pem)
        } catch {
            throw .certificate(what: dir.serverCert, reason: "cannot load the server certificate and key (\(error))")
        }
        var tls = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        tls.minimumTLSVersion = .tlsv12
        // A client certificate is required, but devices' certificates are
        // self-made: the chain is not checked here. TLS proves the client
        // holds the certificate's key; the fingerprint then decides who it
        // is (DeviceAPIRoutes), which is how a self-signed identity works.
        tls.certificateVerification = .noHostnameVerification
        tls.trustRoots = .certificates([])
        return TLSChannelConfiguration(tlsConfiguration: tls, customVerificationCallback: { _, promise in
            promise.succeed(.certificateVerified)
        })
    }

    /// `signals`: stop gracefully on SIGTERM/SIGINT (the CLI); tests stop it by cancelling.
    public static func run(_ dir: DataDirectory, _ options: Options, store: StoreLocation? = nil, logger: Logger, signals: Bool = true,
                           onMetricsRunning: @escaping @Sendable (Int) async -> Void = { _ in },
                           onRunning: @escaping @Sendable (Int) async -> Void = { _ in }) async throws {
        let (fleet, bundles, _) = try await prepare(dir, store: store, logger: logger)
        let tls = try tlsConfiguration(dir)

        // Everything this process creates is the owner's only (the socket above all).
        umask(0o077)
        let socketPath = options.adminSocket ?? dir.adminSocket
        var st = stat()
        if lstat(socketPath, &st) == 0 {
            guard (st.st_mode & S_IFMT) == S_IFSOCK else {
                throw ControllerError.dataDirectory(path: dir.path, reason: "\(socketPath) exists and is not a socket")
            }
            unlink(socketPath)
        }

        let metrics = options.metricsHost.map { _ in ControllerMetrics(fleet: fleet) }
        let deviceApp = Application(
            router: DeviceAPIRoutes(fleet: fleet, bundles: bundles, logger: logger, metrics: metrics).router(),
            server: try .tls(.http1(), configuration: tls),
            configuration: .init(address: .hostname(options.host, port: options.port), serverName: nil, backlog: 1024),
            onServerRunning: { ch in
                logger.info("device API on https://\(options.host):\(ch.localAddress?.port ?? 0)")
                await onRunning(ch.localAddress?.port ?? 0)
            },
            logger: logger)
        let adminApp = Application(
            router: AdminRoutes(fleet: fleet, bundles: bundles).router(),
            configuration: .init(address: .unixDomainSocket(path: socketPath), serverName: nil),
            onServerRunning: { _ in
                chmod(socketPath, 0o600)
                logger.info("admin socket \(socketPath) (mode 0600)")
            },
            logger: logger)
        var services: [any Service] = []
        if let metrics, let host = options.metricsHost {
            let router = Router()
            router.get("/metrics") { _, _ -> Response in
                var h = HTTPFields()
                h[.contentType] = "text/plain; version=0.0.4; charset=utf-8"
                return Response(status: .ok, headers: h, body: .init(byteBuffer: ByteBuffer(string: await metrics.render())))
            }
            services.append(Application(
                router: router,
                configuration: .init(address: .hostname(host, port: options.metricsPort), serverName: nil),
                onServerRunning: { ch in
                    logger.info("metrics on http://\(host):\(ch.localAddress?.port ?? 0)/metrics")
                    await onMetricsRunning(ch.localAddress?.port ?? 0)
                },
                logger: logger))
        }
        let advancer = RolloutAdvancer(fleet: fleet, leaseTTLMs: 3 * options.rolloutTick.milliseconds)
        let group = ServiceGroup(configuration: .init(
            services: services + [deviceApp, adminApp,
                       PeriodicService(what: "writing last-seen times", interval: .seconds(5), logger: logger) {
                           try await fleet.flushLastSeen()
                       },
                       PeriodicService(what: "following the store's changes", interval: options.refreshInterval,
                                       logger: logger) { try await fleet.refresh() },
                       PeriodicService(what: "advancing rollouts", interval: options.rolloutTick, logger: logger) {
                           try await advancer.tick()
                       }],
            gracefulShutdownSignals: signals ? [.sigterm, .sigint] : [],
            logger: logger))
        try await group.run()
        try? await fleet.flushLastSeen()
    }
}

/// Work done every interval until graceful shutdown; a failed round is logged and the next one comes.
///
/// The controller runs three: last-seen times are written in one batch every 5 s (a poll answered
/// with 304 stays free of store writes); other replicas' registrations, config and onboarding
/// changes are pulled into memory (`Fleet.refresh`, one single-row read when nothing changed);
/// the rollout advancer ticks (it acts only while this process holds the lease).
struct PeriodicService: Service {
    let what: String
    let interval: Duration
    let logger: Logger
    let work: @Sendable () async throws -> Void

    func run() async throws {
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
            if Task.isCancelled || Task.isShuttingDownGracefully { break }
            do { try await work() } catch { logger.error("\(what): \(error)") }
        }
    }
}

extension Duration {
    var milliseconds: Int64 {
        let (s, atto) = components
        return s * 1000 + atto / 1_000_000_000_000_000
    }
}
