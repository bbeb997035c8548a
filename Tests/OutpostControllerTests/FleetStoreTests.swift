import Foundation
import GRDB
@testable import OutpostController
import OutpostTestSupport
import Testing

/// Every FleetStore method, run once on SQLite and once on a private PostgreSQL: the two stores
/// must be interchangeable behind the controller.
@Suite("Fleet store on SQLite and PostgreSQL", .postgresServer)
struct FleetStoreTests {
    static func device(_ id: String, registered: Int64, seen: Int64 = 0) -> DeviceRecord {
        DeviceRecord(id: id, fingerprint: "fp-" + id, certificatePEM: "PEM " + id, serial: "SN-" + id, onboardFingerprint: "onboard",
                     registeredMs: registered, lastSeenMs: seen, config: Data([0, 1, 2, 0xff]), configHash: "hash-" + id)
    }

    static func log(_ sequence: UInt64, _ message: String = "") -> LogRow {
        LogRow(sequence: sequence, timeMs: Int64(sequence) * 10, source: "kernel", severity: Int(sequence % 8),
               message: message.isEmpty ? "entry \(sequence)" : message)
    }

    /// Runs `body` on a fresh store of `backend`, then closes and removes it.
    func withStore(_ backend: Backend, _ tag: String, _ body: (any FleetStore, StoreFixture) async throws -> Void) async throws {
        let fixture = try StoreFixture(backend, tag: tag)
        defer { fixture.remove() }
        let store = try await fixture.open()
        do { try await body(store, fixture) } catch {
            await fixture.close(store)
            throw error
        }
        await fixture.close(store)
    }

