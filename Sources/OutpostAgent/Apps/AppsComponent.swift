// The app instances (OutpostApps.AppService) as one of PID 1's components.
// `apps.json` on CONFIG holds the factory-preloaded apps (the default, and
// what an unmanaged device runs). A managed device whose controller sent an
// apps section runs that instead (same shape; the last one received is kept
// with the last good config on PERSIST, so a boot without the controller runs
// it too), and a new section replaces the apps at runtime (AppService.apply).
// Unmanaged with no file: the component says so once and idles. The content store
// and every instance's disks live on PERSIST (`/persist/apps`), except an app
// with `"vault": true`, whose instance lives in the vault's area
// (`/persist/vault/data/apps`; it does not start while the vault is locked or
// unavailable, see OutpostApps.AppVault); without PERSIST nothing starts. Each instance's QEMU gets a cgroup v2 directory
// under /sys/fs/cgroup/apps with its cpu.max and memory.max when the kernel
// offers the controllers; otherwise the apps run without limits and the
// console says why. Apps with network interfaces get taps in the app
// network's bridge (OutpostApps.AppNetwork: NAT, DHCP/DNS, ACLs).

#if canImport(Glibc)
import Glibc
#endif
import OutpostApps
import OutpostHTTP
import OutpostPlatform
import OutpostEarlyBoot
import OutpostProto

/// Whether the device runs apps, as status shows it.
public enum AppsSetup: Sendable {
    case running(AppService)
    /// No apps, and why ("none configured", a broken apps.json, no PERSIST).
    case off(String, warning: Bool)

    var service: AppService? {
        if case let .running(service) = self { return service }
        return nil
    }
}

enum AppsComponent {
    /// An app name as AppsConfig allows it (a-z, 0-9, -), for telling "app:NAME: " apart.
    static func isAppName(_ name: Substring) -> Bool {
        !name.isEmpty && name.count <= 32 && name.unicodeScalars.allSatisfy { ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "-" }
    }

    static let configDirectory = "/config"
    static let persistDirectory = "apps"
    static let cgroupMount = "/sys/fs/cgroup"
    static let controllerCA = "/config/root-ca.pem"

    /// Reads apps.json (or takes the controller's stored section) and builds the service; the
    /// component body says the outcome, once. `managed`: a controller may send apps later, so
    /// the service runs even with no apps.json (or a broken one, said once). `cgroupMount` nil:
    /// no cgroup limits (host tests must not touch the host's hierarchy). `vault`: the vault's state
    /// as it opened at boot (nil: none), mounted at `vaultMount` when unlocked.
    static func setup(persistMount: String?, configDirectory: String = configDirectory,
                      cgroupMount: String? = cgroupMount, managed: Bool = false,
                      controllerSection: Outpost_Api_V1_AppsSection? = nil,
                      vault: VaultState? = nil, vaultMount: String = VaultPaths().mountPoint) -> AppsSetup {
        var config: AppsConfig?
        var source = "apps.json"
        if let controllerSection {
            do {
                config = try AppsSectionBridge.config(controllerSection)
                source = "controller"
            } catch {
                Console.line("warning: apps: the controller's stored apps section is refused (\(error)); running apps.json")
            }
        }
        if config == nil {
            do { config = try AppsConfig.load(configDirectory: configDirectory) } catch {
                guard managed else { return .off("not started: \(error)", warning: true) }
                Console.line("warning: apps: \(error); no apps until the controller sends some")
            }
        }
        let apps = config ?? AppsConfig(apps: [])
        guard !apps.apps.isEmpty || managed else { return .off("none configured", warning: false) }
        guard let persistMount else { return .off("not started: PERSIST is not mounted", warning: true) }
        var options = AppService.Options()
        options.cgroupRoot = cgroupMount.flatMap(cgroupRoot)
        options.vault = appVault(vault, mountPoint: vaultMount)
        // The apps' local network, started by the component body; only when an app has an interface.
        // Known limit: a controller section that first brings an interface after boot gets its
        // network at the next boot (the section is stored, so that boot builds it from the start).
        if apps.apps.contains(where: { app in app.manifest.interfaces.contains { !$0.directAttach } }) {
            var network = AppNetwork.Options()
            network.config = apps.network
            network.resolvConf = NetworkComponent.resolvConf
            options.instance.network = AppNetwork(options: network)
        }
        do {
            options.http.tls = try TLSContext(caFiles: Sys.exists(controllerCA) ? [controllerCA] : [], systemDefaults: true)
        } catch {
            Console.line("warning: apps: \(error); https image downloads use the system store only")
        }
        let service = AppService(config: apps, root: persistMount + "/" + persistDirectory, options: options,
                                 log: { Console.line($0) })
        service.configSource = source
        return .running(service)
    }

