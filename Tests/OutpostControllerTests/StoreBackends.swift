import Foundation
import Logging
@testable import OutpostController
import OutpostTestSupport
import Testing

/// The two store implementations the one store suite runs against.
enum Backend: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case sqlite, postgres
    var testDescription: String { rawValue }
}

/// The suite's private PostgreSQL server: started once before the suite's first test, stopped
/// by PID after its last. A missing PostgreSQL fails the suite (start throws), never skips it.
struct PostgresServerScope: SuiteTrait, TestScoping {
    @TaskLocal static var current: PostgresServer?

    func provideScope(for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void) async throws {
        let server = try PostgresServer.start()
        defer { server.stop() }
        try await Self.$current.withValue(server) { try await function() }
    }
}

extension Trait where Self == PostgresServerScope {
    /// Runs the suite with a private PostgreSQL server (`PostgresServerScope.current`).
    static var postgresServer: Self { Self() }
}

/// A fresh, empty database of one backend, and what it takes to open it again.
final class StoreFixture: Sendable {
    let backend: Backend
    let location: StoreLocation
    /// The SQLite file's directory, or the PostgreSQL database's name.
    let name: String
    let server: PostgresServer?

    init(_ backend: Backend, tag: String) throws {
        self.backend = backend
        switch backend {
        case .sqlite:
            name = try TemporaryDirectory.create("store-\(tag)")
            location = .sqlite(path: name + "/fleet.sqlite")
            server = nil
        case .postgres:
            guard let server = PostgresServerScope.current else {
                throw ControllerError.store("no PostgreSQL server: the suite needs the .postgresServer trait")
            }
            name = "t_\(tag.lowercased().filter { $0.isLetter || $0.isNumber })_\(String(UInt32.random(in: 0...UInt32.max), radix: 36))"
            try server.createDatabase(name)
            location = .postgres(PostgresLocation(endpoint: .socket(path: server.socketPath), user: server.user, database: name))
            self.server = server
        }
    }

    func open() async throws -> any FleetStore {
        var logger = Logger(label: "store-test")
        logger.logLevel = .warning
        switch location {
        case let .postgres(p): return try await PostgresFleetStore.open(p, logger: logger, maximumConnections: 12)
        case .sqlite: return try await location.open(logger: logger)
        }
    }

    /// Closes a store `open` returned (PostgreSQL: its pool).
    func close(_ store: any FleetStore) async {
        await (store as? PostgresFleetStore)?.close()
    }

    func remove() {
        if backend == .sqlite { try? FileManager.default.removeItem(atPath: name) }
    }
}
