import FoundationEssentials
import OutpostPlatform

/// Why the last-known-good list could not be read or written; names the path and the call.
public enum LastKnownGoodError: Error, Equatable, CustomStringConvertible {
    case io(SystemError)
    case corrupt(path: String, detail: String)

    public var description: String {
        switch self {
        case .io(let e): return "last-known-good: \(e)"
        case .corrupt(let path, let detail): return "last-known-good: \(path): \(detail)"
        }
    }
}

/// The ordered list of configurations that have worked, newest first, kept in one file in a
/// directory on PERSIST. It is replaced atomically (write temp, fsync, rename, fsync dir) so a
/// power cut leaves either the old list or the new one, never a torn file.
///
/// File: a JSON list of configuration objects, newest first, in the configuration file's own
/// fields (`NetworkConfig`'s Encodable form, sorted keys).
public struct LastKnownGoodStore: Sendable {
    public let directory: String
    public let capacity: Int
    public var path: String { directory + "/network-lkg.json" }

    public init(directory: String, capacity: Int = 4) {
        self.directory = directory
        self.capacity = max(1, capacity)
    }

    /// All stored configurations, newest first; an absent file is an empty list.
    public func load() throws(LastKnownGoodError) -> [NetworkConfig] {
        let bytes: [UInt8]?
        do throws(SystemError) { bytes = try FileIO.readIfPresent(path) } catch { throw .io(error) }
        guard let bytes else { return [] }
        guard let entries = try? JSONDecoder().decode([Entry].self, from: Data(bytes)) else {
            throw .corrupt(path: path, detail: "not a JSON list")
        }
        var configs: [NetworkConfig] = []
        for (i, entry) in entries.enumerated() {
            switch entry.config {
            case .success(let config): configs.append(config)
            case .failure(let error): throw .corrupt(path: path, detail: "entry \(i): \(error)")
            }
        }
        return configs
    }

    /// Records `config` as the newest working configuration, dropping duplicates and the oldest
    /// beyond capacity. An unreadable old list is replaced rather than blocking a working config.
    public func remember(_ config: NetworkConfig) throws(LastKnownGoodError) {
        var list = ((try? load()) ?? []).filter { !$0.sameSettings(as: config) }
        list.insert(config, at: 0)
        try write(Array(list.prefix(capacity)))
    }

    private func write(_ configs: [NetworkConfig]) throws(LastKnownGoodError) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        let data: Data
        do { data = try encoder.encode(configs) } catch {
            throw .corrupt(path: path, detail: "cannot encode: \(error)")
        }
        do throws(SystemError) { try FileIO.writeAtomically(Array(data) + [0x0A], to: path, mode: 0o600) } catch {
            throw .io(error)
        }
    }

    /// One list entry, validated like a pushed file; a bad entry is kept as
    /// its error so the report can say which entry it was.
    private struct Entry: Decodable {
        let config: Result<NetworkConfig, NetworkConfigError>

        init(from decoder: any Decoder) throws {
            do {
                let document = try NetworkConfig.Document(from: decoder)
                config = .success(NetworkConfig(document))
            } catch let error as NetworkConfigError {
                config = .failure(error)
            }
        }
    }
}