    static func spec(_ setup: AppsSetup) -> ComponentSpec {
        ComponentSpec(name: "apps", livenessDeadlineMilliseconds: 120_000, body: .task { context in
            try context.beat()
            guard let service = setup.service else {
                if case let .off(why, warning) = setup { Console.line((warning ? "warning: apps: " : "apps: ") + why) }
                while context.sleep(for: .milliseconds(5000)) { try context.beat() }
                return
            }
            Console.line(service.names.isEmpty ? "apps: none configured (\(service.configSource)); waiting for the controller's"
                         : "apps: \(service.names.count) configured (\(service.configSource)): \(service.names.joined(separator: ", "))")
            if !Sys.exists(service.options.instance.qemu) {
                Console.line("warning: apps: \(service.options.instance.qemu) is not in this slot; the apps cannot start")
            }
            do { try service.prepare() } catch { Console.line("warning: apps: \(error)") }
            if let network = service.options.instance.network {
                // Without it, an app with an interface is broken with this error when it starts.
                do {
                    try network.start()
                    Console.line("apps: network \(network.bridge) \(network.options.config.gateway)/\(network.options.config.prefixLength)")
                } catch {
                    Console.line("warning: apps: \(error)")
                }
            }
            var reported: [String: String] = [:]
            // Host rules' names, looked up through the apps' dnsmasq so their sets are full even
            // before an app asks: soon after the apps start, then every five minutes.
            var refreshHostNames = Deadline(after: .seconds(10))
            // Twice a second while apps are configured; an idle device with none looks every 5 s.
            var pause = Duration.milliseconds(500)
            repeat {
                try context.beat()
                service.step(alive: { try? context.beat() })
                if let network = service.options.instance.network, refreshHostNames.hasPassed {
                    network.refreshHostNames(timeout: .seconds(1))
                    refreshHostNames = Deadline(after: .seconds(300))
                }
                // Each state change once on the console: an operator watching it sees the app come up.
                let apps = service.status(aclCounters: false)
                pause = apps.isEmpty ? .seconds(5) : .milliseconds(500)
                for app in apps where reported[app.name] != app.state && app.state != "downloading" {
                    reported[app.name] = app.state
                    Console.line("apps: \(app.name): \(app.state)" + (app.error.map { " (\($0))" } ?? ""))
                }
                // The apps' serial consoles go to the controller with the device's logs (source
                // "app:NAME"), at most 200 lines per app per round; the logs stay within their quota.
                for (name, drain) in service.drainConsoles() {
                    for line in drain.lines { Console.forward("app:\(name): \(line)") }
                    if drain.dropped > 0 {
                        Console.forward("warning: app:\(name): \(drain.dropped) console lines not sent (over \(200) per half second)")
                    }
                }
            } while context.sleep(for: pause)
        })
    }

    /// What the vault offers the apps: its area's `apps/` when unlocked; otherwise the vault's
    /// own line is the reason every vault app gives for not starting.
    static func appVault(_ state: VaultState?, mountPoint: String) -> AppVault {
        switch state {
        case .unlocked: return .open(root: mountPoint + "/" + persistDirectory)
        case let .some(state): return .closed(reason: state.line)
        case .none: return .closed(reason: "vault: unavailable: PERSIST is not mounted")
        }
    }

