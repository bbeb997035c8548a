// Named secrets inside the vault: one file per secret under data/secrets,
// mode 0600, replaced atomically. The console can put and list them but never
// shows a value: console lines reach the controller's log store, so a value
// is reported as its length and SHA-256 only (enough to check it is the one
// meant, useless to a reader of the logs).
//
//   console: vault status | vault put NAME VALUE… | vault check NAME | vault list

#if canImport(Glibc)
import Glibc
#endif
import Crypto
import OutpostPlatform
import OutpostEarlyBoot

extension VaultService {
    /// 1–64 of [A-Za-z0-9._-], not starting with a dot: a file name and nothing else.
    static func validName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 64 && name.first != "."
            && name.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A)
                                      || $0 == 0x2E || $0 == 0x5F || $0 == 0x2D }
    }

    static let maximumSecretBytes = 4096
    var secretsDirectory: String { paths.mountPoint + "/secrets" }

    /// Stores `value` as secret `name`; refused unless the vault is open.
    public func put(_ name: String, _ value: [UInt8]) throws(VaultSecretError) {
        guard case .unlocked = state else { throw .locked(state.line) }
        guard Self.validName(name) else { throw .badName(name) }
        guard value.count <= Self.maximumSecretBytes else { throw .tooLarge(name: name, bytes: value.count) }
        do {
            try? Sys.mkdir(secretsDirectory, 0o700)
            try FileIO.writeAtomically(value, to: secretsDirectory + "/" + name, mode: 0o600)
        } catch {
            throw .io("\(error)")
        }
    }

    /// The stored secret's length and SHA-256 (hex), never its value.
    public func fingerprint(_ name: String) throws(VaultSecretError) -> (bytes: Int, sha256: String) {
        guard case .unlocked = state else { throw .locked(state.line) }
        guard Self.validName(name) else { throw .badName(name) }
        let path = secretsDirectory + "/" + name
        guard access(path, F_OK) == 0 else { throw .missing(name) }
        let value: [UInt8]
        do { value = try FileIO.read(path, limit: Self.maximumSecretBytes) } catch { throw .io("\(error)") }
        // The bytes already read: reading the file a second time to hash it could see another value.
        return (value.count, Self.sha256Hex(value))
    }

    /// Deletes secret `name`; a secret that is not there is not an error.
    public func remove(_ name: String) throws(VaultSecretError) {
        guard case .unlocked = state else { throw .locked(state.line) }
        guard Self.validName(name) else { throw .badName(name) }
        let path = secretsDirectory + "/" + name
        guard unlink(path) == 0 || errno == ENOENT else { throw .io("unlink \(path): \(String(cString: strerror(errno)))") }
    }

    static func sha256Hex(_ bytes: [UInt8]) -> String {
        SHA256.hash(data: bytes).map { byte in
            let hex = String(byte, radix: 16)
            return byte < 16 ? "0" + hex : hex
        }.joined()
    }

    /// The stored secrets' names, sorted.
    public func secretNames() throws(VaultSecretError) -> [String] {
        guard case .unlocked = state else { throw .locked(state.line) }
        return ((try? Sys.listDirectory(secretsDirectory)) ?? []).filter(Self.validName).sorted()
    }
}

public enum VaultSecretError: Error, CustomStringConvertible {
    case locked(String)
    case badName(String)
    case tooLarge(name: String, bytes: Int)
    case missing(String)
    case io(String)

    public var description: String {
        switch self {
        case .locked(let line): return "the vault is not open (\(line))"
        case .badName(let name):
            return "'\(String(name.prefix(40)))' is not a secret name (1-64 of A-Z a-z 0-9 . _ -, not starting with a dot)"
        case .tooLarge(let name, let bytes): return "\(name): \(bytes) bytes, more than \(VaultService.maximumSecretBytes)"
        case .missing(let name): return "no secret named \(name)"
        case .io(let what): return what
        }
    }
}

/// The console's `vault` commands.
enum VaultCommands {
    static let help = ["  vault status    the vault: open or locked and why, floor, key",
                       "  vault put NAME VALUE  store a secret in the vault (never shown back)",
                       "  vault check NAME      a secret's length and SHA-256",
                       "  vault list      the secrets' names"]

    static func respond(to words: [String], typed: String, vault: VaultService?) -> [String] {
        guard let vault else { return ["vault: not available (PERSIST is not mounted)"] }
        do {
            switch Array(words.dropFirst()) {
            case ["status"]:
                return [vault.state.line]
            case let w where w.first == "put" && w.count >= 3:
                // The value is the rest of the typed line after the name, spaces kept.
                let value = valueAfter(name: w[1], in: typed)
                try vault.put(w[1], Array(value.utf8))
                return ["vault: stored \(w[1]) (\(value.utf8.count) bytes)"]
            case let w where w.count == 2 && w[0] == "check":
                let (bytes, sha) = try vault.fingerprint(w[1])
                return ["vault: \(w[1]): \(bytes) bytes, sha256 \(sha)"]
            case ["list"]:
                let names = try vault.secretNames()
                return ["vault: \(names.count) secret\(names.count == 1 ? "" : "s")" + (names.isEmpty ? "" : ": " + names.joined(separator: ", "))]
            default:
                return ["usage: vault status | vault put NAME VALUE | vault check NAME | vault list"]
            }
        } catch {
            return ["vault: \(error)"]
        }
    }

    /// The typed text after "vault put NAME ", with its inner spaces.
    static func valueAfter(name: String, in typed: String) -> String {
        var rest = Substring(typed).drop { $0 == " " || $0 == "\t" }
        for word in ["vault", "put", name] {
            rest = rest.dropFirst(word.count).drop { $0 == " " || $0 == "\t" }
        }
        return String(rest)
    }
}
