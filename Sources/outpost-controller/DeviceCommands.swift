import ArgumentParser
import Foundation
import OutpostController
import OutpostProto

struct DeviceCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "device",
        abstract: "See and steer devices (through the running controller's admin socket).",
        discussion: """
        DEVICE is a device id, a unique id prefix (4+ characters) or a serial.

        SELECTOR picks devices by label (`device label`): \(selectorHelp)
        """,
        subcommands: [List.self, Show.self, Label.self, Logs.self, Metrics.self, SetOS.self, SetNetwork.self, SetApps.self, SetSecret.self, RemoveSecret.self, Reboot.self, Shutdown.self,
                      RetryUpdate.self, SetIntervals.self, AttestationCommand.self, AttestationResetCommand.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Every registered device (or those --select picks): slot, version, last boot reason, update, vault state, ports, labels.")
        @OptionGroup var data: DataOption
        @Option(help: ArgumentHelp("Only the devices this label selector picks: \(selectorHelp)", valueName: "selector")) var select: String?
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            try await oneLine {
                var path = "/devices"
                if let select {
                    _ = try LabelSelector.parse(select)
                    path += "?select=" + (select.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? select)
                }
                let v = try data.admin.call("GET", path)
                if json { return printJSON(v) }
                let rows = v as? [[String: Any]] ?? []
                print(pad(["ID", "SERIAL", "SLOT", "VERSION", "BOOT", "UPDATE", "VAULT", "LAST SEEN", "PORTS"]))
                for r in rows {
                    let ports = (r["ports"] as? [[String: Any]] ?? []).map { p in
                        "\(p["name"] as? String ?? "")\((p["active"] as? Bool ?? false) ? "*" : "")=\((p["addresses"] as? [String] ?? []).joined(separator: ","))"
                    }.joined(separator: " ")
                    let labels = (r["labels"] as? [String: Any] ?? [:]).sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
                    print(pad([s(r, "id"), s(r, "serial"), s(r, "slot"), s(r, "version"), s(r, "lastBoot"), s(r, "update"),
                               s(r, "vaultState"), s(r, "lastSeen"), ports]) + (labels.isEmpty ? "" : "  [" + labels.joined(separator: ",") + "]"))
                }
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "One device: its config, its latest info (vault included: which secrets it holds), the update steps it went through.",
            discussion: """
            `vault` is the device's vault as its latest info reports it: unlocked, locked or unavailable, and why; \
            `vault floor` the TPM's security floor. After each secret: delivered (the device's vault holds it with the \
            same SHA-256), not yet (it does not hold it: the vault is not open or the config has not reached it) or differs.
            """)
        @OptionGroup var data: DataOption
        @Argument(help: "The device.") var device: String
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            try await oneLine {
                let v = try data.admin.call("GET", "/devices/\(esc(device))")
                if json { return printJSON(v) }
                let o = v as? [String: Any] ?? [:]
                for k in ["id", "serial", "registered", "lastSeen", "slot", "version", "lastBoot", "update", "configHash", "logsAcked"] {
                    print("\(k.padding(toLength: 12, withPad: " ", startingAt: 0)) \(o[k].map { "\($0)" } ?? "")")
                }
                let labels = (o["labels"] as? [String: Any] ?? [:]).sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
                print("labels       \(labels.joined(separator: ","))")
                if let info = o["info"] as? [String: Any] {
                    for slot in info["slots"] as? [[String: Any]] ?? [] {
                        print("slot         \(s(slot, "label")) \(s(slot, "state")) \(s(slot, "version"))\((slot["booted"] as? Bool ?? false) ? " (booted)" : "")")
                    }
                    if let u = info["update"] as? [String: Any], let step = u["step"] {
                        print("update now   \(step) \(s(u, "version")) \(s(u, "reason"))")
                    }
                    if let n = info["networkPush"] as? [String: Any], let out = n["outcome"] as? String, out != "OUTCOME_UNSPECIFIED" {
                        print("network push \(out) \(s(n, "reason"))")
                    }
                    if let error = info["appsError"] as? String { print("apps refused \(error)") }
                    for app in info["apps"] as? [[String: Any]] ?? [] {
                        let error = s(app, "error")
                        print("app          \(s(app, "name")) \(s(app, "state"))" + (error.isEmpty ? "" : " (\(error))"))
                    }
                }
                for h in o["updateHistory"] as? [[String: Any]] ?? [] {
                    print("history      \(s(h, "received"))  \(s(h, "step")) \(s(h, "version")) \(s(h, "reason"))")
                }
                let vault = o["vault"] as? [String: Any]
                if let vault {
                    let detail = s(vault, "detail")
                    print("vault        \(s(vault, "state"))" + (detail.isEmpty ? "" : ": \(detail)"))
                    print("vault floor  \(vault["floor"].map { "\($0)" } ?? "unset")")
                } else if o["info"] != nil {
                    print("vault        not reported (the device's info has no vault)")
                }
                // Whether the device's vault holds each secret's value: by the SHA-256 it reports.
                let delivery = Dictionary((vault?["secrets"] as? [[String: Any]] ?? []).map { (s($0, "name"), s($0, "delivery")) },
                                          uniquingKeysWith: { a, _ in a })
                for secret in (o["config"] as? [String: Any])?["secrets"] as? [[String: Any]] ?? [] {
                    let held = delivery[s(secret, "name")].map { " " + $0 } ?? ""
                    print("secret       \(s(secret, "name")) \(s(secret, "bytes")) bytes sha256 \(s(secret, "sha256"))\(held)")
                }
                for name in vault?["notInConfig"] as? [String] ?? [] {
                    print("vault holds  \(name) (not in the config: removed with the device's next config)")
                }
                if let c = o["config"] { print("config"); printJSON(c) }
            }
        }
    }

    struct Label: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Set (KEY=VALUE) or remove (KEY-) a device's labels.",
            discussion: "Keys are [A-Za-z0-9][A-Za-z0-9._/-]*, values [A-Za-z0-9._/-]+, each at most 63 characters.")
        @OptionGroup var data: DataOption
        @Argument(help: "The device.") var device: String
        @Argument(help: ArgumentHelp("KEY=VALUE to set, KEY- to remove.", valueName: "change")) var changes: [String]
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            try await oneLine {
                guard !changes.isEmpty else { throw ControllerError.invalidInput("give at least one KEY=VALUE or KEY-") }
                var set: [String: String] = [:]
                var remove: [String] = []
                for c in changes {
                    switch try LabelSelector.parseChange(c) {
                    case let .set(k, v): set[k] = v
                    case let .remove(k): remove.append(k)
                    }
                }
                let v = try data.admin.call("POST", "/devices/\(esc(device))/label", body: ["set": set, "remove": remove])
                if json { return printJSON(v) }
                let o = v as? [String: Any] ?? [:]
                let labels = (o["labels"] as? [String: Any] ?? [:]).sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
                print("device \(s(o, "device")): labels \(labels.isEmpty ? "(none)" : labels.joined(separator: ","))")
            }
        }
    }

    struct Logs: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The device's log entries, in sequence order.")
        @OptionGroup var data: DataOption
        @Argument(help: "The device.") var device: String
        @Option(help: "Only entries after this sequence.") var after: UInt64 = 0
        @Flag(help: "Keep printing new entries (until interrupted).") var follow = false
        @Flag(help: "Print JSON (one object per entry, one per line).") var json = false

        func run() async throws {
            try await oneLine {
                var mark = after
                while true {
                    let v = try data.admin.call("GET", "/devices/\(esc(device))/logs?after=\(mark)&limit=1000")
                    let entries = (v as? [String: Any])?["entries"] as? [[String: Any]] ?? []
                    for e in entries {
                        if json {
                            let d = (try? JSONSerialization.data(withJSONObject: e, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data()
                            out(String(decoding: d, as: UTF8.self))
                        } else {
                            out("\(e["sequence"] ?? "") \(s(e, "time")) \(s(e, "severity")) \(s(e, "source")): \(s(e, "message"))")
                        }
                        if let n = (e["sequence"] as? NSNumber)?.uint64Value { mark = max(mark, n) }
                    }
                    if entries.count == 1000 { continue }
                    guard follow else { return }
                    try await Task.sleep(for: .seconds(1))
                }
            }
        }
    }

    struct Metrics: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The device's newest metrics (and, with --history N, the N newest).")
        @OptionGroup var data: DataOption
        @Argument(help: "The device.") var device: String
        @Option(help: "How many reports, newest first.") var history: Int = 1
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            try await oneLine {
                let v = try data.admin.call("GET", "/devices/\(esc(device))/metrics?limit=\(history)")
                if json { return printJSON(v) }
                let ms = (v as? [String: Any])?["metrics"] as? [[String: Any]] ?? []
                if ms.isEmpty { print("no metrics yet") }
                for m in ms {
                    let mem = "\(s(m, "memoryUsedBytes"))/\(s(m, "memoryTotalBytes"))"
                    let persist = "\(s(m, "persistUsedBytes"))/\(s(m, "persistTotalBytes"))"
                    print("time \(s(m, "timeUnixMs")) uptime \(s(m, "uptimeS"))s cpu \(s(m, "cpuPercent"))% memory \(mem) persist \(persist)")
                    for p in m["ports"] as? [[String: Any]] ?? [] {
                        print("  \(s(p, "name")) rx \(s(p, "rxBytes")) B tx \(s(p, "txBytes")) B errors \(s(p, "rxErrors"))/\(s(p, "txErrors"))")
                    }
                    if let w = m["watchdog"] as? [String: Any] {
                        print("  watchdog armed \(s(w, "armed")) timeout \(s(w, "timeoutS"))s last feed \(s(w, "sinceLastFeedS"))s ago")
                    }
                }
            }
        }
    }

    struct SetOS: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "set-os",
            abstract: "Ask a device to run a base OS: a bundle FILE (verified and served by the controller) or a URL.")
        @OptionGroup var data: DataOption
        @OptionGroup var target: Target
        @Option(help: "A signed bundle file, or an http(s) URL of one.") var bundle: String
        @Option(help: "The bundle's OS version (needed with a URL; checked against a file's manifest).") var version: String?
        @Flag(help: "Download and verify only; do not install.") var noActivate = false
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            try await oneLine {
                var body: [String: Any] = ["activate": !noActivate]
                if bundle.hasPrefix("https://") || bundle.hasPrefix("http://") {
                    body["url"] = bundle
                } else {
                    guard FileManager.default.fileExists(atPath: bundle) else { throw ControllerError.invalidInput("--bundle \(bundle): no such file") }
                    body["bundle"] = DataDirectory(path: bundle).path
                }
                if let version { body["version"] = version }
                try report(try target.call(data, "set-os", body: body), json: json)
            }
        }
    }

    struct SetNetwork: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "set-network", abstract: "Push a network.json to a device.")
        @OptionGroup var data: DataOption
        @Argument(help: "The device.") var device: String
        @Argument(help: "The network.json file.") var file: String
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            try await oneLine {
                try report(try data.admin.call("POST", "/devices/\(esc(device))/set-network",
                                               body: ["networkJSON": String(decoding: try fileBytes(file), as: UTF8.self)]), json: json)
            }
        }
    }

    struct SetApps: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "set-apps",
            abstract: "Give a device its app instances (a file in the apps.json shape); it replaces the device's apps.json while managed.")
        @OptionGroup var data: DataOption
        @Argument(help: "The device.") var device: String
        @Argument(help: "The apps file ({\"apps\": [...]}, as CONFIG's apps.json).") var file: String
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            try await oneLine {
                try report(try data.admin.call("POST", "/devices/\(esc(device))/set-apps",
                                               body: ["appsJSON": String(decoding: try fileBytes(file), as: UTF8.self)]), json: json)
            }
        }
    }

    struct SetSecret: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "set-secret",
            abstract: "Give a device a secret for its vault (stored there as controller.NAME).",
            discussion: """
                A device with an attestation key gets its secrets only after a passed attestation of its current boot; \
                a device with the file identity gets them with its config. The value is never shown back: `device show` \
                lists each secret's name, length and SHA-256.
                """)
        @OptionGroup var data: DataOption
        @Argument(help: "The device.") var device: String
        @Argument(help: "The secret's name: 1-\(ConfigSecrets.maximumNameBytes) of A-Z a-z 0-9 . _ -, not starting with a dot.") var name: String
        @Option(help: "The value (visible in the process list: prefer --file or --stdin).") var value: String?
        @Option(help: "Read the value from this file (its exact bytes).") var file: String?
        @Flag(help: "Read the value from standard input (its exact bytes).") var stdin = false
        @Flag(help: "Print JSON.") var json = false

        func validate() throws {
            if [value != nil, file != nil, stdin].filter({ $0 }).count != 1 { throw ValidationError("give one of --value, --file or --stdin") }
        }

        func run() async throws {
            try await oneLine {
                if let problem = ConfigSecrets.nameProblem(name) { throw ControllerError.invalidInput(problem) }
                let bytes: Data
                if let value {
                    bytes = Data(value.utf8)
                } else if let file {
                    bytes = try fileBytes(file)
                } else {
                    // One byte past the limit is enough to refuse an oversize value.
                    bytes = (try? FileHandle.standardInput.read(upToCount: ConfigSecrets.maximumValueBytes + 1)) ?? Data()
                }
                let v = try data.admin.call("POST", "/devices/\(esc(device))/set-secret",
                                            body: ["name": name, "valueBase64": bytes.base64EncodedString()])
                if json { return printJSON(v) }
                let o = v as? [String: Any] ?? [:]
                let secret = o["secret"] as? [String: Any] ?? [:]
                print("device \(s(o, "device")): secret \(s(secret, "name")) set (\(s(secret, "bytes")) bytes, sha256 \(s(secret, "sha256")))")
                try report(v, json: false)
            }
        }
    }

    struct RemoveSecret: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "remove-secret",
            abstract: "Take a secret out of a device's config; the device deletes controller.NAME from its vault.")
        @OptionGroup var data: DataOption
        @Argument(help: "The device.") var device: String
        @Argument(help: "The secret's name.") var name: String
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            try await oneLine {
                let v = try data.admin.call("POST", "/devices/\(esc(device))/remove-secret", body: ["name": name])
                if json { return printJSON(v) }
                let o = v as? [String: Any] ?? [:]
                print("device \(s(o, "device")): secret \(s(o, "removed")) removed")
                try report(v, json: false)
            }
        }
    }

    struct Reboot: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Bump the device's reboot counter: it reboots once.")
        @OptionGroup var data: DataOption
        @OptionGroup var target: Target
        @Flag(help: "Print JSON.") var json = false
        func run() async throws { try await oneLine { try report(try target.call(data, "reboot"), json: json) } }
    }

    struct Shutdown: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Bump the device's shutdown counter: it powers off once.")
        @OptionGroup var data: DataOption
        @OptionGroup var target: Target
        @Flag(help: "Print JSON.") var json = false
        func run() async throws { try await oneLine { try report(try target.call(data, "shutdown"), json: json) } }
    }

    struct RetryUpdate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "retry-update",
                                                        abstract: "Bump the update retry counter: a version that failed is tried again.")
        @OptionGroup var data: DataOption
        @OptionGroup var target: Target
        @Flag(help: "Print JSON.") var json = false
        func run() async throws { try await oneLine { try report(try target.call(data, "retry-update"), json: json) } }
    }

    struct SetIntervals: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "set-intervals",
                                                        abstract: "Set the device's config, metrics and info intervals (seconds; 0 = default).")
        @OptionGroup var data: DataOption
        @Argument(help: "The device.") var device: String
        @Option var config: Int?
        @Option var metrics: Int?
        @Option var info: Int?
        @Flag(help: "Print JSON.") var json = false
        func run() async throws {
            try await oneLine {
                var b: [String: Any] = [:]
                if let config { b["config"] = config }
                if let metrics { b["metrics"] = metrics }
                if let info { b["info"] = info }
                try report(try data.admin.call("POST", "/devices/\(esc(device))/intervals", body: b), json: json)
            }
        }
    }
}

