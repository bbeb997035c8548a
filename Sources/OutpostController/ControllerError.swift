#if canImport(Glibc)
import Glibc
#endif

/// Everything the controller refuses or fails at, with the context a user
/// needs to fix it. `description` is the one line the CLI prints.
public enum ControllerError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A file the controller needs could not be read or written.
    case io(path: String, reason: String)
    /// A data directory that `init` did not make, or that is incomplete.
    case dataDirectory(path: String, reason: String)
    /// A certificate or key that does not parse or is not P-256.
    case certificate(what: String, reason: String)
    /// Invalid user input on the command line or the admin socket.
    case invalidInput(String)
    /// No device matches, or several do.
    case unknownDevice(String)
    case ambiguousDevice(String, matches: [String])
    /// A bundle the fleet's devices would refuse (signature, manifest, digest).
    case bundleRefused(path: String, reason: String)
    /// The store (SQLite or PostgreSQL) failed.
    case store(String)
    /// The database was migrated by a newer controller: this one would misread it.
    case schemaTooNew(database: String, version: Int, known: Int)
    /// The admin socket could not be reached or answered with an error.
    case admin(String)

    public var description: String {
        switch self {
        case let .io(path, reason): return "\(path): \(reason)"
        case let .dataDirectory(path, reason): return "data directory \(path): \(reason)"
        case let .certificate(what, reason): return "\(what): \(reason)"
        case let .invalidInput(message): return message
        case let .unknownDevice(ref): return "no device '\(ref)' (see `outpost-controller device list`)"
        case let .ambiguousDevice(ref, matches):
            return "'\(ref)' matches \(matches.count) devices (\(matches.prefix(4).joined(separator: ", "))); give more of the id"
        case let .bundleRefused(path, reason): return "bundle \(path) refused: \(reason)"
        case let .store(message): return "store: \(message)"
        case let .schemaTooNew(database, version, known):
            return "\(database) has schema version \(version), newer than this controller's \(known): run a newer outpost-controller"
        case let .admin(message): return message
        }
    }
}

/// The C library's message for an errno, for one-line errors.
func errnoString(_ code: Int32) -> String {
    String(cString: strerror(code))
}
