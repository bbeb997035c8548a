import Foundation
import Logging
@testable import OutpostController
import OutpostProto
import OutpostTestSupport
import Testing

/// `serve --database postgres://…` end to end: the device API over a PostgreSQL store, and the
/// command line's one-line refusals for a bad URL or an unreachable database.
@Suite("Controller on PostgreSQL", .postgresServer)
struct PostgresControllerTests {
    @Test func devicesRegisterAndLogsAreAcknowledgedFromPostgreSQLAcrossARestart() async throws {
        let fixture = try StoreFixture(.postgres, tag: "serve")
        let c = try await RunningController(tag: "pg-serve", store: fixture.location)
        let (dc, id, identity) = try await c.newDeviceWithIdentity(serial: "SN-PG")
        #expect(try await sendLogs(dc, (1...5).map { logEntry($0, "line \($0)") }) == (200, 5))
        #expect(try await sendLogs(dc, [logEntry(7, "seven")]) == (200, 5))
        // A NUL (valid in protobuf, not in PostgreSQL text) is stored as U+FFFD, never a failed batch.
        #expect(try await sendLogs(dc, [logEntry(8, "nul\u{0}here")]) == (200, 5))
        try await dc.shutdown()
        await c.stop()
        // Nothing of the fleet was in the data directory's SQLite file.
        let sqlite = try SQLiteFleetStore(path: c.dir.database)
        #expect(try await sqlite.allDevices().isEmpty)

        try await c.start()
        let again = try c.client(cert: identity.certificatePEM, key: identity.keyPEM)
        #expect(try await sendLogs(again, [logEntry(6, "six")]) == (200, 8))
        try await again.shutdown()
        await c.stop()

        let store = try await fixture.open()
        #expect(try await store.allDevices().map(\.id) == [id])
        #expect(try await store.logAck(deviceID: id) == 8)
        #expect(try await store.logs(deviceID: id, after: 0, limit: 10).map(\.message)
                == (1...5).map { "line \($0)" } + ["six", "seven", "nul\u{FFFD}here"])
        await fixture.close(store)
    }

    static var executable: String {
        let beside = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path + "/outpost-controller"
        if FileManager.default.isExecutableFile(atPath: beside) { return beside }
        return FileManager.default.currentDirectoryPath + "/.build/debug/outpost-controller"
    }

    @Test func aBadURLOrAnUnreachableDatabaseIsOneLineAndExitOne() async throws {
        let c = try TemporaryDirectory("pg-cli")
        let data = c.path + "/data"
        try sh(Self.executable, "init", data, "--host", "127.0.0.1")
        let socketDir = c.path + "/nothing-here"
        for (url, says) in [("mysql://root@db/fleet", "not a postgres:// URL"),
                            ("postgres://db.example/fleet", "no user"),
                            ("postgres://u:hunter2@db.example/", "no database name"),
                            ("postgres://u@db/fleet?sslmode=sometimes", "sslmode=sometimes"),
                            ("postgres://outpost@127.0.0.1:1/fleet", "cannot connect to postgres://outpost@127.0.0.1:1/fleet: connection refused"),
                            ("postgres://outpost@/fleet?host=\(socketDir)", "cannot connect to postgres://outpost@/fleet (socket \(socketDir)/.s.PGSQL.5432): no such file")] {
            let r = try runCommand([Self.executable, "serve", "--data", data, "--listen", "127.0.0.1:0", "--database", url],
                                   timeout: .seconds(60))
            let lines = r.stderr.split(separator: "\n")
            #expect(r.status == 1, "\(url): \(r.status) \(r.output)")
            #expect(lines.count == 1 && lines.first?.hasPrefix("outpost-controller: error: ") == true, "\(url): \(r.stderr)")
            #expect(r.stderr.lowercased().contains(says.lowercased()), "\(url): \(r.stderr)")
            #expect(!r.stderr.contains("hunter2"))
        }
    }
}
