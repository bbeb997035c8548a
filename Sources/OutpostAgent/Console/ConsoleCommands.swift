// Read-only commands typed on the local serial console. A technician at the
// device (or a developer in `outpost run`) gets the same reports as
// `outpostd status` and `outpostd update status` without a shell, which the
// image does not have. Nothing typed here changes the system itself (no
// slot, config or update command), so a console is no way around signed
// updates; the one exception is the app commands, which do to the owner's
// apps what a technician at the device must be able to do (restart, purge,
// stop, start, snapshot, roll back).
//
//   ttyS0 (canonical mode: the kernel hands over whole lines)
//     "status"          → the supervisor's status report
//     "update status"   → slots, versions, last result and its reason
//     "network status"  → per port carrier, address, gateway, DNS, proxy, test
//     "app ..."         → app status, restart, purge, stop, start, snapshot, rollback
//     "vault ..."       → vault status; put a secret, check or list them (values never shown)
//     "kernel log"      → the kernel's messages (the boot is quiet on the console)
//     "help"            → this list

#if canImport(Glibc)
import Glibc
#endif
import OutpostPlatform
import OutpostEarlyBoot

enum ConsoleCommands {
    static let path = "/dev/console"
    static let help = ["console commands:", "  status          components, watchdog, last boot, apps",
                       "  update status   slots, versions, last update result",
                       "  network status  ports: carrier, address, gateway, DNS, proxy, last test error"]
        + AppCommands.help + VaultCommands.help
        + ["  kernel log      the kernel's messages since boot (not printed on the console)", "  help            this list"]

    static func spec(agent: Agent) -> ComponentSpec {
        ComponentSpec(name: "console", livenessDeadlineMilliseconds: 30_000, body: .task { context in
            let fd = try Sys.open(path, O_RDONLY | O_NOCTTY | O_NONBLOCK)
            defer { Sys.close(fd) }
            try context.beat()
            var pending: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 512)
            while !context.isStopping {
                var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0)]
                let ready = try pollDescriptors(&fds, timeout: .seconds(5), object: path)
                try context.beat()
                guard ready > 0 else { continue }
                // EAGAIN (nothing after all) counts as -1: neither data nor a hang-up.
                let count = (try systemCall("read", path, expecting: [.wouldBlock]) {
                    buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
                }).get(orElse: -1)
                if count == 0 || fds[0].revents & Int16(POLLHUP) != 0 {
                    // No terminal behind the console (hung up): nothing to serve; check again later.
                    _ = context.sleep(for: .milliseconds(5000))
                    continue
                }
                guard count > 0 else { continue }
                pending += buffer[0..<count]
                while let newline = pending.firstIndex(where: { $0 == 10 || $0 == 13 }) {
                    let line = String(decoding: pending[..<newline], as: UTF8.self)
                    pending.removeSubrange(...newline)
                    let words = Self.words(line)
                    let onConsoleOnly = words == KernelLog.command
                    for reply in respond(to: line, words: words, agent: agent) {
                        if onConsoleOnly { Console.show(reply) } else { Console.line(reply) }
                    }
                }
                if pending.count > 1024 { pending.removeAll() }   // a runaway line is no command
            }
        })
    }

    /// A typed line's words, split on spaces and tabs.
    static func words(_ typed: String) -> [String] {
        typed.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
    }

    /// The reply lines for one typed line (and its `words`); none for an empty one.
    static func respond(to typed: String, words: [String], agent: Agent) -> [String] {
        switch words {
        case []: return []
        case ["help"]: return help
        case ["status"]: return lines(StatusReport(agent: agent).text())
        case ["update", "status"], ["update", "status", "--json"]:
            guard let update = agent.update else { return ["update status: not available (PERSIST is not mounted)"] }
            do { return lines(try UpdateCommand.report(update, json: words.count == 3)) } catch {
                return ["update status: \(error)"]
            }
        case KernelLog.command: return KernelLog.lines().map { "kernel: " + $0 }
        case ["network", "status"]:
            guard let network = agent.network else { return ["network status: the network manager is not running"] }
            return network.connectivityReport().map { $0.hasPrefix("network:") ? $0 : "network: " + $0 }
        case ["network", "status", "--json"]:
            guard let network = agent.network else { return ["network status: the network manager is not running"] }
            return [(try? JSONDocument.line(network.statusDocument())) ?? "network status: cannot encode"]
        case let words where words.first == "app":
            return AppCommands.respond(to: words, apps: agent.apps)
        case let words where words.first == "vault":
            let reply = VaultCommands.respond(to: words, typed: typed, vault: agent.vault)
            // A stored secret may be one the device info reports (controller.NAME): the info is composed again.
            if words.dropFirst().first == "put" { agent.fleetClient?.client.stateChanged() }
            return reply
        default:
            let shown = String(typed.unicodeScalars.filter { $0.value >= 32 && $0.value < 127 }.prefix(40))
            return ["unknown console command '\(shown)'; type help"]
        }
    }

    static func lines(_ text: String) -> [String] {
        text.split(separator: "\n", omittingEmptySubsequences: true).map(String.init)
    }
}
