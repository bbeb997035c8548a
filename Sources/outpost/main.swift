import ArgumentParser
import Foundation
import OutpostBuilder
import OutpostDisk

/// `outpost`: the build-host tool. Exit codes: 0 ok, 1 failure, 2 usage error.
struct Outpost: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "outpost",
        abstract: "Build, inspect and boot Outpost disk images.",
        subcommands: [ImageCommand.self, SlotCommand.self, Run.self, KeysCommand.self, BundleCommand.self, VaultCommand.self])
}

struct ImageCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "image", abstract: "Build and maintain GPT disk images.",
        subcommands: [ImageBuild.self, ImageInspect.self, ImageSetSlot.self])
}

/// Entry point with the project's exit-code convention and one-line errors:
/// help → 0, usage errors → 2, failures → 1 with "outpost: error: ...".
func runMain() -> Never {
    func finish(_ error: Error) -> Never {
        if let e = error as? ExitCode { exit(e.rawValue) }
        let code = Outpost.exitCode(for: error)
        if code == .success {
            print(Outpost.fullMessage(for: error))
            exit(0)
        }
        if error is ValidationError || "\(type(of: error))".contains("CommandError") {
            FileHandle.standardError.write(Data("outpost: \(Outpost.message(for: error))\nSee 'outpost --help'.\n".utf8))
            exit(2)
        }
        FileHandle.standardError.write(Data("outpost: error: \(error)\n".utf8))
        exit(1)
    }
    do {
        var command = try Outpost.parseAsRoot()
        try command.run()
        exit(0)
    } catch {
        finish(error)
    }
}

runMain()