    /// Mounts cgroup v2 when nothing has and makes `apps/` with the cpu and memory controllers
    /// for its children; nil (and one warning) when the kernel does not offer them.
    static func cgroupRoot(_ cgroupMount: String) -> String? {
        let root = cgroupMount + "/apps"
        do throws(SystemError) {
            if !Sys.exists(cgroupMount + "/cgroup.controllers") {
                try Sys.mkdir(cgroupMount, 0o755)
                try Sys.mount(source: "cgroup2", target: cgroupMount, type: "cgroup2", flags: UInt(MS_NOSUID | MS_NODEV | MS_NOEXEC))
            }
            let offered = try Sys.readText(cgroupMount + "/cgroup.controllers").split(whereSeparator: { $0 == " " || $0 == "\n" })
            guard offered.contains("cpu"), offered.contains("memory") else {
                Console.line("warning: apps: the kernel's cgroup v2 has no cpu and memory controllers; apps run without limits")
                return nil
            }
            try FileIO.writeInPlace("+cpu +memory", to: cgroupMount + "/cgroup.subtree_control")
            try Sys.mkdir(root, 0o755)
            try FileIO.writeInPlace("+cpu +memory", to: root + "/cgroup.subtree_control")
            return root
        } catch {
            Console.line("warning: apps: cgroup v2 limits unavailable (\(error)); apps run without limits")
            return nil
        }
    }
}

/// The console's `app ...` commands: each runs on its own thread (a stop may wait a minute for
/// the guest) and prints its outcome, or the one-line reason it was refused, when it ends.
enum AppCommands {
    static let help = ["  app status      every app: state, pid, restarts, boot time, error",
                       "  app console NAME                 the last lines of the app's serial console",
                       "  app restart|purge|stop|start NAME",
                       "  app kill NAME                    SIGKILL a hung app's QEMU; it restarts like after a crash",
                       "  app snapshot|rollback NAME TAG   take a named snapshot / go back to one (running or halted)",
                       "  app snapshots NAME               list them; app delete-snapshot NAME TAG deletes one"]

    static func respond(to words: [String], apps: AppsSetup?) -> [String] {
        guard let apps else { return ["app: the apps component is not running"] }
        guard let service = apps.service else {
            if case let .off(why, _) = apps { return ["app: no apps (\(why))"] }
            return ["app: no apps"]
        }
        let command: AppService.Command
        let name: String
        switch words {
        case ["app", "status"]:
            let lines = service.status().map(\.line)
            return lines.isEmpty ? ["app: no apps"] : lines
        case let words where words.count == 3 && words[1] == "console":
            do {
                let lines = try service.consoleTail(words[2], lines: 20)
                return lines.isEmpty ? ["app \(words[2]) console: (empty)"] : lines.map { "app \(words[2]) console: " + $0 }
            } catch {
                return ["app console \(words[2]): \(error)"]
            }
        case let words where words.count == 3:
            name = words[2]
            switch words[1] {
            case "restart": command = .restart
            case "purge": command = .purge
            case "stop": command = .stop
            case "start": command = .start
            case "kill": command = .kill
            case "snapshots": command = .snapshots
            default: return usage(words)
            }
        case let words where words.count == 4 && words[1] == "snapshot":
            name = words[2]
            command = .snapshot(words[3])
        case let words where words.count == 4 && words[1] == "rollback":
            name = words[2]
            command = .rollback(words[3])
        case let words where words.count == 4 && words[1] == "delete-snapshot":
            name = words[2]
            command = .deleteSnapshot(words[3])
        default: return usage(words)
        }
        do {
            try NamedThread.detach(name: "app-command") {
                do { Console.line(try service.perform(command, on: name)) } catch {
                    Console.line("app \(command.word) \(name): \(error)")
                }
            }
        } catch {
            return ["app \(command.word) \(name): cannot start the command: \(error)"]
        }
        return []
    }

    static func usage(_ words: [String]) -> [String] {
        let shown = String(words.joined(separator: " ").unicodeScalars.filter { $0.value >= 32 && $0.value < 127 }.prefix(60))
        return ["app: cannot read '\(shown)'; one of: app status, app console|restart|purge|stop|start|kill|snapshots NAME, app snapshot|rollback|delete-snapshot NAME TAG"]
    }
}
