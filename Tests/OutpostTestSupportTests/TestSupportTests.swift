import Foundation
import OutpostTestSupport
import Testing

/// The helpers every suite leans on: if these lie, every test built on them can pass wrongly.
@Suite struct TestSupportTests {
    @Test func aCommandsStreamsAndExitStatusAreKeptApart() throws {
        let r = try runCommand(["sh", "-c", "echo out; echo err >&2; exit 3"])
        #expect(r.status == 3 && r.stdout == "out\n" && r.stderr == "err\n")
        let killed = try runCommand(["sh", "-c", "kill -TERM $$"])
        #expect(killed.status == 128 + SIGTERM)
        #expect(throws: TestSupportError.self) { try sh("false") }
        #expect(try sh("printf", "%s", "x") == "x")
        #expect(try runCommand(["sh", "-c", "echo $OUTPOST_PROBE"], environment: ["OUTPOST_PROBE": "set"]).stdout == "set\n")
    }

    @Test func aCommandPastItsTimeoutIsKilledAndSaysSo() throws {
        let start = ContinuousClock.now
        #expect(throws: TestSupportError.self) { try runCommand(["sleep", "30"], timeout: .milliseconds(300)) }
        #expect(start.duration(to: .now) < .seconds(10))
    }

    @Test func aCommandThatLeavesADaemonHoldingItsOutputStillReturns() throws {
        let start = ContinuousClock.now
        let r = try runCommand(["sh", "-c", "echo started; sleep 20 & exit 0"], timeout: .seconds(15))
        #expect(r.status == 0 && r.stdout.hasPrefix("started"))
        #expect(start.duration(to: .now) < .seconds(10))
    }

    @Test func aChildIsTerminatedByItsPIDAndReaped() throws {
        let child = try ChildProcess(["sleep", "30"])
        #expect(child.isRunning && processAlive(child.pid))
        child.terminate()
        #expect(!child.isRunning && !processAlive(child.pid))
        let echo = try ChildProcess(["sh", "-c", "read line; test \"$line\" = ping"], withInput: true)
        try echo.write("ping\n")
        #expect(echo.wait(.seconds(10)) == 0)
    }

    @Test func theSameSeedGivesTheSameSequenceAndTheSeedIsKept() {
        var a = SplitMix64(seed: 42), b = SplitMix64(seed: 42), c = SplitMix64(seed: 43)
        let first = a.bytes(64)
        #expect(first == b.bytes(64) && first != c.bytes(64))
        #expect(a.seed == 42)
        let seeded = SplitMix64.forTest()
        if let fixed = SplitMix64.environmentSeed { #expect(seeded.seed == fixed) }
    }

    @Test func aTemporaryDirectoryIsGoneWithItsOwner() throws {
        var path = ""
        do {
            let dir = try TemporaryDirectory("support")
            path = dir.path
            #expect(FileManager.default.createFile(atPath: path + "/f", contents: Data("x".utf8)))
            withExtendedLifetime(dir) {}
        }
        #expect(!path.isEmpty && !FileManager.default.fileExists(atPath: path))
        let a = try TemporaryDirectory.create("support"), b = try TemporaryDirectory.create("support")
        defer { [a, b].forEach { try? FileManager.default.removeItem(atPath: $0) } }
        #expect(a != b)
    }

    @Test func waitingStopsAtTheConditionOrTheDeadlineAndNamesWhatItAwaited() throws {
        var polls = 0
        #expect(waitUntil(.seconds(5), every: .milliseconds(1)) { polls += 1; return polls == 3 } != nil)
        #expect(waitUntil(.milliseconds(50)) { false } == nil)
        do {
            try waitFor("the moon", within: .milliseconds(50)) { false }
            Issue.record("a condition that never held was reported as met")
        } catch {
            #expect("\(error)".hasPrefix("the moon: not within") && !"\(error)".contains("\n"))
        }
    }

    @Test func theTestPKIsCertificatesChainToItsCAAndNotToTheOtherOne() throws {
        let dir = try TemporaryDirectory("pki")
        let pki = try TestPKI(dir: dir.path, serverName: "10.200.0.1")
        let client = try pki.clientCertificate("device 1")
        #expect(try sh("openssl", "verify", "-CAfile", pki.ca, "-purpose", "sslserver", pki.cert).contains("OK"))
        #expect(try sh("openssl", "verify", "-CAfile", pki.ca, "-purpose", "sslclient", client.cert).contains("OK"))
        #expect(try runCommand(["openssl", "verify", "-CAfile", pki.otherCA, pki.cert]).status != 0)
        #expect(try sh("openssl", "x509", "-in", pki.cert, "-noout", "-ext", "subjectAltName").contains("IP Address:10.200.0.1"))
        let named = try TestPKI(dir: try TemporaryDirectory.create("pki-dns"), serverName: "controller.test")
        defer { try? FileManager.default.removeItem(atPath: named.dir) }
        #expect(try sh("openssl", "x509", "-in", named.cert, "-noout", "-ext", "subjectAltName").contains("DNS:controller.test"))
        withExtendedLifetime(dir) {}
    }
}
