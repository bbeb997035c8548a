import Foundation
import Logging

/// Where `serve` keeps the fleet: the data directory's SQLite file (the default), or a
/// PostgreSQL database named by `--database postgres://…`, so several machines can share one.
public enum StoreLocation: Sendable, Equatable, CustomStringConvertible {
    case sqlite(path: String)
    case postgres(PostgresLocation)

    /// `database` is `--database` (nil: SQLite in the data directory).
    public init(database: String?, dir: DataDirectory) throws(ControllerError) {
        if let database { self = .postgres(try PostgresLocation.parse(database)) } else { self = .sqlite(path: dir.database) }
    }

    /// The SQLite path, or the PostgreSQL URL without its password.
    public var description: String {
        switch self {
        case let .sqlite(path): return path
        case let .postgres(location): return location.description
        }
    }

    /// Opens the store and brings its schema to this controller's version.
    public func open(logger: Logger) async throws -> any FleetStore {
        switch self {
        case let .sqlite(path): return try SQLiteFleetStore(path: path)
        case let .postgres(location): return try await PostgresFleetStore.open(location, logger: logger)
        }
    }
}

/// A PostgreSQL database as a libpq-style URL: `postgres://USER[:PASSWORD]@HOST[:PORT]/DB`, or
/// over a UNIX socket `postgres://USER@/DB?host=/run/postgresql` (the directory holding
/// `.s.PGSQL.PORT`). `sslmode=require` asks for TLS checked against the system's trust roots.
public struct PostgresLocation: Sendable, Equatable, CustomStringConvertible {
    public enum Endpoint: Sendable, Equatable {
        case tcp(host: String, port: Int)
        /// The socket file itself (directory + `/.s.PGSQL.PORT`).
        case socket(path: String)
    }

    public var endpoint: Endpoint
    public var user: String
    public var password: String?
    public var database: String
    public var requireTLS: Bool

    public init(endpoint: Endpoint, user: String, password: String? = nil, database: String, requireTLS: Bool = false) {
        self.endpoint = endpoint
        self.user = user
        self.password = password
        self.database = database
        self.requireTLS = requireTLS
    }

    static let form = "postgres://USER[:PASSWORD]@HOST[:PORT]/DB or postgres://USER@/DB?host=/socket/dir"

    public static func parse(_ text: String) throws(ControllerError) -> PostgresLocation {
        func bad(_ why: String) -> ControllerError { .invalidInput("--database '\(redacted(text))': \(why) (\(form))") }
        guard let url = URLComponents(string: text) else { throw bad("not a URL") }
        guard let scheme = url.scheme?.lowercased(), scheme == "postgres" || scheme == "postgresql" else {
            throw bad("not a postgres:// URL")
        }
        guard let user = url.user, !user.isEmpty else { throw bad("no user") }
        let database = String(url.path.drop { $0 == "/" })
        guard !database.isEmpty, !database.contains("/") else { throw bad("no database name") }
        let port = url.port ?? 5432
        guard (1...65535).contains(port) else { throw bad("port \(port) is out of range") }
        var socketDir: String?
        var requireTLS = false
        for item in url.queryItems ?? [] {
            switch (item.name, item.value ?? "") {
            case let ("host", dir) where dir.hasPrefix("/"): socketDir = dir
            case ("sslmode", "disable"): requireTLS = false
            case ("sslmode", "require"): requireTLS = true
            default: throw bad("'\(item.name)=\(item.value ?? "")' is not understood (host=/DIR, sslmode=disable|require)")
            }
        }
        let host = url.host ?? ""
        let endpoint: Endpoint
        switch (host.isEmpty, socketDir) {
        case (true, let dir?): endpoint = .socket(path: dir + "/.s.PGSQL.\(port)")
        case (false, nil): endpoint = .tcp(host: host, port: port)
        case (true, nil): throw bad("no host")
        case (false, _?): throw bad("both a host and host=/DIR")
        }
        if case .socket = endpoint, requireTLS { throw bad("sslmode=require over a UNIX socket") }
        return PostgresLocation(endpoint: endpoint, user: user, password: url.password, database: database, requireTLS: requireTLS)
    }

    /// The URL without the password, for messages and logs.
    public var description: String {
        switch endpoint {
        case let .tcp(host, port): return "postgres://\(user)@\(host.contains(":") ? "[\(host)]" : host):\(port)/\(database)"
        case let .socket(path): return "postgres://\(user)@/\(database) (socket \(path))"
        }
    }

    /// `text` with any password replaced, so an error never prints it.
    static func redacted(_ text: String) -> String {
        guard var url = URLComponents(string: text), url.password != nil else { return text }
        url.password = "xxx"
        return url.string ?? text
    }
}
