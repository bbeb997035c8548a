import Foundation
import OutpostTestSupport
import OutpostPlatform
import OutpostProto
import Testing
@testable import OutpostFleet

@Suite("Fleet: info outbox, log store, jitter, gzip")
struct StoreTests {
    @Test func outboxKeepsOnlyTheNewestStatePerObjectAndSurvivesARestart() throws {
        let tmp = try TemporaryDirectory("outbox")
        let outbox = try InfoOutbox(directory: tmp.path, retryMinimum: .seconds(5), retryMaximum: .seconds(60))
        try outbox.put(key: "device", payload: [1])
        try outbox.put(key: "device", payload: [2])
        try outbox.put(key: "update", payload: [9])
        #expect(try outbox.put(key: "update", payload: [9]) == false)
        #expect(outbox.due().map(\.payload) == [[2], [9]])

        // Restart: the same pending items, all due at once.
        let reopened = try InfoOutbox(directory: tmp.path)
        let items = reopened.due()
        #expect(items.map(\.key) == ["device", "update"])
        #expect(items.map(\.payload) == [[2], [9]])

        // A delivery of a state that was replaced meanwhile keeps the newer one.
        let stale = items[0]
        try reopened.put(key: "device", payload: [3])
        try reopened.delivered(stale)
        #expect(reopened.due().first { $0.key == "device" }?.payload == [3])
        try reopened.delivered(reopened.due()[0])
        try reopened.delivered(reopened.due()[0])
        #expect(reopened.pendingCount == 0)
        #expect(try InfoOutbox(directory: tmp.path).pendingCount == 0)
        #expect(throws: FleetError.self) { try reopened.put(key: "../escape", payload: [1]) }
    }

    @Test func outboxFailureDelaysOnlyThatItemWithGrowingBackoff() throws {
        let tmp = try TemporaryDirectory("outbox-retry")
        let outbox = try InfoOutbox(directory: tmp.path, retryMinimum: .seconds(10), retryMaximum: .seconds(100))
        try outbox.put(key: "device", payload: [1])
        let now = MonotonicClock.now()
        outbox.failed(outbox.due(at: now)[0], now: now)
        #expect(outbox.due(at: now).isEmpty)
        #expect(outbox.due(at: now.advanced(by: .seconds(4))).isEmpty)  // at least min/2
        #expect(outbox.due(at: now.advanced(by: .seconds(11))).count == 1)
        for _ in 0..<10 { outbox.failed(outbox.due(at: now.advanced(by: .seconds(1000)))[0], now: now) }
        let due = try #require(outbox.nextDue)
        #expect(due - now >= .seconds(50) && due - now <= .seconds(100))
        // A new state is due at once, whatever the backoff was.
        try outbox.put(key: "device", payload: [2])
        #expect(outbox.due().count == 1)
    }