let selectorHelp = "comma-separated terms that must all hold: k=v (label k is v), k!=v (k is not v, or the device has no k), k (has k), !k (lacks k). Keys [A-Za-z0-9][A-Za-z0-9._/-]*, values [A-Za-z0-9._/-]+. The empty selector picks every device."

/// One DEVICE, or every device a --select picks: the bulk commands' target.
struct Target: ParsableArguments {
    @Argument(help: "The device (or use --select).") var device: String?
    @Option(help: ArgumentHelp("Every device this label selector picks, instead of one DEVICE: \(selectorHelp)", valueName: "selector"))
    var select: String?

    func validate() throws {
        if (device == nil) == (select == nil) { throw ValidationError("give one DEVICE or --select SELECTOR") }
    }

    func call(_ data: DataOption, _ action: String, body: [String: Any] = [:]) throws -> Any {
        if let select {
            _ = try LabelSelector.parse(select)
            var b = body
            b["select"] = select
            return try data.admin.call("POST", "/bulk/\(action)", body: b)
        }
        return try data.admin.call("POST", "/devices/\(esc(device ?? ""))/\(action)", body: body.isEmpty ? nil : body)
    }
}

/// A file the operator named, whole; one line when it cannot be read.
func fileBytes(_ path: String) throws -> Data {
    guard let d = FileManager.default.contents(atPath: path) else { throw ControllerError.io(path: path, reason: "cannot read the file") }
    return d
}

