// Debian packages for a slot's root, fetched with apt-get and unpacked with
// dpkg-deb: no chroot, no maintainer scripts, no root privileges needed.
//
// rootfs/packages.txt names what the root needs; the dependency closure
// (Depends and Pre-Depends, first alternative, first provider of a virtual
// package) is computed from the host's apt lists, so the list stays short.

import Foundation

public struct DebianPackages {
    /// Where downloaded .deb files are kept between builds.
    public var cache: URL

    /// The cache from ${OUTPOST_CACHE:-/var/cache/outpost}/debs.
    public static func defaultCache() -> URL {
        let base = ProcessInfo.processInfo.environment["OUTPOST_CACHE"] ?? "/var/cache/outpost"
        return URL(fileURLWithPath: base).appendingPathComponent("debs")
    }

    public init(cache: URL = DebianPackages.defaultCache()) {
        self.cache = cache
    }

    /// Package names from a packages.txt: one per line, '#' comments allowed.
    public static func parseList(_ text: String) -> [String] {
        entries(text).filter { !$0.hasPrefix("!") }
    }

    /// The `!name` lines of a packages.txt: packages kept out of the closure
    /// even when something depends on them (tpm-udev, which the TPM
    /// libraries depend on, brings udev and PAM to a system without either).
    public static func parseExclusions(_ text: String) -> Set<String> {
        Set(entries(text).filter { $0.hasPrefix("!") }.map { String($0.dropFirst()) })
    }

    private static func entries(_ text: String) -> [String] {
        text.split(separator: "\n").compactMap { line in
            let name = line.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false)[0]
                .trimmingCharacters(in: .whitespaces)
            return name.isEmpty ? nil : name
        }
    }

    /// `names` plus everything they depend on, sorted; nothing in `excluded`
    /// (nor what only it would bring).
    public func closure(of names: [String], excluding excluded: Set<String> = []) throws -> [String] {
        var done = excluded
        var pending = Set(names).subtracting(excluded)
        while !pending.isEmpty {
            let batch = pending.sorted()
            done.formUnion(batch)
            pending.removeAll()
            let output = try Tool.run(["apt-cache", 
                "depends", "--no-recommends", "--no-suggests", "--no-conflicts", "--no-breaks",
                "--no-replaces", "--no-enhances",
            ] + batch)
            for dependency in Self.firstChoices(aptCacheDepends: output) where !done.contains(dependency) {
                pending.insert(dependency)
            }
        }
        return done.subtracting(excluded).sorted()
    }

    /// Parses `apt-cache depends` output. A group of alternatives starts with
    /// "|Depends:" lines and ends with a plain "Depends:" line; only its first
    /// member is kept. A virtual package "<name>" resolves to the first
    /// provider printed under it.
    static func firstChoices(aptCacheDepends output: String) -> [String] {
        var chosen: [String] = []
        var inAlternatives = false
        var wantProvider = false
        for line in output.split(separator: "\n") {
            let text = line.trimmingCharacters(in: .whitespaces)
            if !line.hasPrefix(" ") { inAlternatives = false; wantProvider = false; continue }
            if wantProvider && line.hasPrefix("    ") && !text.contains(":") {
                chosen.append(text)
                wantProvider = false
                continue
            }
            let isAlternative = text.hasPrefix("|")
            let body = isAlternative ? String(text.dropFirst()) : text
            guard body.hasPrefix("Depends:") || body.hasPrefix("PreDepends:") else { continue }
            let name = body.split(separator: ":", maxSplits: 1)[1].trimmingCharacters(in: .whitespaces)
            let first = !inAlternatives
            inAlternatives = isAlternative
            guard first else { wantProvider = false; continue }
            if name.hasPrefix("<") {
                wantProvider = true
            } else {
                wantProvider = false
                chosen.append(name.split(separator: ":")[0].description) // drop ":any"
            }
        }
        return chosen
    }

    /// Downloads (or reuses from the cache) each package's .deb for the host
    /// architecture's candidate version; returns the .deb paths in name order.
    public func fetch(_ names: [String]) throws -> [URL] {
        try FileManager.default.createDirectory(at: cache, withIntermediateDirectories: true)
        var debs: [URL] = []
        for name in names.sorted() {
            let version = try candidateVersion(of: name)
            // apt-get names files NAME_VERSION_ARCH.deb with ':' escaped as %3a.
            let prefix = "\(name)_\(version.replacingOccurrences(of: ":", with: "%3a"))_"
            if let cached = try cachedDeb(prefix: prefix) {
                debs.append(cached)
                continue
            }
            try Tool.run(["apt-get", "download", "-q", "\(name)=\(version)"], in: cache)
            guard let fetched = try cachedDeb(prefix: prefix) else {
                throw SlotAssemblyError.fileMissing(what: "downloaded \(name)", path: cache.path)
            }
            debs.append(fetched)
        }
        return debs
    }

    /// Extracts each .deb's data into `root` (dpkg-deb -x keeps owners out of it).
    public func unpack(_ debs: [URL], into root: URL) throws {
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
        for deb in debs {
            try Tool.run(["dpkg-deb", "-x", deb.path, root.path])
        }
    }

    func candidateVersion(of name: String) throws -> String {
        let policy = try Tool.run(["apt-cache", "policy", name])
        for line in policy.split(separator: "\n") {
            let text = line.trimmingCharacters(in: .whitespaces)
            if text.hasPrefix("Candidate:") {
                let version = text.dropFirst("Candidate:".count).trimmingCharacters(in: .whitespaces)
                if version != "(none)" && !version.isEmpty { return version }
            }
        }
        throw SlotAssemblyError.packageNotFound(name)
    }

    private func cachedDeb(prefix: String) throws -> URL? {
        try FileManager.default.contentsOfDirectory(atPath: cache.path)
            .filter { $0.hasPrefix(prefix) && $0.hasSuffix(".deb") }
            .sorted().first.map { cache.appendingPathComponent($0) }
    }
}