    @Test func logSequenceContinuesAcrossRestartsAndAckingDeletesSentSegments() throws {
        let tmp = try TemporaryDirectory("logs")
        var store: LogStore? = try LogStore(directory: tmp.path, quotaBytes: 1 << 20)
        for i in 1...300 { #expect(try store?.append(source: "test", severity: .info, message: "line \(i)") == UInt64(i)) }
        store = nil
        let reopened = try LogStore(directory: tmp.path, quotaBytes: 1 << 20)
        #expect(reopened.nextSequence == 301)
        #expect(try reopened.append(source: "test", severity: .info, message: "after restart") == 301)
        let batch = try #require(try reopened.pendingBatch(maxBytes: 1 << 20))
        #expect(batch.entries.map(\.sequence) == Array(1...301))
        #expect(batch.droppedBefore == 0)
        #expect(batch.entries[300].message == "after restart")

        try reopened.acknowledge(301)
        #expect(try reopened.pendingBatch() == nil)
        #expect(reopened.backlog == 0)
        // Even with everything acknowledged and deleted, the numbers go on.
        let third = try LogStore(directory: tmp.path, quotaBytes: 1 << 20)
        #expect(third.ackedSequence == 301)
        #expect(try third.append(source: "test", severity: .info, message: "x") == 302)
    }

    @Test func aTornRecordAtTheEndIsCutAndItsNumberReused() throws {
        let tmp = try TemporaryDirectory("logs-torn")
        do {
            let store = try LogStore(directory: tmp.path, quotaBytes: 1 << 20)
            for i in 1...5 { try store.append(source: "t", severity: .info, message: "line \(i)") }
        }
        let segment = try #require(try FileManager.default.contentsOfDirectory(atPath: tmp.path).first { $0.hasSuffix(".seg") })
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: tmp.path + "/" + segment))
        try handle.seekToEnd()
        try handle.write(contentsOf: Data([40, 0, 0, 0, 8, 6]))  // a record cut by a power loss
        try handle.close()
        let store = try LogStore(directory: tmp.path, quotaBytes: 1 << 20)
        #expect(try store.append(source: "t", severity: .info, message: "line 6") == 6)
        #expect(try store.pendingBatch()?.entries.map(\.sequence) == [1, 2, 3, 4, 5, 6])
    }

    @Test func overQuotaTheOldestUnsentAreDroppedAndOneEntrySaysHowMany() throws {
        let tmp = try TemporaryDirectory("logs-quota")
        let quota = 64 << 10
        let store = try LogStore(directory: tmp.path, quotaBytes: quota)
        let line = String(repeating: "x", count: 200)
        for i in 1...2000 { try store.append(source: "test", severity: .info, message: "\(i) \(line)") }
        #expect(store.diskBytes <= quota + 8 << 10)
        #expect(store.droppedUnsent > 0)
        let batch = try #require(try store.pendingBatch(maxBytes: 1 << 20))
        let sequences = batch.entries.map(\.sequence)
        // What is left is contiguous up to the end, and the gap is announced.
        #expect(batch.droppedBefore == sequences.first)
        #expect(sequences == Array(sequences[0]...sequences[sequences.count - 1]))
        #expect(sequences.last == store.nextSequence - 1)
        let notices = batch.entries.filter { $0.source == "fleet" && $0.message.contains("dropped") }
        #expect(!notices.isEmpty)
        let counted = notices.compactMap { notice -> UInt64? in
            guard let range = notice.message.range(of: "dropped ") else { return nil }
            return UInt64(notice.message[range.upperBound...].split(separator: " ")[0])
        }.reduce(0, +)
        // Every notice still held counts entries really gone (the oldest notices may have gone too).
        #expect(counted <= store.droppedUnsent && counted > 0)
    }

    @Test func acknowledgingEverythingThenDroppingNothingKeepsTheBatchEmpty() throws {
        let tmp = try TemporaryDirectory("logs-ack")
        let store = try LogStore(directory: tmp.path, quotaBytes: 1 << 20)
        for i in 1...10 { try store.append(source: "t", severity: .info, message: "\(i)") }
        try store.acknowledge(4)
        #expect(try store.pendingBatch()?.entries.first?.sequence == 5)
        try store.acknowledge(2)  // an older mark never moves it back
        #expect(store.ackedSequence == 4)
        try store.acknowledge(99)  // never past what exists
        #expect(store.ackedSequence == 10)
    }

    @Test func jitteredPeriodsStayWithinPointThreeToOneOfTheInterval() {
        var random = SplitMix64.forTest()  // prints the seed; OUTPOST_TEST_SEED replays it
        var low = Duration.seconds(1000), high = Duration.zero
        for _ in 0..<10_000 {
            let wait = Jitter.period(.seconds(60), using: &random)
            #expect(wait >= .seconds(18) && wait <= .seconds(60))
            low = min(low, wait)
            high = max(high, wait)
        }
        // Spread over the whole range, not bunched.
        #expect(low < .seconds(20) && high > .seconds(58))
        for attempt in 1...40 {
            let wait = Jitter.backoff(attempt: attempt, minimum: .seconds(5), maximum: .seconds(900), using: &random)
            let ceiling = min(5.0 * pow(2.0, Double(min(attempt - 1, 30))), 900)
            #expect(wait.seconds >= ceiling / 2 - 0.001 && wait.seconds <= ceiling + 0.001, "attempt \(attempt): \(wait)")
        }
    }

    @Test func gzipRoundTripsAndGunzipReadsIt() throws {
        let text = Array(String(repeating: "outpost log line\n", count: 1000).utf8)
        let packed = try Gzip.compress(text)
        #expect(packed.count < text.count / 10)
        #expect(packed.prefix(2) == [0x1f, 0x8b])
        #expect(try Gzip.decompress(packed) == text)
        let tmp = try TemporaryDirectory("gzip")
        try Data(packed).write(to: URL(fileURLWithPath: tmp.path + "/x.gz"))
        #expect(try sh("gzip", "-dc", tmp.path + "/x.gz") == String(decoding: text, as: UTF8.self))
        #expect(throws: FleetError.self) { _ = try Gzip.decompress(Array(packed.prefix(packed.count / 2))) }
    }

    @Test func metricsParseProcFilesAndPortCounters() throws {
        let tmp = try TemporaryDirectory("metrics")
        let proc = tmp.path + "/proc", net = tmp.path + "/net"
        try FileManager.default.createDirectory(atPath: net + "/eth0/statistics", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: net + "/lo/statistics", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: proc, withIntermediateDirectories: true)
        for (name, value) in [("rx_bytes", "1000"), ("tx_bytes", "2000"), ("rx_errors", "3"), ("tx_errors", "4")] {
            try "\(value)\n".write(toFile: net + "/eth0/statistics/" + name, atomically: true, encoding: .utf8)
        }
        try "12345.67 999.0\n".write(toFile: proc + "/uptime", atomically: true, encoding: .utf8)
        try "MemTotal:        1000 kB\nMemFree:  100 kB\nMemAvailable:     250 kB\n".write(toFile: proc + "/meminfo", atomically: true, encoding: .utf8)
        try "cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 1 2 3 4\n".write(toFile: proc + "/stat", atomically: true, encoding: .utf8)
        let collector = MetricsCollector(persistPath: tmp.path, procRoot: proc, netRoot: net)
        var watchdog = Outpost_Api_V1_WatchdogState()
        watchdog.armed = true
        watchdog.timeoutS = 30
        let first = collector.sample(watchdog: watchdog)
        #expect(first.uptimeS == 12345)
        #expect(first.memoryTotalBytes == 1_024_000 && first.memoryUsedBytes == 768_000)
        #expect(first.ports.map(\.name) == ["eth0"])
        #expect(first.ports[0].rxBytes == 1000 && first.ports[0].txErrors == 4)
        #expect(first.persistTotalBytes > 0)
        #expect(first.watchdog.armed && first.watchdog.timeoutS == 30)
        try "cpu  150 0 150 900 0 0 0 0 0 0\n".write(toFile: proc + "/stat", atomically: true, encoding: .utf8)
        #expect(abs(collector.sample(watchdog: nil).cpuPercent - 50) < 0.01)
    }
}
