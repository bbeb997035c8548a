import Foundation
import Testing
@testable import OutpostAgent

// The status document's field names are read by bench/agent-footprint.sh and
// the QEMU tests (SupervisorTests); these tests pin them and their types.

private func report(watchdog: Watchdog.Info?, cpu: Double?, uptime: Double = 12.345,
                    byThread: [(name: String, percent: Double)] = []) -> StatusReport {
    StatusReport(
        uptimeSeconds: uptime, slot: "IMGA", version: "1.2.3",
        lastBoot: LastBoot(reason: .powerLoss, time: 160, detail: "no clean-shutdown record; time is the last heartbeat"),
        components: [
            ComponentStatus(name: "init", kind: "loop", critical: true, state: .running, restarts: 0, pid: nil,
                            lastBeatAgeMilliseconds: 250, lastError: nil),
            ComponentStatus(name: "power-button", kind: "task", critical: false, state: .backoff, restarts: 2, pid: nil,
                            lastBeatAgeMilliseconds: nil, lastError: "read /dev/input/event0: \"gone\""),
        ],
        watchdog: watchdog, watchdogError: watchdog == nil ? "no /dev/watchdog0" : nil,
        process: ProcessStats.Sample(pid: 1, rssKiB: 9216, rssAnonKiB: 6144, rssFileKiB: 3072, rssShmemKiB: 0, threads: 11, cpuTicks: 42, zombies: 0),
        cpuPercentLastMinute: cpu, cpuByThreadLastMinute: byThread, orphansReaped: 8, network: nil, networkActive: nil)
}

private func object(_ text: String) throws -> [String: Any] {
    #expect(text.hasSuffix("}\n") && text.split(separator: "\n").count == 1, "not one line: \(text)")
    return try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
}

@Test func statusJSONEscapesStrings() throws {
    #expect(try JSONDocument.line(["a": "q\"\\\n\u{1}"]) == #"{"a":"q\"\\\n\u0001"}"#)
}

@Test func theStatusDocumentKeepsEveryFieldBenchAndTheQEMUTestsRead() throws {
    let info = Watchdog.Info(device: "/dev/watchdog0", identity: "i6300ESB timer", timeoutSeconds: 15, isSoftware: false,
                             bootStatusFlags: nil)
    let text = report(watchdog: info, cpu: 0.4567).json()
    let status = try object(text)
    #expect(status["uptimeSeconds"] as? Double == 12.35)
    #expect(status["slot"] as? String == "IMGA" && status["version"] as? String == "1.2.3")
    let lastBoot = try #require(status["lastBoot"] as? [String: Any])
    #expect(lastBoot["reason"] as? String == "power-loss" && lastBoot["time"] as? Int == 160)
    #expect(lastBoot["component"] == nil, "an unknown component is left out, as before")
    let watchdog = try #require(status["watchdog"] as? [String: Any])
    #expect(watchdog["identity"] as? String == "i6300ESB timer" && watchdog["timeoutSeconds"] as? Int == 15)
    #expect(watchdog["device"] as? String == "/dev/watchdog0" && watchdog["software"] as? Bool == false)
    #expect(watchdog["bootStatus"] is NSNull)
    // Sorted keys, unescaped slashes, and the substrings the QEMU tests look for.
    #expect(text.hasPrefix(#"{"agent":{"cpuPercentLastMinute":0.46,"cpuPercentLastMinuteByThread":{},"cpuTicks":42,"orphansReaped":8,"pid":1,"rssAnonKiB":6144,"rssFileKiB":3072,"rssKiB":9216,"rssShmemKiB":0,"threads":11,"zombies":0},"#), "\(text)")
    #expect(text.contains(#""identity":"i6300ESB timer""#) && text.contains(#""timeoutSeconds":15"#))
    #expect(text.contains(#""device":"/dev/watchdog0""#))
    #expect(text.contains(#","network":null,"slot":"IMGA","uptimeSeconds":12.35,"vault":null,"version":"1.2.3","watchdog":{"#))

    let components = try #require(status["components"] as? [[String: Any]])
    #expect(components.map { $0["name"] as? String } == ["init", "power-button"], "order is the supervisor's")
    let button = components[1]
    #expect(button["kind"] as? String == "task" && button["state"] as? String == "backoff")
    #expect(button["restarts"] as? Int == 2 && button["critical"] as? Bool == false)
    #expect(button["pid"] is NSNull && button["lastBeatAgeMs"] is NSNull)
    #expect(button["lastError"] as? String == "read /dev/input/event0: \"gone\"")
    #expect(components[0]["lastBeatAgeMs"] as? Int == 250)
}

