import Glibc
import OutpostPlatform
import Synchronization
import Testing

/// A fresh directory under /tmp, removed by the caller's defer.
private func temporaryDirectory() throws -> String {
    var template = Array("/tmp/outpost-platform-XXXXXX".utf8CString)
    let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
    #expect(made != nil)
    return template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
}

private func removeTree(_ path: String) {
    if let dir = opendir(path) {
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { unlink(path + "/" + name) }
        }
        closedir(dir)
    }
    rmdir(path)
}

private func directoryEntries(_ path: String) -> [String] {
    guard let dir = opendir(path) else { return [] }
    defer { closedir(dir) }
    var names: [String] = []
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if name != "." && name != ".." { names.append(name) }
    }
    return names.sorted()
}

@Suite struct SystemErrorTests {
    @Test func rendersCallObjectTextAndNumberOnOneLine() {
        let error = SystemError(call: "open", object: "/persist/update/state.json", errno: .noSuchFileOrDirectory)
        #expect(error.description == "open /persist/update/state.json: No such file or directory (errno 2)")
        #expect(error.code == ENOENT)
        let bare = SystemError(call: "pthread_create", object: "", code: EAGAIN)
        #expect(bare.description == "pthread_create: Resource temporarily unavailable (errno 11)")
    }

    @Test func failedCallThrowsErrorNamingCallAndObject() throws {
        let path = "/nonexistent-outpost-dir/file"
        #expect(throws: SystemError(call: "open", object: path, errno: .noSuchFileOrDirectory)) {
            try systemCall("open", path) { open(path, O_RDONLY) }
        }
    }

    @Test func interruptedCallIsRetriedUntilItSucceeds() throws {
        var attempts = 0
        let result = try systemCall("read", "fake") { () -> Int in
            attempts += 1
            if attempts < 4 { errno = EINTR; return -1 }
            return 42
        }
        #expect(result == 42)
        #expect(attempts == 4)
    }

    @Test func otherErrorsAreNotRetried() {
        var attempts = 0
        #expect(throws: SystemError(call: "write", object: "fd 9", errno: .badFileDescriptor)) {
            try systemCall("write", "fd 9") { () -> Int32 in
                attempts += 1
                errno = EBADF
                return -1
            }
        }
        #expect(attempts == 1)
    }

    @Test func expectedErrorsComeBackAsFailureOthersThrow() throws {
        let wouldBlock = try systemCall("recv", "sock", expecting: [.resourceTemporarilyUnavailable]) { () -> Int in
            errno = EAGAIN
            return -1
        }
        guard case .failure(let error) = wouldBlock else {
            Issue.record("EAGAIN was not returned as a failure")
            return
        }
        #expect(error.errno == .resourceTemporarilyUnavailable)
        #expect(throws: SystemError.self) {
            _ = try systemCall("recv", "sock", expecting: [.resourceTemporarilyUnavailable]) { () -> Int in
                errno = ECONNRESET
                return -1
            }
        }
    }
}

// Serialized: one test predicts the next temporary name, which the others' writes would take.
@Suite(.serialized) struct FileIOTests {
    @Test func atomicWriteReplacesContentWithExactModeAndLeavesNoTemp() throws {
        let dir = try temporaryDirectory()
        defer { removeTree(dir) }
        let path = dir + "/state.json"
        try FileIO.writeAtomically(Array("old".utf8), to: path, mode: 0o600)
        try FileIO.writeAtomically(Array("new content".utf8), to: path, mode: 0o640)
        #expect(try FileIO.read(path) == Array("new content".utf8))
        var info = stat()
        #expect(stat(path, &info) == 0)
        #expect(info.st_mode & 0o7777 == 0o640)
        #expect(directoryEntries(dir) == ["state.json"])
    }

    @Test func aTempFileLeftByADeadWriterDoesNotBlockTheNextWrite() throws {
        let dir = try temporaryDirectory()
        defer { removeTree(dir) }
        // Find the name this process will use next by provoking one failure, then plant a stale file there.
        var next = ""
        do { try FileIO.writeAtomically([1], to: dir + "/missing/x") } catch { next = error.object }
        let serial = Int(next.split(separator: "-").last ?? "") ?? 0
        let stale = dir + "/.state.tmp-\(getpid())-\(serial + 1)"
        let fd = open(stale, O_WRONLY | O_CREAT, 0o600)
        #expect(fd >= 0)
        close(fd)
        try FileIO.writeAtomically(Array("fresh".utf8), to: dir + "/state")
        #expect(try FileIO.read(dir + "/state") == Array("fresh".utf8))
    }

    @Test func atomicWriteIntoMissingDirectoryNamesTheTempFile() throws {
        let dir = try temporaryDirectory()
        defer { removeTree(dir) }
        do {
            try FileIO.writeAtomically([1, 2, 3], to: dir + "/missing/file")
            Issue.record("write into a missing directory succeeded")
        } catch {
            #expect(error.call == "open")
            #expect(error.errno == .noSuchFileOrDirectory)
            #expect(error.object.hasPrefix(dir + "/missing/.file.tmp-"))
        }
    }

