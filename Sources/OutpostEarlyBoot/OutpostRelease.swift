// /etc/outpost-release names the version of the root the builder assembled.
// Format (os-release style, written by OutpostBuilder's assembleRoot):
//
//     NAME=Outpost
//     VERSION=1.0.0
//
// A file holding a bare version on its first line is accepted too.

public enum OutpostRelease {
    public static let path = "/etc/outpost-release"

    /// The VERSION value, with optional quotes removed; nil if there is none.
    public static func version(fromFileText text: String) -> String? {
        var firstBare: String?
        for raw in text.split(separator: "\n") {
            let line = raw.trimmingSpaces()
            if line.isEmpty || line.hasPrefix("#") { continue }
            guard let equals = line.firstIndex(of: "=") else {
                if firstBare == nil { firstBare = line }
                continue
            }
            guard line[..<equals] == "VERSION" else { continue }
            var value = line[line.index(after: equals)...]
            if value.count >= 2, let quote = value.first, quote == "\"" || quote == "'", value.last == quote {
                value = value.dropFirst().dropLast()
            }
            return value.isEmpty ? nil : String(value)
        }
        return firstBare
    }
}
