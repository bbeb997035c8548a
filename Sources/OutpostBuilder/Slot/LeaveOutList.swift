// rootfs/leave-out.txt: the paths a slot's root drops after its packages are
// unpacked. A pattern names a path relative to the root; `*`, `?` and `[...]`
// match within one name (fnmatch), never across a `/`.

import Foundation
#if canImport(Glibc)
import Glibc
#endif

public struct LeaveOutList: Equatable, Sendable {
    public struct Pattern: Equatable, Sendable {
        public var line: Int
        public var components: [String]
        public var text: String { components.joined(separator: "/") }
    }

    public var file: String
    public var patterns: [Pattern]

    /// Parses the list; `file` names it in errors. Comments run from `#` to the end of a line.
    public init(_ text: String, file: String) throws(SlotAssemblyError) {
        self.file = file
        var patterns: [Pattern] = []
        for (index, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false)[0]
                .trimmingCharacters(in: .whitespaces)
            guard !line.isEmpty else { continue }
            let components = line.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
            guard !line.hasPrefix("/"), !components.contains(where: { $0.isEmpty || $0 == "." || $0 == ".." }),
                  !line.contains(where: { $0 == " " || $0 == "\t" }) else {
                throw .badListLine(file: file, line: index + 1, text: String(raw))
            }
            patterns.append(Pattern(line: index + 1, components: components))
        }
        self.patterns = patterns
    }

    /// The paths under `root` that `pattern` matches, relative to it, sorted.
    public static func matches(_ pattern: Pattern, in root: URL) -> [String] {
        let fm = FileManager.default
        var found = [""]
        for component in pattern.components {
            var next: [String] = []
            for prefix in found {
                let directory = prefix.isEmpty ? root.path : root.path + "/" + prefix
                let join = { (name: String) in prefix.isEmpty ? name : prefix + "/" + name }
                if component.contains(where: { "*?[".contains($0) }) {
                    let names = ((try? fm.contentsOfDirectory(atPath: directory)) ?? []).sorted()
                    next += names.filter { fnmatch(component, $0, FNM_PERIOD) == 0 }.map(join)
                } else if (try? fm.attributesOfItem(atPath: directory + "/" + component)) != nil { // lstat: a symlink counts
                    next.append(join(component))
                }
            }
            found = next
        }
        return found
    }

    /// Removes every match under `root`; returns the removed paths. A pattern that
    /// matches nothing throws before anything is removed.
    @discardableResult
    public func apply(to root: URL) throws -> [String] {
        var removals: [String] = []
        for pattern in patterns {
            let found = Self.matches(pattern, in: root)
            guard !found.isEmpty else { throw SlotAssemblyError.leftOutNothing(file: file, line: pattern.line, pattern: pattern.text) }
            removals += found
        }
        for path in removals { try FileManager.default.removeItem(at: root.appendingPathComponent(path)) }
        return removals
    }
}
