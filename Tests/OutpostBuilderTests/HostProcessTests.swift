import Foundation
import Synchronization
import Testing
import OutpostBuilder
import OutpostProcess

/// The host's one process runner: output, errors in one line, the builder's
/// fixed environment, and no deadlock with many callers at once.
///
/// The synchronous API blocks its thread while swift-subprocess needs the
/// cooperative pool, so, as in `outpost` (main thread, swtpm thread), it is
/// called here from threads of its own (`offPool`), never from the pool that
/// runs the tests.
@Suite("Host process runner (swift-subprocess)")
struct HostProcessTests {
    func offPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread { continuation.resume(with: Result { try body() }) }
        }
    }

    @Test func returnsStandardOutputAndTheFixedLocaleAndTimeZone() async throws {
        #expect(try await offPool { try Tool.run(["printf", "%s-%s", "a", "b"]) } == "a-b")
        let env = try await offPool {
            try Tool.run(["sh", "-c", "printf '%s %s %s' \"$LC_ALL\" \"$TZ\" \"${OUTPOST_UNSET-unset}\""],
                         environment: ["OUTPOST_UNSET": ""])
        }
        #expect(env == "C UTC unset")
        #expect(try await offPool { try Tool.run(["pwd"], in: URL(fileURLWithPath: "/usr")) } == "/usr\n")
    }

    @Test func aFailureIsOneLineWithTheCommandItsStatusAndTheLastStderrLine() async throws {
        let error = await #expect(throws: HostProcessError.self) {
            try await offPool { try Tool.run(["sh", "-c", "echo first >&2; echo 'the real reason' >&2; echo out; exit 3"]) }
        }
        guard case .failed(_, let termination, let stderr)? = error else { Issue.record("not a failure: \(String(describing: error))"); return }
        #expect(termination == .exited(3))
        #expect(stderr.contains("first"))
        let line = "\(error.map { "\($0)" } ?? "")"
        #expect(line.hasPrefix("sh -c "))
        #expect(line.hasSuffix("exited with status 3: the real reason"))
        #expect(!line.contains("\n"))
    }

    @Test func aSignalAndAMissingToolAreNamed() async throws {
        let killed = await #expect(throws: HostProcessError.self) {
            try await offPool { try Tool.run(["sh", "-c", "kill -KILL $$"]) }
        }
        #expect(killed.map { "\($0)" }?.hasSuffix("was killed by signal 9") == true)
        let missing = await #expect(throws: HostProcessError.self) {
            try await offPool { try Tool.run(["outpost-no-such-tool", "x"]) }
        }
        #expect(missing == .notFound("outpost-no-such-tool"))
    }

    /// 8 MiB on stdout and 1 MiB on stderr at once: both pipes are drained
    /// together, so neither fills up and blocks the tool.
    @Test(.timeLimit(.minutes(1))) func largeOutputOnBothStreamsDoesNotBlock() async throws {
        let out = try await offPool {
            try Tool.run(["sh", "-c", "head -c 1048576 /dev/zero >&2; head -c 8388608 /dev/zero | tr '\\0' x"])
        }
        #expect(out.utf8.count == 8 << 20)
        #expect(out.utf8.allSatisfy { $0 == UInt8(ascii: "x") })
    }

    /// Synchronous callers on eight threads of their own (as `outpost run`'s
    /// swtpm thread and main thread are) all finish together.
    @Test(.timeLimit(.minutes(1))) func manyConcurrentSynchronousCallersAllFinish() async throws {
        let results = try await withThrowingTaskGroup(of: String.self) { group in
            for i in 0..<8 {
                group.addTask { try await offPool { try Tool.run(["sh", "-c", "sleep 0.2; echo \(i)"]) } }
            }
            var all: [String] = []
            for try await r in group { all.append(r) }
            return all
        }
        #expect(Set(results) == Set((0..<8).map { "\($0)\n" }))
    }

    /// The async API from many tasks at once.
    @Test(.timeLimit(.minutes(1))) func manyConcurrentAsyncCallersAllFinish() async throws {
        let results = try await withThrowingTaskGroup(of: String.self) { group in
            for i in 0..<8 {
                group.addTask { try await HostProcess.output(["sh", "-c", "sleep 0.2; echo \(i)"]) }
            }
            var all: [String] = []
            for try await r in group { all.append(r) }
            return all
        }
        #expect(Set(results) == Set((0..<8).map { "\($0)\n" }))
    }

    /// The streaming mode `outpost run --headless` uses: stdout and stderr
    /// through one pipe, the process handle at once, the termination at the end.
    @Test(.timeLimit(.minutes(1))) func streamsBothOutputsAndReportsTheProcess() async throws {
        let seen = Mutex<[UInt8]>([])
        let pid = Mutex<pid_t>(0)
        let ended = try await HostProcess.run(["sh", "-c", "echo one; echo two >&2; exit 5"],
                                        output: .stream { chunk in seen.withLock { $0 += chunk } },
                                        started: { p in pid.withLock { $0 = p.pid } })
        #expect(ended == .exited(5))
        #expect(ended.shellStatus == 5)
        #expect(String(decoding: seen.withLock { $0 }, as: UTF8.self) == "one\ntwo\n")
        #expect(pid.withLock { $0 } > 0)
    }

    /// `stop()` from the output handler (its thread also reaps the child):
    /// SIGTERM ends it, and a process that ignores SIGTERM gets SIGKILL.
    @Test(.timeLimit(.minutes(1))) func stopEscalatesToKillWithoutBlocking() async throws {
        let process = Mutex<RunningProcess?>(nil)
        // Stopped once the trap is set (it prints "started"), from the output handler.
        let ended = try await HostProcess.run(["sh", "-c", "trap '' TERM; echo started; while :; do sleep 0.1; done"],
                                        output: .stream { chunk in
                                            if String(decoding: chunk, as: UTF8.self).contains("started") {
                                                process.withLock { $0 }?.stop(grace: .milliseconds(300))
                                            }
                                        },
                                        started: { p in process.withLock { $0 = p } })
        #expect(ended == .signaled(SIGKILL))
        #expect(ended.shellStatus == 128 + SIGKILL)
    }
}
