import Foundation
import Synchronization
import Testing
@testable import OutpostAgent
import OutpostPlatform

// The supervisor's decisions, without threads or devices: backoff, crash
// loops, reboot reasons, liveness and the watchdog verdict.

@Test func restartDelaysDoubleFromOneSecondUpToTheCap() {
    var policy = RestartPolicy()
    policy.crashLoopLimit = 100
    policy.maxDelayMilliseconds = 10_000
    var tracker = RestartTracker(policy: policy)
    var delays: [Int64] = []
    for i in 0..<6 {
        if case .restart(let delay, _) = tracker.recordFailure(startedAt: Int64(i) * 100, now: Int64(i) * 100 + 50) {
            delays.append(delay)
        }
    }
    #expect(delays == [1_000, 2_000, 4_000, 8_000, 10_000, 10_000])
}

@Test func aComponentThatRanHealthyRestartsAfterTheInitialDelayAgain() {
    var tracker = RestartTracker(policy: RestartPolicy())
    _ = tracker.recordFailure(startedAt: 0, now: 10)
    _ = tracker.recordFailure(startedAt: 1_000, now: 1_010)
    // Ran for two minutes before failing: the backoff starts over.
    #expect(tracker.recordFailure(startedAt: 2_000, now: 200_000) == .restart(afterMilliseconds: 1_000, attempt: 1))
}

@Test func theSixthFailureInsideTheWindowEscalates() {
    var tracker = RestartTracker(policy: RestartPolicy())
    var decisions: [RestartDecision] = []
    for i in 0..<6 { decisions.append(tracker.recordFailure(startedAt: Int64(i) * 1000, now: Int64(i) * 1000 + 1)) }
    #expect(decisions.prefix(5).allSatisfy { if case .restart = $0 { return true } else { return false } })
    #expect(decisions.last == .escalate(failures: 6, windowMilliseconds: 120_000))
    #expect(tracker.totalRestarts == 5)
}

@Test func failuresSpreadBeyondTheWindowNeverEscalate() {
    var tracker = RestartTracker(policy: RestartPolicy())
    for i in 0..<20 {
        let now = Int64(i) * 30_000
        if case .escalate = tracker.recordFailure(startedAt: now - 10, now: now) { Issue.record("escalated at \(i)") }
    }
}

// MARK: reboot reasons

private let session = StatusRecord([("boot-id", "b1"), ("slot", "IMGA"), ("time", "100")])

@Test func noRecordsAtAllIsTheFirstBoot() {
    #expect(LastBoot.determine(from: PreviousBootEvidence(), currentSlot: "IMGA").reason == .firstBoot)
}

@Test func aSessionWithoutShutdownRecordIsAPowerLossAtTheLastHeartbeat() {
    let e = PreviousBootEvidence(session: session, heartbeat: StatusRecord([("boot-id", "b1"), ("time", "160")]))
    let last = LastBoot.determine(from: e, currentSlot: "IMGA")
    #expect(last.reason == .powerLoss)
    #expect(last.time == 160)
}

@Test func anOrderlyShutdownReportsItsReasonAndComponent() {
    let e = PreviousBootEvidence(session: session, shutdown: StatusRecord([
        ("boot-id", "b1"), ("reason", "crash-loop"), ("component", "netd"), ("time", "170")]))
    let last = LastBoot.determine(from: e, currentSlot: "IMGA")
    #expect(last == LastBoot(reason: .crashLoop, component: "netd", time: 170))
}

@Test func theFeedersRecordNamesTheHungComponent() {
    let e = PreviousBootEvidence(session: session, watchdogRecord: StatusRecord([
        ("boot-id", "b1"), ("component", "init"), ("time", "180"), ("detail", "no liveness")]), watchdogCardReset: true)
    let last = LastBoot.determine(from: e, currentSlot: "IMGA")
    #expect(last.reason == .watchdog)
    #expect(last.component == "init")
}

@Test func cardResetAloneStillMeansWatchdog() {
    let e = PreviousBootEvidence(session: session, watchdogCardReset: true)
    #expect(LastBoot.determine(from: e, currentSlot: "IMGA").reason == .watchdog)
}

@Test func aPstorePanicRecordBeatsTheWatchdog() {
    let e = PreviousBootEvidence(session: session, watchdogCardReset: true, panicRecord: ("dmesg-efi-1", 190))
    #expect(LastBoot.determine(from: e, currentSlot: "IMGA").reason == .panic)
}

@Test func anUpdateThatCameUpOnTheOtherSlotIsAFallback() {
    let shutdown = StatusRecord([("boot-id", "b1"), ("reason", "update"), ("expected-slot", "IMGB")])
    let e = PreviousBootEvidence(session: session, shutdown: shutdown)
    #expect(LastBoot.determine(from: e, currentSlot: "IMGB").reason == .update)
    #expect(LastBoot.determine(from: e, currentSlot: "IMGA").reason == .fallback)
}

@Test func aTrialSlotThatResetIntoTheOldSlotIsAFallbackNamingTheCause() {
    let trial = StatusRecord([("boot-id", "b2"), ("slot", "IMGB"), ("time", "100")])
    let e = PreviousBootEvidence(session: trial, watchdogCardReset: true)
    let last = LastBoot.determine(from: e, currentSlot: "IMGA")
    #expect(last.reason == .fallback)
    #expect(last.detail?.contains("watchdog") == true)
}

@Test func statusRecordsRoundTripAndFlattenNewlines() {
    let record = StatusRecord([("reason", "user"), ("detail", "two\nlines")])
    #expect(StatusRecord(text: record.text) == StatusRecord([("reason", "user"), ("detail", "two lines")]))
}

