// Loads the early kernel modules the builder listed, two at a time where
// their dependencies allow.
//
// The builder resolves dependencies from modules.dep and writes one module
// per line, dependencies first, each with the listed modules it needs:
//
//   /lib/modules/<v>/kernel/drivers/md/dm-verity.ko: /lib/modules/<v>/kernel/drivers/md/dm-bufio.ko …
//
// so no modprobe (and no kmod library) is needed in the initramfs. Loading
// is CPU work in the kernel (relocations, the modules' init functions), and
// early boot's own next steps need only a few of them: the loads run on two
// threads in dependency levels while early boot looks for its slot, and it
// waits only for the modules a step needs (`waitFor`), then for all of them
// before it leaves the initramfs.

#if canImport(Glibc)
import Glibc
#endif
import OutpostShims
import OutpostPlatform
import Synchronization

/// A module that could not be loaded; early boot reports these and goes on,
/// because a missing optional driver must not stop the boot, and a missing
/// essential one fails later with a clearer error (no slot, no dm-verity).
public struct ModuleLoadFailure: Equatable, Sendable {
    public var path: String
    public var error: SystemError
}

/// One line of the list: a module and the listed modules it needs loaded first.
public struct ModuleEntry: Equatable, Sendable {
    public var path: String
    public var dependencies: [String]

    public init(path: String, dependencies: [String] = []) {
        self.path = path
        self.dependencies = dependencies
    }

    /// "…/dm-verity.ko" → "dm_verity": the name the kernel knows it by.
    public var name: String { KernelModules.name(ofPath: path) }
}

public enum KernelModules {
    /// The list the builder writes into the initramfs.
    public static let defaultListPath = "/lib/modules/initramfs.list"
    /// Loads at a time: the reference hardware and the QEMU guest have two cores.
    public static let workers = 2

    /// The list file's entries: `path` or `path: dependency …` per line, '#'
    /// comments and blank lines ignored, order kept.
    public static func parseList(_ text: String) -> [ModuleEntry] {
        text.split(separator: "\n").compactMap { raw in
            let line = raw.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false)[0]
            let parts = line.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
            let path = parts[0].trimmingSpaces()
            guard !path.isEmpty else { return nil }
            let dependencies = parts.count > 1 ? parts[1].split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init) : []
            return ModuleEntry(path: path, dependencies: dependencies)
        }
    }

    /// The entries in dependency levels: every module comes in a later level
    /// than each listed module it needs; a level's modules may load at once.
    /// Dependencies not in the list (built in, or absent) are not waited for,
    /// and a cycle cannot hang the boot: its modules go in the last level.
    public static func levels(_ entries: [ModuleEntry]) -> [[ModuleEntry]] {
        let listed = Set(entries.map(\.path))
        var level: [String: Int] = [:]
        var remaining = entries
        var result: [[ModuleEntry]] = []
        while !remaining.isEmpty {
            let ready = remaining.filter { entry in
                entry.dependencies.allSatisfy { !listed.contains($0) || level[$0] != nil }
            }
            let placed = ready.isEmpty ? remaining : ready
            for entry in placed { level[entry.path] = result.count }
            let placedPaths = Set(placed.map(\.path))
            remaining.removeAll { placedPaths.contains($0.path) }
            result.append(placed)
        }
        return result
    }

    /// Loads `entries` one after the other (dependencies first, as listed).
    public static func load(_ entries: [ModuleEntry],
                            loaded: (String, Int64) -> Void = { _, _ in }) -> [ModuleLoadFailure] {
        var failures: [ModuleLoadFailure] = []
        for entry in entries {
            if let failure = loadTimed(entry.path, loaded) { failures.append(failure) }
        }
        return failures
    }

    /// One finit_module(2), timed. EEXIST (already loaded or built in) counts as success.
    static func loadTimed(_ path: String, _ loaded: (String, Int64) -> Void) -> ModuleLoadFailure? {
        let started = MonotonicClock.now().milliseconds
        var failure: ModuleLoadFailure?
        do { try loadOne(path) } catch { failure = ModuleLoadFailure(path: path, error: error) }
        loaded(path, MonotonicClock.now().milliseconds - started)
        return failure
    }

    static func loadOne(_ path: String) throws(SystemError) {
        let fd = try Sys.open(path, O_RDONLY)
        defer { Sys.close(fd) }
        // EEXIST: already loaded (built in, or loaded as a dependency) is success.
        _ = try systemCall("finit_module", path, expecting: [.fileExists]) { OutpostShims_finit_module(fd, "", 0) }
    }

    /// "kernel/fs/nls/nls_iso8859-1.ko" → "nls_iso8859_1" ('-' and '_' are one character to the kernel).
    public static func name(ofPath path: String) -> String {
        var base = Substring(path.split(separator: "/").last ?? "")
        for suffix in [".xz", ".zst", ".gz", ".ko"] where base.hasSuffix(suffix) { base = base.dropLast(suffix.count) }
        return String(base.map { $0 == "-" ? "_" : $0 })
    }
}

