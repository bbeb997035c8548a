import Foundation

/// A private PostgreSQL server for one test run, from Debian's `postgresql` package: `initdb`
/// into a temporary directory and `pg_ctl start` listening only on a UNIX socket in that
/// directory (no TCP port to collide on), trust authentication, durability off (a test's data
/// dies with the directory). As root the server runs as the `postgres` user through `runuser`,
/// because PostgreSQL refuses to run as root. `stop()` ends it by the PID in postmaster.pid.
public final class PostgresServer: Sendable {
    /// The temporary directory: `data/`, `server.log` and the socket `.s.PGSQL.5432`.
    public let root: String
    /// Where initdb, pg_ctl and psql are.
    public let bin: String
    /// The postmaster's PID, read from postmaster.pid once it is up.
    public let pid: pid_t
    /// The role tests connect as (superuser, trust).
    public let user = "postgres"
    private let asPostgres: [String]

    public var socketPath: String { root + "/.s.PGSQL.5432" }

    /// The newest /usr/lib/postgresql/VERSION/bin holding initdb and pg_ctl.
    static func findBin() throws -> String {
        let base = "/usr/lib/postgresql"
        let versions = ((try? FileManager.default.contentsOfDirectory(atPath: base)) ?? []).compactMap(Int.init).sorted()
        for v in versions.reversed() where FileManager.default.isExecutableFile(atPath: "\(base)/\(v)/bin/pg_ctl")
            && FileManager.default.isExecutableFile(atPath: "\(base)/\(v)/bin/initdb") {
            return "\(base)/\(v)/bin"
        }
        throw TestSupportError.spawn(command: "initdb",
                                     reason: "PostgreSQL is not installed (no \(base)/*/bin/initdb): install Debian's postgresql package (./build.sh does)")
    }

    /// Makes a cluster and starts it; bounded: initdb 120 s, start 60 s.
    public static func start() throws -> PostgresServer {
        let bin = try findBin()
        let root = try TemporaryDirectory.create("pg")
        var asPostgres: [String] = []
        if getuid() == 0 {
            guard let pw = getpwnam("postgres") else {
                throw TestSupportError.spawn(command: "initdb", reason: "no 'postgres' user to run PostgreSQL as (Debian's postgresql package makes it)")
            }
            guard chown(root, pw.pointee.pw_uid, pw.pointee.pw_gid) == 0 else {
                throw TestSupportError.spawn(command: "chown \(root)", reason: String(cString: strerror(errno)))
            }
            asPostgres = ["runuser", "-u", "postgres", "--"]
        }
        do {
            try sh(asPostgres + [bin + "/initdb", "-D", root + "/data", "-A", "trust", "-U", "postgres", "-E", "UTF8",
                                 "--locale=C", "--no-sync"], timeout: .seconds(120))
            // pg_ctl hands -o to a shell: the empty listen_addresses is quoted for it.
            try sh(asPostgres + [bin + "/pg_ctl", "-D", root + "/data", "-l", root + "/server.log", "-w", "-t", "60",
                                 "-o", "-k \(root) -c listen_addresses='' -c fsync=off -c synchronous_commit=off"
                                     + " -c full_page_writes=off -c max_connections=300", "start"],
                   timeout: .seconds(90))
        } catch {
            let log = (try? String(contentsOfFile: root + "/server.log", encoding: .utf8)) ?? ""
            try? FileManager.default.removeItem(atPath: root)
            throw TestSupportError.spawn(command: "PostgreSQL in \(root)", reason: "\(error) \(log.suffix(300))")
        }
        guard let pidText = try? String(contentsOfFile: root + "/data/postmaster.pid", encoding: .utf8),
              let first = pidText.split(separator: "\n").first, let pid = pid_t(first) else {
            throw TestSupportError.spawn(command: "PostgreSQL in \(root)", reason: "no PID in postmaster.pid")
        }
        return PostgresServer(root: root, bin: bin, pid: pid, asPostgres: asPostgres)
    }

    private init(root: String, bin: String, pid: pid_t, asPostgres: [String]) {
        self.root = root
        self.bin = bin
        self.pid = pid
        self.asPostgres = asPostgres
    }

    /// A new empty database; tests take one each, so they run in parallel on one server.
    public func createDatabase(_ name: String) throws {
        try sh(bin + "/createdb", "-h", root, "-U", user, name, timeout: .seconds(60))
    }

    /// Runs one SQL command with psql and returns its unaligned, tuples-only output.
    @discardableResult
    public func sql(_ database: String, _ command: String) throws -> String {
        try sh(bin + "/psql", "-h", root, "-U", user, "-d", database, "-v", "ON_ERROR_STOP=1", "-At", "-c", command,
               timeout: .seconds(60)).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Fast shutdown (SIGINT) by PID, bounded at 30 s, then SIGKILL; removes the directory.
    public func stop() {
        if processAlive(pid) {
            kill(pid, SIGINT)
            let deadline = ContinuousClock.now + .seconds(30)
            while processAlive(pid) && ContinuousClock.now < deadline { usleep(50_000) }
            if processAlive(pid) { kill(pid, SIGKILL) }
        }
        try? FileManager.default.removeItem(atPath: root)
    }
}
