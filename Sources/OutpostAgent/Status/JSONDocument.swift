// The device's one way to write JSON: `Encodable` documents rendered by
// FoundationEssentials' JSONEncoder (never full Foundation, never a
// hand-written renderer). Keys are sorted, so the same state always gives the
// same bytes and a diff of two status files shows only what changed; slashes
// stay unescaped, so device paths and URLs read as they are.

import FoundationEssentials

enum JSONDocument {
    /// One line: the control socket's reply, console lines, last-status.json.
    static func line(_ value: some Encodable) throws -> String {
        try render(value, pretty: false)
    }

    /// Indented, for documents a person reads whole (update status, boot.json).
    static func indented(_ value: some Encodable) throws -> String {
        try render(value, pretty: true)
    }

    private static func render(_ value: some Encodable, pretty: Bool) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = pretty ? [.sortedKeys, .withoutEscapingSlashes, .prettyPrinted]
            : [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(value), as: UTF8.self)
    }
}
