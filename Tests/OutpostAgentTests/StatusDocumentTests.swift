import Foundation
import Testing
@testable import OutpostAgent

// The status document's field names are read by bench/agent-footprint.sh and
// the QEMU tests (SupervisorTests); these tests pin them and their types.

private func report(watchdog: Watchdog.Info?, cpu: Double?, uptime: Double = 12.345) -> StatusReport {
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
        cpuPercentLastMinute: cpu, orphansReaped: 8, network: nil, networkActive: nil)
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
    #expect(text.hasPrefix(#"{"agent":{"cpuPercentLastMinute":0.46,"cpuTicks":42,"orphansReaped":8,"pid":1,"rssAnonKiB":6144,"rssFileKiB":3072,"rssKiB":9216,"rssShmemKiB":0,"threads":11,"zombies":0},"#), "\(text)")
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