/// The list loading in the background: level by level, each level's modules
/// shared between `KernelModules.workers` threads. `waitFor` blocks until named
/// modules are done; `finish` until all are, and returns what failed.
public final class ModuleLoading: Sendable {
    private struct State {
        var done: Set<String> = []
        var failures: [ModuleLoadFailure] = []
        var finished = false
    }
    /// Shared with the loading threads.
    private final class Shared<Value: Sendable>: Sendable {
        let value: Mutex<Value>
        init(_ value: Value) { self.value = Mutex(value) }
        func withLock<R>(_ body: (inout Value) -> R) -> R { value.withLock { body(&$0) } }
    }
    private let state = Shared(State())
    private let names: [String: String]
    private let coordinator: NamedThread?

    /// Starts loading `entries`; with no thread to be had, loads them here, one by one.
    public init(_ entries: [ModuleEntry], loaded: @escaping @Sendable (String, Int64) -> Void = { _, _ in }) {
        names = Dictionary(entries.map { ($0.name, $0.path) }, uniquingKeysWith: { first, _ in first })
        let state = state
        let run: @Sendable () -> Void = {
            for level in KernelModules.levels(entries) {
                let failures = ModuleLoading.loadLevel(level, loaded: loaded)
                state.withLock { s in
                    s.done.formUnion(level.map(\.path))
                    s.failures += failures
                }
            }
            state.withLock { $0.finished = true }
        }
        coordinator = try? NamedThread.start(name: "modules", run)
        if coordinator == nil { run() }
    }

    /// One level: its modules dealt out to the workers in turn; each worker loads its share in order.
    private static func loadLevel(_ level: [ModuleEntry],
                                  loaded: @escaping @Sendable (String, Int64) -> Void) -> [ModuleLoadFailure] {
        let shares = (0..<KernelModules.workers).map { worker in
            level.enumerated().filter { $0.offset % KernelModules.workers == worker }.map(\.element)
        }.filter { !$0.isEmpty }
        guard shares.count > 1 else { return KernelModules.load(level, loaded: loaded) }
        let results = Shared<[ModuleLoadFailure]>([])
        var threads: [NamedThread] = []
        for share in shares.dropFirst() {
            let body: @Sendable () -> Void = {
                let failures = KernelModules.load(share, loaded: loaded)
                results.withLock { $0 += failures }
            }
            if let thread = try? NamedThread.start(name: "modules", body) { threads.append(thread) } else { body() }
        }
        let own = KernelModules.load(shares[0], loaded: loaded)
        for thread in threads { thread.join() }
        return own + results.withLock { $0 }
    }

    /// Blocks until each listed module among `moduleNames` has been tried (names as
    /// the kernel has them, "dm_verity"); names not in the list return at once.
    public func waitFor(_ moduleNames: [String]) {
        let paths = moduleNames.compactMap { names[$0] }
        while !state.withLock({ s in s.finished || paths.allSatisfy(s.done.contains) }) {
            MonotonicClock.sleep(for: .milliseconds(5))
        }
    }

    /// Waits for every module and returns the ones that failed, in list order of their levels.
    public func finish() -> [ModuleLoadFailure] {
        coordinator?.join()
        return state.withLock { $0.failures }
    }
}

extension Substring {
    /// Without leading and trailing spaces, tabs and carriage returns.
    public func trimmingSpaces() -> String {
        var view = self[...]
        while let first = view.first, first == " " || first == "\t" || first == "\r" { view = view.dropFirst() }
        while let last = view.last, last == " " || last == "\t" || last == "\r" { view = view.dropLast() }
        return String(view)
    }
}

extension String {
    public func trimmingSpaces() -> String { self[...].trimmingSpaces() }
}