@Test func absentValuesAreNullNotMissing() throws {
    let status = try object(report(watchdog: nil, cpu: nil, uptime: .nan).json())
    let watchdog = try #require(status["watchdog"] as? [String: Any])
    #expect(watchdog["device"] is NSNull && watchdog["error"] as? String == "no /dev/watchdog0")
    let agent = try #require(status["agent"] as? [String: Any])
    #expect(agent["cpuPercentLastMinute"] is NSNull)
    #expect(status["uptimeSeconds"] is NSNull, "a non-finite number is null, not an encoding failure")
    #expect(status["network"] is NSNull)
}

@Test func theTextAndJSONViewsAgree() {
    let r = report(watchdog: nil, cpu: 1.5)
    let text = r.text()
    #expect(text.contains("last boot: power-loss time=160 (no clean-shutdown record; time is the last heartbeat)"))
    #expect(text.contains("watchdog: none (no /dev/watchdog0)"))
    #expect(text.contains("  power-button backoff  restarts=2 last-error=\"read /dev/input/event0: \"gone\"\""))
    #expect(text.contains("agent: pid=1 rss=9216 KiB (anon 6144, file 3072, shmem 0) threads=11 cpu-1min=1.50% zombies=0 orphans-reaped=8"))
}

@Test func theBootRecordIsSortedJSONWithThePCRsByIndex() throws {
    let record = BootRecord(slot: "IMGB", partUUID: "6c3a-uuid", version: "2.0", rescueReason: nil,
                            pcrs: [9: "bb", 8: "aa"])
    let text = record.json
    let document = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
    #expect(document["pcr"] as? [String: String] == ["8": "aa", "9": "bb"])
    #expect(document["rescue"] is NSNull)
    #expect(document["partuuid"] as? String == "6c3a-uuid" && document["slot"] as? String == "IMGB")
    #expect(document["version"] as? String == "2.0")
    let keys = ["partuuid", "pcr", "rescue", "slot", "version"].compactMap { text.range(of: "\"\($0)\"")?.lowerBound }
    #expect(keys.count == 5 && keys == keys.sorted(), "keys are sorted:\n\(text)")
    #expect(text.hasSuffix("}\n"))
}

@Test func theMinutesCPUIsSplitByThreadNameBusiestFirst() throws {
    var sampler = CPUSampler()
    let hz = Int64(sysconf(Int32(_SC_CLK_TCK)))
    #expect(sampler.isDue(now: 0))
    sampler.sample(now: 0, ticks: 10, threads: ["outpostd": 10, "fleet": 0, "watchdog": 0])
    #expect(!sampler.isDue(now: 9_999), "a sample every 10 s, not every tick")
    sampler.sample(now: 5_000, ticks: 999, threads: ["fleet": 999])
    #expect(sampler.samples.count == 1)
    // 20 s later: fleet spent 0.4 s (2 %), watchdog 0.1 s (0.5 %), outpostd nothing; "net-service" is new.
    let now: Int64 = 20_000
    let threads = ["outpostd": 10, "fleet": 2 * hz / 5, "watchdog": hz / 10, "net-service": hz / 10]
    let split = sampler.percentByThread(now: now, threads: threads)
    #expect(split.map(\.name) == ["fleet", "net-service", "watchdog"], "\(split)")
    #expect(abs(split[0].percent - 2.0) < 0.001 && abs(split[2].percent - 0.5) < 0.001, "\(split)")
    #expect(CPUSampler().percentByThread(now: now, threads: threads).isEmpty, "no window yet")
    // Samples older than the window go.
    sampler.sample(now: 100_000, ticks: 50, threads: [:])
    #expect(sampler.samples.map(\.at) == [100_000])

    let r = report(watchdog: nil, cpu: 2.5, byThread: split)
    #expect(r.text().contains("agent: cpu-1min by thread: fleet 2.00%, net-service 0.50%, watchdog 0.50%"), "\(r.text())")
    let agent = try #require(try object(r.json())["agent"] as? [String: Any])
    #expect(agent["cpuPercentLastMinuteByThread"] as? [String: Double] == ["fleet": 2, "net-service": 0.5, "watchdog": 0.5])
}

@Test func aThreadsNameAndTicksComeFromItsStatLine() {
    // comm may hold spaces and parentheses: it ends at the last ')'.
    let line = "812 (netns a) b)) S 1 1 0 0 -1 4194368 5 0 0 0 7 3 0 0 20 0 1 0 100 0 0"
    let parsed = ProcessStats.threadNameAndTicks(statText: line)
    #expect(parsed?.0 == "netns a) b)" && parsed?.1 == 10)
    #expect(ProcessStats.threadNameAndTicks(statText: "812 (x) S 1") == nil, "too few fields")
    #expect(ProcessStats.threadNameAndTicks(statText: "garbage") == nil)
}
