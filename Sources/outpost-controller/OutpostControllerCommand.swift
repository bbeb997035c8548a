import ArgumentParser
import Foundation
import Logging
import OutpostController

// outpost-controller: the reference fleet controller. `init` makes a fleet,
// `serve` runs it, everything else talks to a running `serve` through its
// admin socket (DIR/admin.sock, owner only).

@main
struct OutpostControllerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "outpost-controller",
        abstract: "The Outpost fleet controller: device API over mutual TLS, admin over a local socket.",
        discussion: """
        Start with `outpost-controller init DIR --host HOST`, build images with `outpost image build --config DIR/config`, \
        then `outpost-controller serve --data DIR`. The device and onboard commands talk to the running controller \
        through DIR/admin.sock (mode 0600: the directory's owner is the administrator).
        """,
        subcommands: [InitCommand.self, ServeCommand.self, DeviceCommand.self, RolloutCommand.self, OnboardCommand.self, BundleCommand.self, FirmwareCommand.self, EKCACommand.self, BenchCommand.self])

    /// The project's exit codes, as `outpost` and `outpostd` use them: 0 ok (and help), 1 a
    /// failure (one line, from `oneLine`), 2 a usage error (ArgumentParser's default is 64).
    static func main() async {
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch let code as ExitCode {
            Foundation.exit(code.rawValue)
        } catch {
            let code = exitCode(for: error)
            if code == .success {
                print(fullMessage(for: error))
                Foundation.exit(0)
            }
            FileHandle.standardError.write(Data("outpost-controller: \(message(for: error))\n".utf8))
            if code == .validationFailure {
                FileHandle.standardError.write(Data("See 'outpost-controller --help'.\n".utf8))
                Foundation.exit(2)
            }
            Foundation.exit(code.rawValue)
        }
    }
}

/// Runs `body`; a ControllerError (or any other) is one line on stderr and exit 1.
func oneLine(_ body: () async throws -> Void) async throws {
    do { try await body() } catch let e as ControllerError {
        FileHandle.standardError.write(Data("outpost-controller: error: \(e.description)\n".utf8))
        throw ExitCode(1)
    } catch let e as ExitCode {
        throw e
    } catch {
        FileHandle.standardError.write(Data("outpost-controller: error: \(error)\n".utf8))
        throw ExitCode(1)
    }
}

struct DataOption: ParsableArguments {
    @Option(name: .long, help: "The controller's data directory (made by `init`).")
    var data: String = ProcessInfo.processInfo.environment["OUTPOST_CONTROLLER_DATA"] ?? "."

    @Option(name: .long, help: ArgumentHelp(
        "The admin socket (default DIR/admin.sock); replicas of `serve` sharing one data directory each need their own.",
        valueName: "path"))
    var adminSocket: String?

    var dir: DataDirectory { DataDirectory(path: data) }
    var socketPath: String { adminSocket.map { DataDirectory(path: $0).path } ?? dir.adminSocket }
    var admin: AdminClient { AdminClient(socketPath: socketPath) }
}

func printJSON(_ v: Any) {
    let d = (try? JSONSerialization.data(withJSONObject: v, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes, .fragmentsAllowed])) ?? Data()
    print(String(decoding: d, as: UTF8.self))
}

struct InitCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init",
        abstract: "Create a fleet: controller CA, server certificate, onboarding certificate and a CONFIG directory.",
        discussion: """
        Writes DIR/config/ (controller-url, root-ca.pem, onboard.cert.pem, onboard.key.pem, network.json) for \
        `outpost image build --config DIR/config`. The onboarding certificate is allowed for any serial unless \
        --no-allow-any-serial is given (then use `onboard allow`).
        """)

    @Argument(help: "The data directory to create.") var directory: String
    @Option(name: .customLong("host"), help: "A name or address devices reach the controller at (repeatable; the first goes into controller-url).")
    var hosts: [String] = []
    @Option(help: "The TCP port devices connect to.") var port: Int = 8443
    @Option(help: "A directory of bundle signing public keys (e.g. out/keys) to trust for `set-os --bundle`.") var trust: String?
    @Flag(help: "Do not allow the new onboarding certificate for every serial.") var noAllowAnySerial = false

    func run() async throws {
        try await oneLine {
            let dir = DataDirectory(path: directory)
            try await ControllerInit.run(dir, .init(hosts: hosts, port: port, trustFrom: trust, allowAnySerial: !noAllowAnySerial))
            let url = try dir.loadSettings().url
            print("created \(dir.path)")
            print("  controller URL  \(url)")
            print("  CONFIG          \(dir.configDir)   (outpost image build --config \(dir.configDir))")
            print("  trust anchors   \(dir.trustDir)\(trust == nil ? "   (empty: copy the fleet's *.pub.pem here for set-os --bundle)" : "")")
            print("next: outpost-controller serve --data \(dir.path)")
        }
    }
}

struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve the device API (mutual TLS) and the admin socket until SIGTERM or SIGINT.")

    @OptionGroup var data: DataOption
    @Option(help: "ADDR:PORT to listen on (default 0.0.0.0 and the port of controller-url).") var listen: String?
    @Option(help: ArgumentHelp(
        "Keep the fleet in PostgreSQL instead of DIR/fleet.sqlite: postgres://USER[:PASSWORD]@HOST[:PORT]/DB, or postgres://USER@/DB?host=/run/postgresql for a UNIX socket; ?sslmode=require for TLS.",
        valueName: "url"))
    var database: String?
    @Option(help: "Log level: trace, debug, info, notice, warning, error.") var logLevel: String = "info"
    @Option(help: ArgumentHelp("Serve Prometheus metrics (requests, latency, devices online, rollout progress, database pool) at http://ADDR:PORT/metrics; off unless given.",
                               valueName: "addr:port"))
    var metricsListen: String?
    @Option(help: "How often this process advances rollouts (500ms, 5s, …); one replica, the database lease's holder, acts.")
    var rolloutInterval = "5s"

    func run() async throws {
        try await oneLine {
            let store = try StoreLocation(database: database, dir: data.dir)
            let settings = try data.dir.loadSettings()
            var opts = try ControllerServer.Options.parse(listen: listen ?? "0.0.0.0:\(settings.port)")
            opts.adminSocket = data.socketPath
            let tick = try Rollouts.parseDuration(rolloutInterval, what: "--rollout-interval")
            guard tick >= 100 else { throw ControllerError.invalidInput("--rollout-interval must be at least 100ms") }
            opts.rolloutTick = .milliseconds(tick)
            if let metricsListen {
                let m = try ControllerServer.Options.parse(listen: metricsListen, what: "--metrics-listen")
                opts.metricsHost = m.host
                opts.metricsPort = m.port
            }
            guard let level = Logger.Level(rawValue: logLevel) else { throw ControllerError.invalidInput("--log-level '\(logLevel)' is not a level") }
            LoggingSystem.bootstrap { label in
                var h = StreamLogHandler.standardError(label: label)
                h.logLevel = level
                return h
            }
            try await ControllerServer.run(data.dir, opts, store: store, logger: Logger(label: "outpost-controller"))
        }
    }
}