func report(_ v: Any, json: Bool) throws {
    if json { return printJSON(v) }
    let o = v as? [String: Any] ?? [:]
    if let b = o["bundle"] as? [String: Any] {
        print("bundle \(s(b, "name")) (version \(s(b, "version")), signed by \(s(b, "signedBy"))) verified and served")
    }
    if let devices = o["devices"] as? [[String: Any]] {
        for d in devices { print("device \(s(d, "device")): config \(s(d, "configHash").prefix(16))") }
        print("\(devices.count) devices selected by '\(s(o, "select"))' (each picks its config up at its next poll)")
        return
    }
    print("device \(s(o, "device")): config \(s(o, "configHash").prefix(16)) (the device picks it up at its next poll)")
}

/// Unbuffered, so `logs --follow | grep` sees each line as it comes.
func out(_ line: String) { FileHandle.standardOutput.write(Data((line + "\n").utf8)) }

func s(_ o: [String: Any], _ k: String) -> String { o[k].map { "\($0)" } ?? "" }

func esc(_ ref: String) -> String { ref.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed.subtracting(CharacterSet(charactersIn: "/"))) ?? ref }

func pad(_ cols: [String]) -> String {
    let widths = [36, 16, 8, 10, 11, 20, 11, 24]
    return cols.enumerated().map { i, c in i < widths.count ? c.padding(toLength: max(widths[i], c.count), withPad: " ", startingAt: 0) : c }
        .joined(separator: " ")
}
