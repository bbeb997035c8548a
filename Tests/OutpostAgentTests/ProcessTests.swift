#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import Testing
@testable import OutpostAgent
@testable import OutpostEarlyBoot
import OutpostPlatform

// The one child/exit model (Processes/): spawn through the shim, every exit
// through the reaper. Each test uses its own reaper with the `ownChildren`
// scope, as any process but PID 1 does, so it never takes another test's child.

@Test func aChildThatExitsAtOnceIsNeverMissedAndItsStatusIsDecoded() throws {
    let reaper = Reaper(scope: .ownChildren)
    #expect(try reaper.run("/bin/true", [], timeout: .seconds(10)) == .exited(0))
    #expect(try reaper.run("/bin/sh", ["-c", "exit 3"], timeout: .seconds(10)) == .exited(3))
    #expect(try reaper.run("/bin/sh", ["-c", "kill -9 $$"], timeout: .seconds(10)) == .signaled(9))
    #expect(reaper.subscribedPIDs.isEmpty)
    #expect(reaper.orphansReaped == 0)
}

@Test func aSubscriberHearsTheExitFromWhicheverThreadReaps() throws {
    let reaper = Reaper(scope: .ownChildren)
    let heard = Mutex<[ChildExit]>([])
    let pid = try reaper.spawn("/bin/sh", ["-c", "exit 7"]) { exit in heard.withLock { $0.append(exit) } }
    #expect(pid > 0)
    #expect(reaper.subscribedPIDs == [pid])
    let deadline = Deadline(after: .seconds(10))
    while heard.withLock({ $0.isEmpty }) && !deadline.hasPassed {
        reaper.reapAll()
        MonotonicClock.sleep(for: .milliseconds(5))
    }
    #expect(heard.withLock { $0 } == [.exited(7)])
    #expect(reaper.subscribedPIDs.isEmpty)
}

@Test func aChildPastItsTimeoutIsKilledAndReportedAsSuch() throws {
    let reaper = Reaper(scope: .ownChildren)
    let started = MonotonicClock.now()
    #expect(try reaper.run("/bin/sleep", ["30"], timeout: .milliseconds(200)) == nil)
    #expect(started.elapsed < .seconds(10))
    #expect(throws: SubprocessError.timedOut(path: "/bin/sleep", seconds: 0)) {
        try Subprocess.run("/bin/sleep", ["30"], timeout: .milliseconds(100), reaper: reaper)
    }
    #expect(reaper.subscribedPIDs.isEmpty)
}

@Test func subprocessFeedsStandardInputAndNamesHowAToolFailed() throws {
    let reaper = Reaper(scope: .ownChildren)
    let check = ["-c", #"read word; test "$word" = hello"#]
    try Subprocess.run("/bin/sh", check, input: "hello\n", reaper: reaper)
    #expect(throws: SubprocessError.exited(path: "/bin/sh", status: 1)) {
        try Subprocess.run("/bin/sh", check, input: "goodbye\n", reaper: reaper)
    }
    #expect(throws: SubprocessError.killed(path: "/bin/sh", signal: 15)) {
        try Subprocess.run("/bin/sh", ["-c", "kill -15 $$"], reaper: reaper)
    }
    #expect(throws: SubprocessError.notFound(path: "/nonexistent/mke2fs")) {
        try Subprocess.run("/nonexistent/mke2fs", [], reaper: reaper)
    }
    #expect(SubprocessError.exited(path: "/sbin/mke2fs", status: 1).description == "/sbin/mke2fs exited with status 1")
}

/// tune2fs and resize2fs print banners on success: a helper's output reaches standard
/// error (the console, in PID 1) only when it fails, each line named by the helper.
@Test func aHelpersOutputIsShownOnlyWhenItFails() throws {
    let reaper = Reaper(scope: .ownChildren)
    let path = "/tmp/outpost-helper-output-\(getpid())"
    let file = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
    try #require(file >= 0)
    defer { unlink(path) }
    let saved = dup(2)
    try #require(saved >= 0)
    dup2(file, 2)
    try? Subprocess.run("/bin/sh", ["-c", "echo quiet-banner-ok; echo quiet-warning-ok >&2"], reaper: reaper)
    let failure = #expect(throws: SubprocessError.self) {
        try Subprocess.run("/bin/sh", ["-c", "echo loud-banner-failed; echo loud-reason-failed >&2; exit 4"], reaper: reaper)
    }
    dup2(saved, 2)
    close(saved)
    close(file)
    let shown = String(decoding: try FileIO.read(path), as: UTF8.self)
    #expect(failure == .exited(path: "/bin/sh", status: 4))
    #expect(!shown.contains("quiet-"), "a successful helper's output reached standard error: \(shown)")
    #expect(shown.contains("sh: loud-banner-failed\n") && shown.contains("sh: loud-reason-failed\n"), "\(shown)")
}
