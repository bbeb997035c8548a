import ArgumentParser
import Foundation
import Logging
import OutpostController

struct OnboardCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "onboard",
        abstract: "The onboarding allow-list: which onboarding certificates may enrol which serials.",
        subcommands: [Allow.self, Remove.self, List.self])

    struct Allow: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Allow an onboarding certificate to enrol a serial (or `*` for any).")
        @OptionGroup var data: DataOption
        @Option(help: "The onboarding certificate (PEM file).") var cert: String
        @Option(help: "A serial number, or * for any.") var serial: String
        @Flag(help: "Print JSON.") var json = false
        func run() async throws {
            try await oneLine {
                let pem = try readPEM(cert)
                let v = try data.admin.call("POST", "/onboard/allow", body: ["certPEM": pem, "serial": serial])
                if json { return printJSON(v) }
                print("allowed \(s(v as? [String: Any] ?? [:], "fingerprint").prefix(16))… for serial \(serial)")
            }
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove an onboarding certificate's entries (one serial, or all).")
        @OptionGroup var data: DataOption
        @Option(help: "The onboarding certificate (PEM file).") var cert: String
        @Option(help: "Only this serial.") var serial: String?
        @Flag(help: "Print JSON.") var json = false
        func run() async throws {
            try await oneLine {
                var body: [String: Any] = ["certPEM": try readPEM(cert)]
                if let serial { body["serial"] = serial }
                let v = try data.admin.call("POST", "/onboard/remove", body: body)
                if json { return printJSON(v) }
                print("removed \(s(v as? [String: Any] ?? [:], "removed")) entries")
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The allow-list.")
        @OptionGroup var data: DataOption
        @Flag(help: "Print JSON.") var json = false
        func run() async throws {
            try await oneLine {
                let v = try data.admin.call("GET", "/onboard")
                if json { return printJSON(v) }
                for e in v as? [[String: Any]] ?? [] { print("\(s(e, "fingerprint"))  \(s(e, "serial"))  \(s(e, "note"))") }
            }
        }
    }
}

func readPEM(_ path: String) throws -> String {
    guard let d = FileManager.default.contents(atPath: path) else { throw ControllerError.io(path: path, reason: "cannot read the file") }
    return String(decoding: d, as: UTF8.self)
}

struct BundleCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bundle",
        abstract: "Bundles the controller serves at /api/v1/bundles/NAME.",
        subcommands: [Add.self, List.self])

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Verify a bundle against DIR/trust and serve it.")
        @OptionGroup var data: DataOption
        @Argument(help: "The bundle file.") var file: String
        @Flag(help: "Print JSON.") var json = false
        func run() async throws {
            try await oneLine {
                let v = try data.admin.call("POST", "/bundles", body: ["path": DataDirectory(path: file).path])
                if json { return printJSON(v) }
                let o = v as? [String: Any] ?? [:]
                print("\(s(o, "name")): version \(s(o, "version")), \(s(o, "size")) bytes, signed by \(s(o, "signedBy"))")
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The bundles held.")
        @OptionGroup var data: DataOption
        @Flag(help: "Print JSON.") var json = false
        func run() async throws {
            try await oneLine {
                let v = try data.admin.call("GET", "/bundles")
                if json { return printJSON(v) }
                for b in v as? [[String: Any]] ?? [] { print("\(s(b, "name"))  \(s(b, "size"))") }
            }
        }
    }
}

struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Benchmark tools (bench/controller-throughput.sh): seed a store, simulate polling devices.",
        subcommands: [Seed.self, Poll.self])

    struct Seed: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Write N registered devices straight into the store (controller stopped).")
        @OptionGroup var data: DataOption
        @Option(help: "How many devices.") var count: Int
        @Option(help: ArgumentHelp("Seed this PostgreSQL database instead of DIR/fleet.sqlite (as serve --database).", valueName: "url"))
        var database: String?
        func run() async throws {
            try await oneLine {
                let location = try StoreLocation(database: database, dir: data.dir)
                let store = try await location.open(logger: Logger(label: "outpost-controller"))
                try await Fleet.seed(store: store, count: count, onboardFingerprint: "bench-seed")
                await (store as? PostgresFleetStore)?.close()
                print("seeded \(count) devices into \(location)")
            }
        }
    }

    struct Poll: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Register C devices, then time each call mode on keep-alive mutual TLS.",
            discussion: "Modes: ping and config (a 304) read no store; info, metrics and logs (10 lines a batch) write it.")
        @OptionGroup var data: DataOption
        @Option(help: "A controller URL (default: controller-url); repeat it for replicas: client n polls the (n mod count)th.")
        var url: [String] = []
        @Option(help: "Concurrent clients (each its own device certificate and connection).") var clients: Int = 32
        @Option(help: "Seconds per measurement.") var seconds: Double = 10
        @Option(help: ArgumentHelp("A mode to measure, in order; repeat it (default: ping, config).", valueName: "ping|handshake|config|info|metrics|logs"))
        var mode: [String] = []
        @Flag(help: "Print JSON.") var json = false
        func run() async throws {
            try await oneLine {
                let modes = try (mode.isEmpty ? ["ping", "config"] : mode).map { name in
                    guard let m = Throughput.Mode(rawValue: name) else {
                        throw ControllerError.invalidInput("--mode \(name): not one of \(Throughput.Mode.allCases.map(\.rawValue).joined(separator: ", "))")
                    }
                    return m
                }
                let d = data.dir
                let text = { (p: String) throws -> String in String(decoding: try d.readPublic(p), as: UTF8.self) }
                let results = try await Throughput.run(
                    urls: url.isEmpty ? [try d.loadSettings().url] : url, rootCAPEM: try text(d.caCert),
                    onboardCertPEM: try text(d.onboardCert), onboardKeyPEM: try text(d.configDir + "/onboard.key.pem"),
                    clients: clients, seconds: seconds, modes: modes)
                if json { return printJSON(results.map { ["mode": $0.mode, "clients": $0.clients, "seconds": $0.seconds, "requests": $0.requests,
                                                          "errors": $0.errors, "perSecond": $0.perSecond, "p50ms": $0.p50ms, "p99ms": $0.p99ms] }) }
                for r in results {
                    print("\(r.mode) clients \(r.clients): " + String(format: "%.0f req/s, p50 %.2f ms, p99 %.2f ms", r.perSecond, r.p50ms, r.p99ms)
                          + " (\(r.requests) requests, \(r.errors) errors, " + String(format: "%.1f s)", r.seconds))
                }
            }
        }
    }
}
