import ArgumentParser
import Foundation
import OutpostController

struct RolloutCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rollout",
        abstract: "Staged base-OS rollouts: waves over the devices a selector picks, halted when too many fail.",
        discussion: """
        A wave starts when every device of the wave before has reported committed on the new version (or failed) and \
        the --soak time has passed since. A device fails when it reports failed, or has not reported committed within \
        --deadline of its wave's start (so a bricked device cannot hold a rollout open). When the failed devices are more \
        than --max-failures of the devices started so far, the rollout halts; `rollout status` names them and why. \
        Every `serve` replica runs the rollouts; the one holding the database lease acts.

        ID is a rollout id or a unique prefix; without it, the newest rollout.
        """,
        subcommands: [Create.self, Status.self, Pause.self, Resume.self, Abort.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Start a rollout of a base OS to the devices a selector picks.")
        @OptionGroup var data: DataOption
        @Option(help: "A signed bundle file, or an http(s) URL of one.") var bundle: String
        @Option(help: "The bundle's OS version (needed with a URL; checked against a file's manifest).") var version: String?
        @Option(help: ArgumentHelp("The devices, by label: \(selectorHelp)", valueName: "selector")) var select: String
        @Option(help: "Cumulative percentages of the selected devices, one per wave; the last is 100%.") var waves = "1%,10%,50%,100%"
        @Option(help: "How long a wave's devices run the new version, all committed, before the next wave starts (500ms, 30s, 10m, 2h).")
        var soak = "10m"
        @Option(help: "A device without a committed report this long after its wave started counts as failed.") var deadline = "30m"
        @Option(help: "Halt when more than this share of the devices started so far failed.") var maxFailures = "5%"
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            try await oneLine {
                _ = try LabelSelector.parse(select)
                _ = try Rollouts.parseWaves(waves)
                var body: [String: Any] = [
                    "select": select, "waves": waves,
                    "soakMs": Int(try Rollouts.parseDuration(soak, what: "--soak")),
                    "deadlineMs": Int(try Rollouts.parseDuration(deadline, what: "--deadline")),
                    "maxFailuresPercent": try Rollouts.parsePercent(maxFailures, what: "--max-failures"),
                ]
                if bundle.hasPrefix("https://") || bundle.hasPrefix("http://") {
                    body["url"] = bundle
                } else {
                    guard FileManager.default.fileExists(atPath: bundle) else { throw ControllerError.invalidInput("--bundle \(bundle): no such file") }
                    body["bundle"] = DataDirectory(path: bundle).path
                }
                if let version { body["version"] = version }
                let v = try data.admin.call("POST", "/rollouts", body: body)
                if json { return printJSON(v) }
                printRollout(v as? [String: Any] ?? [:])
            }
        }
    }

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "A rollout's waves, its failed devices and why, and its history (without ID: the newest; --all: every rollout).")
        @OptionGroup var data: DataOption
        @Argument(help: "The rollout.") var id: String?
        @Flag(help: "List every rollout, one line each.") var all = false
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            try await oneLine {
                if all {
                    let v = try data.admin.call("GET", "/rollouts")
                    if json { return printJSON(v) }
                    for r in v as? [[String: Any]] ?? [] {
                        print("\(s(r, "id"))  \(s(r, "state").padding(toLength: 9, withPad: " ", startingAt: 0)) version \(s(r, "version"))  wave \(s(r, "wave"))/\(s(r, "waves"))  select '\(s(r, "selector"))'  created \(s(r, "created"))")
                    }
                    return
                }
                let v = try data.admin.call("GET", "/rollouts/\(esc(id ?? "latest"))")
                if json { return printJSON(v) }
                printRollout(v as? [String: Any] ?? [:])
            }
        }
    }

    struct Pause: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Start no further wave (devices already updating still count).")
        @OptionGroup var data: DataOption
        @Argument(help: "The rollout.") var id: String?
        @Flag(help: "Print JSON.") var json = false
        func run() async throws { try await action(data, id, "pause", json) }
    }

    struct Resume: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Continue a paused rollout.")
        @OptionGroup var data: DataOption
        @Argument(help: "The rollout.") var id: String?
        @Flag(help: "Print JSON.") var json = false
        func run() async throws { try await action(data, id, "resume", json) }
    }

    struct Abort: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "End a rollout for good (devices that already have the new base OS keep it; a new rollout may start).")
        @OptionGroup var data: DataOption
        @Argument(help: "The rollout.") var id: String?
        @Flag(help: "Print JSON.") var json = false
        func run() async throws { try await action(data, id, "abort", json) }
    }

    static func action(_ data: DataOption, _ id: String?, _ action: String, _ json: Bool) async throws {
        try await oneLine {
            let v = try data.admin.call("POST", "/rollouts/\(esc(id ?? "latest"))/\(action)")
            if json { return printJSON(v) }
            printRollout(v as? [String: Any] ?? [:])
        }
    }
}

func printRollout(_ o: [String: Any]) {
    if let b = o["bundle"] as? [String: Any] {
        print("bundle \(s(b, "name")) (version \(s(b, "version")), signed by \(s(b, "signedBy"))) verified and served")
    }
    print("rollout \(s(o, "id")): \(s(o, "state")), version \(s(o, "version")), select '\(s(o, "selector"))', \(s(o, "committed"))/\(s(o, "devices")) committed")
    if let reason = o["reason"] as? String, !reason.isEmpty { print("reason  \(reason)") }
    for w in o["waves"] as? [[String: Any]] ?? [] {
        print("wave \(s(w, "wave")) (\(s(w, "percent"))%)  \(s(w, "state").padding(toLength: 8, withPad: " ", startingAt: 0)) \(s(w, "devices")) devices: \(s(w, "committed")) committed, \(s(w, "updating")) updating, \(s(w, "failed")) failed, \(s(w, "pending")) pending")
    }
    for f in o["failed"] as? [[String: Any]] ?? [] {
        print("failed  \(s(f, "device")) (\(s(f, "serial")), wave \(s(f, "wave"))): \(s(f, "reason"))")
    }
    for e in o["events"] as? [[String: Any]] ?? [] {
        print("history \(s(e, "at"))  \(s(e, "kind")) \(s(e, "detail")) (\(s(e, "by")))")
    }
}