    @Test func readIfPresentIsNilOnlyForAMissingFile() throws {
        let dir = try temporaryDirectory()
        defer { removeTree(dir) }
        #expect(try FileIO.readIfPresent(dir + "/absent") == nil)
        try FileIO.writeAtomically([], to: dir + "/empty")
        #expect(try FileIO.readIfPresent(dir + "/empty") == [])
        // A directory opens but cannot be read: that is an error, not "absent".
        #expect(throws: SystemError(call: "read", object: dir, errno: .isDirectory)) {
            _ = try FileIO.readIfPresent(dir)
        }
    }

    @Test func readRefusesFilesOverTheLimit() throws {
        let dir = try temporaryDirectory()
        defer { removeTree(dir) }
        try FileIO.writeAtomically([UInt8](repeating: 7, count: 40_000), to: dir + "/big")
        #expect(try FileIO.read(dir + "/big", limit: 40_000).count == 40_000)
        #expect(throws: SystemError(call: "read", object: dir + "/big", errno: .fileTooLarge)) {
            _ = try FileIO.read(dir + "/big", limit: 39_999)
        }
    }

    @Test func writeInPlaceNeedsAnExistingFile() throws {
        let dir = try temporaryDirectory()
        defer { removeTree(dir) }
        #expect(throws: SystemError(call: "open", object: dir + "/knob", errno: .noSuchFileOrDirectory)) {
            try FileIO.writeInPlace("1\n", to: dir + "/knob")
        }
        try FileIO.writeAtomically(Array("0\n".utf8), to: dir + "/knob")
        try FileIO.writeInPlace("1\n", to: dir + "/knob")
        #expect(try FileIO.read(dir + "/knob") == Array("1\n".utf8))
    }
}

@Suite struct ClockTests {
    @Test func sleepLastsAtLeastTheDurationAndTheClockMovesForward() {
        let start = MonotonicClock.now()
        MonotonicClock.sleep(for: .milliseconds(30))
        let end = MonotonicClock.now()
        #expect(end > start)
        #expect(end - start >= .milliseconds(30))
        #expect(start.elapsed >= .milliseconds(30))
    }

    @Test func deadlineCountsDownAndPasses() {
        let deadline = Deadline(after: .milliseconds(20))
        #expect(!deadline.hasPassed)
        #expect(deadline.remaining <= .milliseconds(20))
        #expect(deadline.remaining > .zero)
        MonotonicClock.sleep(for: .milliseconds(25))
        #expect(deadline.hasPassed)
        #expect(deadline.remaining == .zero)
    }

    @Test func pollMillisecondsRoundUpAndStayInRange() {
        #expect(Duration.zero.pollMilliseconds == 1)
        #expect(Duration.nanoseconds(1).pollMilliseconds == 1)
        #expect(Duration.microseconds(1500).pollMilliseconds == 2)
        #expect(Duration.seconds(3).pollMilliseconds == 3000)
        #expect(Duration.seconds(1_000_000).pollMilliseconds == 86_400_000)
        #expect(Duration.seconds(-5).pollMilliseconds == 1)
    }

    @Test func durationNanosecondsSaturate() {
        #expect(Duration.milliseconds(1500).nanoseconds == 1_500_000_000)
        #expect(Duration.seconds(Int64.max).nanoseconds == .max)
        #expect(Duration.seconds(Int64.min).nanoseconds == .min)
    }
}

@Suite struct ThreadTests {
    @Test func namedThreadRunsUnderItsNameAndJoinWaitsForIt() throws {
        let seen = Mutex<String?>(nil)
        let thread = try NamedThread.start(name: "outpost-test-worker") {
            MonotonicClock.sleep(for: .milliseconds(20))
            let comm = (try? FileIO.read("/proc/thread-self/comm")).map { String(decoding: $0, as: UTF8.self) }
            seen.withLock { $0 = comm }
        }
        thread.join()
        thread.join()
        // The kernel keeps 15 bytes of a thread name.
        #expect(seen.withLock { $0 } == "outpost-test-wo\n")
        #expect(thread.name == "outpost-test-wo")
    }

    @Test func detachedThreadRuns() throws {
        let wakeup = try Wakeup(label: "test")
        try NamedThread.detach(name: "detached") { wakeup.signal() }
        #expect(wakeup.wait(timeout: .seconds(10)))
    }

    @Test func stopSignalSleepsTheWholeTimeUnlessRaised() {
        let stop = StopSignal()
        let start = MonotonicClock.now()
        #expect(stop.sleep(for: .milliseconds(30)))
        #expect(start.elapsed >= .milliseconds(30))
        #expect(!stop.isRaised)
    }

    @Test func raisingWakesASleeperAtOnce() throws {
        let stop = StopSignal()
        let woke = Mutex<Bool?>(nil)
        let sleeper = try NamedThread.start(name: "sleeper") {
            let full = stop.sleep(for: .seconds(30))
            woke.withLock { $0 = full }
        }
        MonotonicClock.sleep(for: .milliseconds(20))
        let start = MonotonicClock.now()
        stop.raise()
        sleeper.join()
        #expect(start.elapsed < .seconds(5))
        #expect(woke.withLock { $0 } == false)
        #expect(stop.isRaised)
        // Raised stays raised: later sleeps return at once, and poll sees the fd readable.
        #expect(!stop.sleep(for: .seconds(30)))
        var entry = pollfd(fd: stop.fileDescriptor, events: Int16(POLLIN), revents: 0)
        #expect(poll(&entry, 1, 0) == 1)
    }

    @Test func wakeupIsNeverLostAndIsConsumedByTheWait() throws {
        let wakeup = try Wakeup(label: "test")
        #expect(!wakeup.wait(timeout: .milliseconds(10)))
        wakeup.signal()
        wakeup.signal()
        #expect(wakeup.wait(timeout: .zero))
        // Both posts were consumed by the one wait: the next one times out.
        let start = MonotonicClock.now()
        #expect(!wakeup.wait(timeout: .milliseconds(20)))
        #expect(start.elapsed >= .milliseconds(20))
        #expect(!wakeup.consume())
    }
}