    @Test(arguments: Backend.allCases)
    func onboardingEntriesAreAllowedReplacedListedAndRemoved(_ backend: Backend) async throws {
        try await withStore(backend, "onboard") { s, _ in
            try await s.allowOnboarding(fingerprint: "fp1", serial: "*", note: "any")
            try await s.allowOnboarding(fingerprint: "fp1", serial: "SN1", note: "first")
            try await s.allowOnboarding(fingerprint: "fp2", serial: "SN2", note: "")
            try await s.allowOnboarding(fingerprint: "fp1", serial: "SN1", note: "second")
            #expect(try await s.onboardingEntries() == [
                OnboardingEntry(fingerprint: "fp1", serial: "*", note: "any"),
                OnboardingEntry(fingerprint: "fp1", serial: "SN1", note: "second"),
                OnboardingEntry(fingerprint: "fp2", serial: "SN2", note: ""),
            ])
            #expect(try await s.removeOnboarding(fingerprint: "fp1", serial: "SN1") == 1)
            #expect(try await s.removeOnboarding(fingerprint: "fp1", serial: "SN1") == 0)
            #expect(try await s.removeOnboarding(fingerprint: "fp9", serial: nil) == 0)
            try await s.allowOnboarding(fingerprint: "fp1", serial: "SN3", note: "")
            #expect(try await s.removeOnboarding(fingerprint: "fp1", serial: nil) == 2)
            #expect(try await s.onboardingEntries() == [OnboardingEntry(fingerprint: "fp2", serial: "SN2", note: "")])
        }
    }

    @Test(arguments: Backend.allCases)
    func devicesAreInsertedListedReconfiguredAndTouched(_ backend: Backend) async throws {
        try await withStore(backend, "devices") { s, _ in
            #expect(try await s.allDevices().isEmpty)
            let b = Self.device("bbbb", registered: 1000, seen: 500)
            let a = Self.device("aaaa", registered: 1000, seen: 500)
            let c = Self.device("cccc", registered: 900)
            try await s.insertDevices([b, a])
            try await s.insertDevices([c])
            // Registration order, then id.
            #expect(try await s.allDevices() == [c, a, b])

            // A batch with a clash stores none of its devices.
            var clash = Self.device("dddd", registered: 2000)
            clash.fingerprint = a.fingerprint
            await #expect(throws: ControllerError.self) { try await s.insertDevices([Self.device("eeee", registered: 2000), clash]) }
            #expect(try await s.allDevices().map(\.id) == ["cccc", "aaaa", "bbbb"])

            try await s.updateConfig(deviceID: "aaaa", config: Data([9, 8, 7]), hash: "new-hash")
            try await s.touch(lastSeen: [:])
            // Last-seen only moves forward; an unknown id is ignored.
            try await s.touch(lastSeen: ["aaaa": 7000, "bbbb": 100, "zzzz": 1])
            let byID = Dictionary(uniqueKeysWithValues: try await s.allDevices().map { ($0.id, $0) })
            #expect(byID["aaaa"]?.config == Data([9, 8, 7]))
            #expect(byID["aaaa"]?.configHash == "new-hash")
            #expect(byID["aaaa"]?.lastSeenMs == 7000)
            #expect(byID["bbbb"]?.lastSeenMs == 500)
            #expect(byID["bbbb"]?.config == b.config)
            #expect(byID.count == 3)
        }
    }

    @Test(arguments: Backend.allCases)
    func theFleetClockOrdersRegistrationsConfigChangesAndOnboardingForReplicas(_ backend: Backend) async throws {
        try await withStore(backend, "clock") { s, _ in
            #expect(try await s.changeMark() == ChangeMark(devices: 0, onboarding: 0))
            let (a, created) = try await s.register(Self.device("aaaa", registered: 1))
            #expect(created && a.seq == 1)
            // The same certificate again (another replica's racing registration): the first device.
            var again = Self.device("zzzz", registered: 2)
            again.fingerprint = a.record.fingerprint
            let (existing, createdAgain) = try await s.register(again)
            #expect(!createdAgain && existing.record.id == "aaaa")
            try await s.insertDevices([Self.device("bbbb", registered: 3)])
            let mark = try await s.changeMark()
            #expect(try await s.devices(changedAfter: 0).map(\.record.id) == ["aaaa", "bbbb"])

            // A change the closure declines writes nothing and takes no clock value.
            #expect(try await s.changeConfig(deviceID: "aaaa") { _ in nil }?.seq == a.seq)
            let changed = try await s.changeConfig(deviceID: "aaaa") { r in (r.config + Data([7]), "hash-2") }
            #expect(try #require(changed).seq > mark.devices)
            #expect(try await s.changeConfig(deviceID: "nope") { _ in (Data(), "x") } == nil)
            #expect(try await s.devices(changedAfter: mark.devices).map(\.record.configHash) == ["hash-2"])
            #expect(try await s.device(id: "aaaa")?.record.configHash == "hash-2")
            #expect(try await s.device(fingerprint: "fp-bbbb")?.record.id == "bbbb")
            #expect(try await s.device(fingerprint: "fp-none") == nil)

            // Read-modify-write through the store: twelve concurrent bumps are twelve.
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<12 {
                    group.addTask {
                        _ = try await s.changeConfig(deviceID: "bbbb") { r in (r.config + Data([1]), "length-\(r.config.count + 1)") }
                    }
                }
                try await group.waitForAll()
            }
            let bumped = try #require(try await s.device(id: "bbbb")).record
            #expect(bumped.config.count == 4 + 12 && bumped.configHash == "length-16")

            try await s.allowOnboarding(fingerprint: "ob", serial: "*", note: "")
            #expect(try await s.onboardingSerials(fingerprint: "ob") == ["*"])
            #expect(try await s.onboardingSerials(fingerprint: "fp-aaaa").isEmpty)
            #expect(try await s.removeOnboarding(fingerprint: "ob", serial: nil) == 1)
            // Nothing removed: no change for replicas to pull.
            #expect(try await s.removeOnboarding(fingerprint: "ob", serial: nil) == 0)
            #expect(try await s.changeMark().onboarding == 2)

            // Online counts come from the flushed last-seen times of every replica.
            try await s.touch(lastSeen: ["aaaa": 5000])
            #expect(try await s.countSeen(sinceMs: 5000) == 1)
            #expect(try await s.countSeen(sinceMs: 0) == 2)
        }
    }

    @Test(arguments: Backend.allCases)
    func labelsAreSetReplacedAndRemoved(_ backend: Backend) async throws {
        try await withStore(backend, "labels") { s, _ in
            try await s.insertDevices([Self.device("aaaa", registered: 1), Self.device("bbbb", registered: 2)])
            #expect(try await s.labels().isEmpty)
            try await s.setLabels(deviceID: "aaaa", set: ["env": "prod", "site": "lab"], remove: [])
            try await s.setLabels(deviceID: "bbbb", set: ["env": "dev"], remove: ["nothing"])
            try await s.setLabels(deviceID: "aaaa", set: ["site": "berlin"], remove: ["env"])
            #expect(try await s.labels() == ["aaaa": ["site": "berlin"], "bbbb": ["env": "dev"]])
            // A label on an unknown device is refused (foreign key).
            await #expect(throws: ControllerError.self) { try await s.setLabels(deviceID: "zzzz", set: ["a": "b"], remove: []) }
        }
    }

    @Test(arguments: Backend.allCases)
    func aLeaseHasOneHolderUntilItExpires(_ backend: Backend) async throws {
        try await withStore(backend, "lease") { s, _ in
            #expect(try await s.acquireLease(name: "rollouts", holder: "A", nowMs: 1000, ttlMs: 500))
            #expect(try await !s.acquireLease(name: "rollouts", holder: "B", nowMs: 1400, ttlMs: 500))
            // A renews; B still waits past A's first expiry.
            #expect(try await s.acquireLease(name: "rollouts", holder: "A", nowMs: 1400, ttlMs: 500))
            #expect(try await !s.acquireLease(name: "rollouts", holder: "B", nowMs: 1800, ttlMs: 500))
            #expect(try await s.acquireLease(name: "other", holder: "B", nowMs: 1800, ttlMs: 500))
            // Expired: B takes it, and A has lost it.
            #expect(try await s.acquireLease(name: "rollouts", holder: "B", nowMs: 2000, ttlMs: 500))
            #expect(try await !s.acquireLease(name: "rollouts", holder: "A", nowMs: 2100, ttlMs: 500))
            // Many holders at once on a free lease: exactly one wins.
            let winners = try await withThrowingTaskGroup(of: Bool.self) { group in
                for n in 0..<8 { group.addTask { try await s.acquireLease(name: "race", holder: "H\(n)", nowMs: 5000, ttlMs: 500) } }
                return try await group.reduce(0) { $0 + ($1 ? 1 : 0) }
            }
            #expect(winners == 1)
        }
    }

    @Test(arguments: Backend.allCases)
    func aRolloutIsSavedOnlyAgainstTheRevisionItWasReadAt(_ backend: Backend) async throws {
        try await withStore(backend, "rollout") { s, _ in
            try await s.insertDevices([Self.device("aaaa", registered: 1), Self.device("bbbb", registered: 2)])
            let r = RolloutRecord(id: "r1", createdMs: 5, selector: "env=prod", version: "2.0.0", baseOS: Data([1, 2]), waves: [50, 100],
                                  soakMs: 10, deadlineMs: 20, maxFailuresPercent: 2.5, state: "running", wave: -1, waveStartedMs: 0,
                                  waveDoneMs: 0, reason: "", revision: 0)
            let devices = [RolloutDevice(rolloutID: "r1", deviceID: "aaaa", wave: 0, state: "pending", startedMs: 0, doneMs: 0, reason: ""),
                           RolloutDevice(rolloutID: "r1", deviceID: "bbbb", wave: 1, state: "pending", startedMs: 0, doneMs: 0, reason: "")]
            let created = RolloutEvent(atMs: 5, kind: "created", wave: -1, detail: "2 devices", holder: "admin")
            try await s.createRollout(r, devices: devices, event: created)
            #expect(try await s.rollouts() == [r])
            #expect(try await s.rolloutDevices(rolloutID: "r1") == devices)

            // Two writers that read revision 0 race to start wave one: one wins, one event.
            var next = r
            next.wave = 0
            next.waveStartedMs = 7
            let started = RolloutEvent(atMs: 7, kind: "wave-started", wave: 0, detail: "", holder: "A")
            let attempt = next
            let wins = try await withThrowingTaskGroup(of: Bool.self) { group in
                for _ in 0..<6 { group.addTask { try await s.saveRollout(attempt, expectedRevision: 0, event: started) } }
                return try await group.reduce(0) { $0 + ($1 ? 1 : 0) }
            }
            #expect(wins == 1)
            next.revision = 1
            #expect(try await s.rollouts() == [next])
            #expect(try await s.rolloutEvents(rolloutID: "r1") == [created, started])

            var a = devices[0]
            a.state = "failed"
            a.startedMs = 7
            a.doneMs = 9
            a.reason = "reported failed: boom"
            try await s.updateRolloutDevices([a])
            #expect(try await s.rolloutDevices(rolloutID: "r1") == [a, devices[1]])
        }
    }

    @Test(arguments: Backend.allCases)
    func infoKeepsTheNewestAndUpdateStepsAHistory(_ backend: Backend) async throws {
        try await withStore(backend, "info") { s, _ in
            try await s.insertDevices([Self.device("aaaa", registered: 1), Self.device("bbbb", registered: 2)])
            #expect(try await s.info(deviceID: "aaaa") == nil)
            let steps = ["downloading", "installing", "testing", "failed"].enumerated().map { i, step in
                UpdateStepRecord(step: step, version: "3.0.0", reason: step == "failed" ? "health check failed" : "",
                                 deviceTimeMs: Int64(100 + i), receivedMs: Int64(200 + i))
            }
            try await s.putInfo(deviceID: "aaaa", body: Data([1]), receivedMs: 10, step: nil)
            for (i, step) in steps.enumerated() {
                try await s.putInfo(deviceID: "aaaa", body: Data([2, UInt8(i)]), receivedMs: Int64(20 + i), step: step)
            }
            try await s.putInfo(deviceID: "aaaa", body: Data([3]), receivedMs: 30, step: nil)
            #expect(try await s.info(deviceID: "aaaa") == StoredBlob(body: Data([3]), receivedMs: 30))
            #expect(try await s.updateHistory(deviceID: "aaaa") == steps)
            #expect(try await s.updateHistory(deviceID: "bbbb").isEmpty)
            #expect(try await s.counts(deviceID: "aaaa") == StoredCounts(info: 1, metrics: 0, logs: 0))
            #expect(try await s.counts(deviceID: "bbbb") == StoredCounts(info: 0, metrics: 0, logs: 0))
        }
    }

    @Test(arguments: Backend.allCases)
    func metricsKeepTheNewestNNewestFirst(_ backend: Backend) async throws {
        try await withStore(backend, "metrics") { s, _ in
            try await s.insertDevices([Self.device("aaaa", registered: 1), Self.device("bbbb", registered: 2)])
            // Two reports in one millisecond: the later one counts as newer.
            for (n, ms) in [(1, 100), (2, 200), (3, 300), (4, 300), (5, 500)] {
                try await s.putMetrics(deviceID: "aaaa", body: Data([UInt8(n)]), receivedMs: Int64(ms), keep: 3)
            }
            try await s.putMetrics(deviceID: "bbbb", body: Data([42]), receivedMs: 1, keep: 3)
            #expect(try await s.metrics(deviceID: "aaaa", limit: 10).map(\.body) == [Data([5]), Data([4]), Data([3])])
            #expect(try await s.metrics(deviceID: "aaaa", limit: 2) == [StoredBlob(body: Data([5]), receivedMs: 500),
                                                                       StoredBlob(body: Data([4]), receivedMs: 300)])
            #expect(try await s.counts(deviceID: "aaaa").metrics == 3)
            #expect(try await s.metrics(deviceID: "bbbb", limit: 10).map(\.body) == [Data([42])])
        }
    }

    @Test(arguments: Backend.allCases)
    func logAckIsTheHighestContiguousSequenceWithDuplicatesIgnoredAndDropsPassed(_ backend: Backend) async throws {
        try await withStore(backend, "logs") { s, _ in
            let id = "aaaa"
            try await s.insertDevices([Self.device(id, registered: 1)])
            #expect(try await s.logAck(deviceID: id) == 0)
            #expect(try await s.appendLogs(deviceID: id, entries: [], droppedBefore: 0) == 0)
            #expect(try await s.appendLogs(deviceID: id, entries: [Self.log(1), Self.log(2), Self.log(4)], droppedBefore: 0) == 2)
            // The gap at 3 filled, 2 resent with other text: stored once, as first received.
            #expect(try await s.appendLogs(deviceID: id, entries: [Self.log(3), Self.log(2, "resent"), Self.log(3)], droppedBefore: 0) == 4)
            #expect(try await s.logs(deviceID: id, after: 0, limit: 100) == [Self.log(1), Self.log(2), Self.log(3), Self.log(4)])
            // 5 dropped over quota (dropped_before 6), 6 not yet here: the mark passes 5 and waits at 6.
            #expect(try await s.appendLogs(deviceID: id, entries: [Self.log(7)], droppedBefore: 6) == 5)
            #expect(try await s.logAck(deviceID: id) == 5)
            #expect(try await s.appendLogs(deviceID: id, entries: [Self.log(6)], droppedBefore: 0) == 7)
            // A dropped_before behind the mark never moves it back.
            #expect(try await s.appendLogs(deviceID: id, entries: [], droppedBefore: 3) == 7)
            #expect(try await s.logAck(deviceID: id) == 7)
            #expect(try await s.logs(deviceID: id, after: 4, limit: 1) == [Self.log(6)])
            #expect(try await s.logs(deviceID: id, after: 0, limit: 100).map(\.sequence) == [1, 2, 3, 4, 6, 7])
            #expect(try await s.counts(deviceID: id) == StoredCounts(info: 0, metrics: 0, logs: 6))
            #expect(try await s.logAck(deviceID: "bbbb") == 0)
            #expect(try await s.logs(deviceID: "bbbb", after: 0, limit: 10).isEmpty)
        }
    }

    @Test(arguments: Backend.allCases)
    func concurrentAppendsForOneDeviceLeaveNoGapAndNoDuplicate(_ backend: Backend) async throws {
        try await withStore(backend, "concurrent") { s, _ in
            let id = "aaaa"
            try await s.insertDevices([Self.device(id, registered: 1)])
            let writers = 12, total: UInt64 = 600, batchSize = 2
            // Writer k sends the sequences ≡ k (mod writers) in batches of two, each batch also
            // resending the previous one's first entry.
            try await withThrowingTaskGroup(of: Void.self) { group in
                for k in 0..<writers {
                    group.addTask {
                        let mine = (1...total).filter { Int($0 % UInt64(writers)) == k }
                        var previous: LogRow?
                        for start in stride(from: 0, to: mine.count, by: batchSize) {
                            let batch = mine[start..<min(start + batchSize, mine.count)].map { Self.log($0) }
                            _ = try await s.appendLogs(deviceID: id, entries: batch + (previous.map { [$0] } ?? []), droppedBefore: 0)
                            previous = batch.first
                        }
                    }
                }
                try await group.waitForAll()
            }
            #expect(try await s.logAck(deviceID: id) == total)
            #expect(try await s.logs(deviceID: id, after: 0, limit: 10_000).map(\.sequence) == Array(1...total))
            #expect(try await s.counts(deviceID: id).logs == Int(total))
        }
    }

    @Test(arguments: Backend.allCases)
    func reopeningACurrentDatabaseMigratesNothingAndKeepsTheData(_ backend: Backend) async throws {
        let fixture = try StoreFixture(backend, tag: "reopen")
        defer { fixture.remove() }
        for round in 0..<3 {
            let s = try await fixture.open()
            if round == 0 { try await s.insertDevices([Self.device("aaaa", registered: 1)]) }
            #expect(try await s.allDevices().map(\.id) == ["aaaa"])
            await fixture.close(s)
            #expect(try schemaVersions(fixture) == Array(1...SchemaMigrations.current))
        }
    }

    @Test(arguments: Backend.allCases)
    func aDatabaseFromANewerControllerIsRefusedInOneLine(_ backend: Backend) async throws {
        let fixture = try StoreFixture(backend, tag: "newer")
        defer { fixture.remove() }
        await fixture.close(try await fixture.open())
        try execute(fixture, "INSERT INTO schema_migrations (version, applied_ms) VALUES (99, 0)")
        do {
            let s = try await fixture.open()
            await fixture.close(s)
            Issue.record("a version-99 database was opened")
        } catch let e as ControllerError {
            guard case let .schemaTooNew(_, version, known) = e else { Issue.record("wrong error: \(e)"); return }
            #expect(version == 99 && known == SchemaMigrations.current)
            #expect(!e.description.contains("\n"))
            #expect(e.description.contains("newer than this controller's \(SchemaMigrations.current)"))
        }
    }

    /// A data directory from before versions were numbered: GRDB's migrator made "v1".
    @Test func anSQLiteFileFromGRDBsMigratorIsAdoptedAsVersionOne() async throws {
        let fixture = try StoreFixture(.sqlite, tag: "legacy")
        defer { fixture.remove() }
        guard case let .sqlite(path) = fixture.location else { return }
        let old = try DatabaseQueue(path: path)
        try await old.write { db in
            try db.execute(sql: SchemaMigrations.sqlite[0])
            try db.execute(sql: "CREATE TABLE grdb_migrations (identifier TEXT NOT NULL PRIMARY KEY); INSERT INTO grdb_migrations VALUES ('v1')")
            try db.execute(sql: "INSERT INTO onboarding (fingerprint, serial, note) VALUES ('fp', '*', 'created by init')")
        }
        try old.close()
        let s = try await fixture.open()
        #expect(try await s.onboardingEntries() == [OnboardingEntry(fingerprint: "fp", serial: "*", note: "created by init")])
        #expect(try schemaVersions(fixture) == Array(1...SchemaMigrations.current))
    }

    func schemaVersions(_ f: StoreFixture) throws -> [Int] {
        switch f.location {
        case let .sqlite(path):
            return try DatabaseQueue(path: path).read { try Int.fetchAll($0, sql: "SELECT version FROM schema_migrations ORDER BY version") }
        case .postgres:
            let out = try #require(f.server).sql(f.name, "SELECT version FROM schema_migrations ORDER BY version")
            return out.split(separator: "\n").compactMap { Int($0) }
        }
    }

    func execute(_ f: StoreFixture, _ sql: String) throws {
        switch f.location {
        case let .sqlite(path): try DatabaseQueue(path: path).write { try $0.execute(sql: sql) }
        case .postgres: try #require(f.server).sql(f.name, sql)
        }
    }
}
