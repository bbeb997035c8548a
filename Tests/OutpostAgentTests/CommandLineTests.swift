import Foundation
import Testing

/// Runs the outpostd binary built beside this test bundle (`swift build
/// --build-tests` builds both) as a client, the way a shell on the device does.
private func outpostd(_ arguments: [String]) throws -> (code: Int32, out: String, err: String) {
    let directory = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
    let binary = directory.appendingPathComponent("outpostd")
    try #require(FileManager.default.isExecutableFile(atPath: binary.path),
                 "no outpostd at \(binary.path); run swift build --build-tests first")
    let process = Process()
    process.executableURL = binary
    process.arguments = arguments
    let out = Pipe(), err = Pipe()
    process.standardOutput = out
    process.standardError = err
    try process.run()
    let outData = out.fileHandleForReading.readDataToEndOfFile()
    let errData = err.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: outData, as: UTF8.self), String(decoding: errData, as: UTF8.self))
}

@Test(arguments: [
    (["--help"], ["status", "update", "Exit codes: 0 ok, 1 failure, 2 usage error"]),
    (["status", "--help"], ["USAGE: outpostd status [--json]", "control.sock"]),
    (["update", "--help"], ["apply", "status"]),
    (["update", "apply", "--help"], ["<FILE|URL>", "--ca <PEM>", "--force", "--no-reboot", "https://"]),
    (["update", "status", "--help"], ["USAGE: outpostd update status [--json]", "security floor"]),
    (["help", "update", "apply"], ["--no-reboot"]),
    (["help"], ["status", "update"]),
    (["-h"], ["status", "update"]),
])
func everyCommandHasCompleteHelpOnStandardOutputAndExitsZero(arguments: [String], mentions: [String]) throws {
    let result = try outpostd(arguments)
    #expect(result.code == 0, "\(result.err)")
    #expect(result.err.isEmpty)
    for word in mentions { #expect(result.out.contains(word), "\(arguments) help lacks \(word):\n\(result.out)") }
}

@Test(arguments: [
    [], ["bogus"], ["status", "--bogus"], ["status", "extra"], ["update"], ["update", "apply"],
    ["update", "apply", "a.bundle", "b.bundle"], ["update", "apply", "a.bundle", "--ca"], ["update", "status", "--yaml"],
])
func usageErrorsExitTwoWithTheUsageOnStandardError(arguments: [String]) throws {
    let result = try outpostd(arguments)
    #expect(result.code == 2, "\(arguments): \(result.out)\(result.err)")
    #expect(result.out.isEmpty)
    #expect(result.err.contains("Usage: outpostd"), "\(result.err)")
}

@Test func statusWithoutARunningPID1FailsWithOneLineAndExitOne() throws {
    // No PID 1 agent listens on this machine's /run/outpost/control.sock.
    let result = try outpostd(["status", "--json"])
    #expect(result.code == 1)
    #expect(result.out.isEmpty)
    #expect(result.err.hasPrefix("outpostd: status: cannot reach PID 1: connect /run/outpost/control.sock"), "\(result.err)")
    #expect(result.err.split(separator: "\n").count == 1)
}
