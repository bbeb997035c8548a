import FoundationEssentials

/// Why the last-known-good list could not be read or written; names the path and the call.
public enum LastKnownGoodError: Error, Equatable, CustomStringConvertible {
    case io(FileError)
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
/// File: a JSON list of configuration objects, newest first, each exactly as it was validated.
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
        let data: Data
        do {
            guard let bytes = try AtomicFile.read(path) else { return [] }
            data = bytes
        } catch { throw .io(error) }
        guard case .array(let list)? = try? JSONValue.parse(data) else {
            throw .corrupt(path: path, detail: "not a JSON list")
        }
        var configs: [NetworkConfig] = []
        for (i, entry) in list.enumerated() {
            do { configs.append(try NetworkConfig(value: entry, source: entry.encoded())) } catch {
                throw .corrupt(path: path, detail: "entry \(i): \(error)")
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
        // Each source parsed as a JSON object when it was validated, so joining them is a valid list.
        var data = Data("[\n".utf8)
        for (i, config) in configs.enumerated() {
            if i > 0 { data.append(contentsOf: Array(",\n".utf8)) }
            data.append(config.source)
        }
        data.append(contentsOf: Array("\n]\n".utf8))
        do { try AtomicFile.write(data, to: path, mode: 0o600) } catch { throw .io(error) }
    }
}