@Test func everyReasonIsOneWordOfTheIssue() {
    #expect(RebootReason.allCases.map(\.rawValue).sorted() ==
            ["controller", "crash-loop", "fallback", "first-boot", "panic", "power-loss", "update", "user", "watchdog"])
}

// MARK: liveness and the watchdog verdict

private final class FakeClock: Sendable {
    private let now = Mutex<Int64>(0)
    func advance(_ ms: Int64) { now.withLock { $0 += ms } }
    var value: Int64 { now.withLock { $0 } }
}

@Test func aCriticalComponentPastItsDeadlineStopsTheFeedAndIsNamed() {
    let clock = FakeClock()
    let supervisor = Supervisor(reaper: Reaper(), log: { _ in }, clock: { clock.value })
    supervisor.add(ComponentSpec(name: "init", critical: true, livenessDeadlineMilliseconds: 10_000, body: .external))
    supervisor.add(ComponentSpec(name: "ui", livenessDeadlineMilliseconds: 1_000, body: .external))
    supervisor.startAll()
    clock.advance(9_000)
    supervisor.beat("init")
    clock.advance(9_000)
    #expect(supervisor.feedVerdict() == .feed, "a non-critical hang must not reset the device")
    _ = supervisor.tick()
    #expect(supervisor.snapshot().first { $0.name == "ui" }?.state == .hung)
    clock.advance(2_000)
    guard case .withhold(let component, _) = supervisor.feedVerdict() else {
        Issue.record("still feeding with init silent for 11 s")
        return
    }
    #expect(component == "init")
}

@Test func persistMayRefuseWritesOnlyForItsGracePeriod() {
    let clock = FakeClock()
    let supervisor = Supervisor(reaper: Reaper(), log: { _ in }, clock: { clock.value })
    supervisor.setPersistWritable(false)
    clock.advance(29_000)
    #expect(supervisor.feedVerdict() == .feed)
    clock.advance(2_000)
    #expect(supervisor.feedVerdict() != .feed)
    supervisor.setPersistWritable(true)
    #expect(supervisor.feedVerdict() == .feed)
}

@Test func aCrashingTaskIsRestartedWithBackoffAndThenEscalatesToACrashLoopReboot() throws {
    let clock = FakeClock()
    let supervisor = Supervisor(reaper: Reaper(), log: { _ in }, clock: { clock.value })
    supervisor.add(ComponentSpec(name: "flaky", body: .task { _ in throw ComponentReturned() }))
    supervisor.startAll()
    var restarts = 0
    for _ in 0..<2_000 where restarts < 100 {
        usleep(2_000)
        clock.advance(1_000)
        if let request = supervisor.tick() {
            #expect(request.reason == .crashLoop)
            #expect(request.component == "flaky")
            #expect(supervisor.snapshot().first?.restarts == 5)
            return
        }
        restarts = supervisor.snapshot().first?.restarts ?? 0
    }
    Issue.record("no crash-loop escalation; restarts \(restarts)")
}

@Test func theSupervisorWakesPID1ForARestartOrAShutdownAndSaysWhenTheNextRestartIsDue() throws {
    let clock = FakeClock()
    let wakes = Mutex(0)
    let supervisor = Supervisor(reaper: Reaper(), log: { _ in }, clock: { clock.value }, wake: { wakes.withLock { $0 += 1 } })
    supervisor.add(ComponentSpec(name: "flaky", body: .task { _ in throw ComponentReturned() }))
    #expect(supervisor.nextStartInMilliseconds() == nil, "nothing waits to restart")
    supervisor.startAll()
    // The task fails at once: the supervisor schedules its restart and wakes PID 1 to wait for it.
    for _ in 0..<500 where supervisor.nextStartInMilliseconds() == nil { usleep(2_000) }
    let due = try #require(supervisor.nextStartInMilliseconds(), "no restart scheduled")
    #expect(due > 0 && wakes.withLock { $0 } == 1, "due in \(due) ms, wakes \(wakes.withLock { $0 })")
    clock.advance(due + 1)
    #expect(supervisor.nextStartInMilliseconds() == 0, "overdue counts as due now")
    supervisor.requestShutdown(ShutdownRequest(reason: .user, powerOff: true))
    #expect(wakes.withLock { $0 } == 2)
    supervisor.stopAll(timeoutMilliseconds: 100)
}

@Test func theWatchdogIsFedFourTimesPerTimeoutWithinOneToFiveSeconds() {
    #expect(Agent.feedInterval(timeoutSeconds: 15) == .milliseconds(3_750))
    #expect(Agent.feedInterval(timeoutSeconds: 2) == .seconds(1))
    #expect(Agent.feedInterval(timeoutSeconds: 60) == .seconds(5))
}

@Test func powerButtonEventsAreDecodedFromTheKernelLayout() {
    var event = [UInt8](repeating: 0, count: 24)
    event[16] = 1; event[18] = 116; event[20] = 1
    #expect(PowerButton.isPowerPress(event[...]))
    event[20] = 0 // release
    #expect(!PowerButton.isPowerPress(event[...]))
}

#if DEBUG || OUTPOST_FAULT_INJECTION
@Test func theFaultFileParsesEveryCommandAndNamesABadLine() throws {
    let commands = try FaultInjection.parse("hang init\ncrash control 2\n# note\nhelper crashy exit 3\norphans 8\nstatus --json\nreboot update IMGB\n")
    #expect(commands == [.hang("init"), .crash("control", count: 2), .helper(name: "crashy", arguments: ["exit", "3"]),
                         .orphans(8), .status(json: true), .reboot(.update, slot: "IMGB")])
    #expect(throws: FaultInjection.ParseError(line: 2, text: "crash control zero")) {
        try FaultInjection.parse("sleep 1\ncrash control zero")
    }
}
#endif
