// outpostd's command line when it is not PID 1, on swift-argument-parser.
// Each command's work lives in OutpostAgent (AgentCommand); this file only
// says which words exist, documents them for --help, and maps the outcome to
// the project's exit codes: 0 ok, 1 failure, 2 usage error (the parser's own
// default for a usage error would be 64, EX_USAGE).

import ArgumentParser
import OutpostAgent

struct Outpostd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "outpostd",
        abstract: "The Outpost device agent, and the commands that ask it.",
        discussion: """
            As PID 1 (/init of the initramfs) outpostd runs early boot and then supervises the \
            device; it parses no command line then. Run any other way, it is one of the client \
            commands below. Exit codes: 0 ok, 1 failure, 2 usage error.
            """,
        subcommands: commands)

    #if DEBUG || OUTPOST_FAULT_INJECTION
    static let commands: [any ParsableCommand.Type] = [Status.self, Update.self, Debug.self]
    #else
    static let commands: [any ParsableCommand.Type] = [Status.self, Update.self]
    #endif

    func run() throws {
        throw ValidationError("a command is needed: status or update")
    }

    /// Parses `arguments` (argv without argv[0]), runs the command and returns
    /// the process exit code. Help goes to standard output; a usage error goes
    /// to standard error with the usage of the command it concerns.
    static func run(_ arguments: [String]) -> Int32 {
        do {
            var command = try parseAsRoot(arguments)
            try command.run()
            return 0
        } catch let code as ExitCode {
            // A command's own outcome (it printed its message already).
            return code.rawValue
        } catch {
            let text = fullMessage(for: error)
            switch exitCode(for: error) {
            case .success:
                AgentCommand.write(1, text.hasSuffix("\n") ? text : text + "\n")
                return 0
            case .validationFailure:
                AgentCommand.write(2, text.hasSuffix("\n") ? text : text + "\n")
                return 2
            default:
                AgentCommand.write(2, "outpostd: \(text)\n")
                return 1
            }
        }
    }
}

/// Turns a command's exit code into the parser's outcome.
func finish(_ code: Int32) throws {
    if code != 0 { throw ExitCode(code) }
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Ask the running outpostd (PID 1) how the device is.",
        discussion: """
            Prints uptime, the booted slot and version, the last boot's reason, each component's \
            state and restart count, the watchdog in use and outpostd's own footprint. PID 1 \
            renders the report from its live state and sends it over /run/outpost/control.sock, \
            so the answer is never stale; a PID 1 that does not answer is reported as a failure.
            """)

    @Flag(help: "Print one JSON document (sorted keys) that also carries every network port.")
    var json = false

    func run() throws { try finish(AgentCommand.status(json: json)) }
}

struct Update: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Install a signed update bundle, or show the update state.",
        discussion: """
            Runs beside PID 1 (a debug shell, a maintenance session) and drives the same update \
            engine as the update component, so a bundle is held to exactly the same checks.
            """,
        subcommands: [Apply.self, UpdateStatus.self])

    func run() throws { throw ValidationError("a command is needed: apply or status") }

    struct Apply: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "apply",
            abstract: "Verify a bundle, write it to the inactive slot and restart into it.",
            discussion: """
                The bundle's signatures and policy (security floor, board, slot size) are checked \
                before anything is written. It is then written to the inactive slot, read back, \
                the slot is marked `updating`, and PID 1 restarts into it; the new slot must stay \
                healthy for the test window before it is committed. An http:// or https:// \
                download that is interrupted resumes where it stopped.
                """)

        @Argument(help: ArgumentHelp("A bundle file, or an http:// or https:// URL to download it from.",
                                     valueName: "FILE|URL"))
        var source: String

        @Option(name: .customLong("ca"),
                help: ArgumentHelp("""
                    A PEM file of CA certificates trusted for https:// downloads (repeatable). \
                    Without it /config/root-ca.pem is trusted when present; the system store always is.
                    """, valueName: "PEM"))
        var caFiles: [String] = []

        @Flag(help: "Install a version that failed before.")
        var force = false

        @Flag(help: "Install only; stay on the running slot until the next restart.")
        var noReboot = false

        func run() throws {
            try finish(AgentCommand.updateApply(source, caFiles: caFiles, force: force, reboot: !noReboot))
        }
    }

    struct UpdateStatus: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "status",
            abstract: "Show the slots, versions and the last update's result.",
            discussion: """
                Prints each slot and its state, the committed version, the security floor, the \
                version in flight, versions that failed, and the last result with its reason.
                """)

        @Flag(help: "Print one JSON document (sorted keys).")
        var json = false

        func run() throws { try finish(AgentCommand.updateStatus(json: json)) }
    }
}

#if DEBUG || OUTPOST_FAULT_INJECTION
/// Helper programs for fault-injection scripts; only debug images have them.
struct Debug: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Helper programs for fault-injection scripts (debug images only).",
        subcommands: [Sleep.self, Exit.self, Orphans.self])

    func run() throws { throw ValidationError("a command is needed: sleep, exit or orphans") }

    struct Sleep: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Stay up for SECONDS, then exit 0.")
        @Argument(help: ArgumentHelp("How long to stay up.", valueName: "SECONDS")) var seconds: Int

        func validate() throws {
            guard seconds >= 0 else { throw ValidationError("SECONDS must not be negative") }
        }

        func run() throws { try finish(AgentCommand.Debug.sleep(seconds: seconds)) }
    }

    struct Exit: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Exit at once with status CODE.")
        @Argument(help: ArgumentHelp("The exit status.", valueName: "CODE")) var code: Int

        func run() throws { throw ExitCode(Int32(truncatingIfNeeded: code)) }
    }

    struct Orphans: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Start COUNT children that outlive this process, so PID 1 inherits and reaps them.")
        @Argument(help: ArgumentHelp("How many children.", valueName: "COUNT")) var count: Int

        func validate() throws {
            guard count >= 0 else { throw ValidationError("COUNT must not be negative") }
        }

        func run() throws { try finish(AgentCommand.Debug.orphans(count: count)) }
    }
}
#endif
