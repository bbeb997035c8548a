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
// threads, each taking the first module in list order whose dependencies are
// done, while early boot looks for its slot. It waits only for the modules a
// step needs (`waitFor`), then for all of them before it leaves the initramfs.

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

    /// Which pending module a free worker loads next: the first in list order whose
    /// listed dependencies have all been tried. The builder lists early boot's own
    /// needs first (the disks, then dm-verity: rootfs/modules.txt's order), so those
    /// load first and the slot shows up sooner. A dependency outside the list (built
    /// in, or absent) is not waited for. nil: wait for a load in flight. With nothing
    /// ready and nothing in flight the rest is a cycle, and its first module goes, so
    /// a cycle cannot hang the boot.
    public static func nextReady(_ pending: [ModuleEntry], tried: Set<String>, listed: Set<String>,
                                 loading: Int) -> Int? {
        if let index = pending.firstIndex(where: { entry in
            entry.dependencies.allSatisfy { !listed.contains($0) || tried.contains($0) }
        }) {
            return index
        }
        return loading == 0 && !pending.isEmpty ? 0 : nil
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

/// The list loading in the background: `KernelModules.workers` threads, each taking
/// the next ready module (`KernelModules.nextReady`) when it is free. `waitFor`
/// blocks until named modules are done; `finish` until all are, and returns what failed.
public final class ModuleLoading: Sendable {
    private struct State {
        var pending: [ModuleEntry]
        var loading = 0
        var tried: Set<String> = []
        var failures: [ModuleLoadFailure] = []
        var finished = false
    }
    private enum Step {
        case load(ModuleEntry)
        case wait
        case done
    }
    /// Shared with the loading threads.
    private final class Shared<Value: Sendable>: Sendable {
        let value: Mutex<Value>
        init(_ value: Value) { self.value = Mutex(value) }
        func withLock<R>(_ body: (inout Value) -> R) -> R { value.withLock { body(&$0) } }
    }
    private let state: Shared<State>
    private let names: [String: String]
    private let order: [String: Int]
    private let coordinator: NamedThread?

    /// Starts loading `entries`; with no thread to be had, loads them here, one by one.
    public init(_ entries: [ModuleEntry], loaded: @escaping @Sendable (String, Int64) -> Void = { _, _ in }) {
        names = Dictionary(entries.map { ($0.name, $0.path) }, uniquingKeysWith: { first, _ in first })
        order = Dictionary(entries.enumerated().map { ($1.path, $0) }, uniquingKeysWith: { first, _ in first })
        let state = Shared(State(pending: entries))
        self.state = state
        let listed = Set(entries.map(\.path))
        let work: @Sendable () -> Void = {
            while true {
                let step: Step = state.withLock { s in
                    guard !s.pending.isEmpty else { return .done }
                    guard let index = KernelModules.nextReady(s.pending, tried: s.tried, listed: listed, loading: s.loading) else {
                        return .wait
                    }
                    s.loading += 1
                    return .load(s.pending.remove(at: index))
                }
                switch step {
                case .done: return
                case .wait: MonotonicClock.sleep(for: .milliseconds(2))
                case .load(let entry):
                    let failure = KernelModules.loadTimed(entry.path, loaded)
                    state.withLock { s in
                        s.loading -= 1
                        s.tried.insert(entry.path)
                        if let failure { s.failures.append(failure) }
                    }
                }
            }
        }
        let run: @Sendable () -> Void = {
            let helpers = (1..<KernelModules.workers).compactMap { _ in try? NamedThread.start(name: "modules", work) }
            work()
            for helper in helpers { helper.join() }
            state.withLock { $0.finished = true }
        }
        coordinator = try? NamedThread.start(name: "modules", run)
        if coordinator == nil { run() }
    }

    /// Blocks until each listed module among `moduleNames` has been tried (names as
    /// the kernel has them, "dm_verity"); names not in the list return at once.
    public func waitFor(_ moduleNames: [String]) {
        let paths = moduleNames.compactMap { names[$0] }
        while !state.withLock({ s in s.finished || paths.allSatisfy(s.tried.contains) }) {
            MonotonicClock.sleep(for: .milliseconds(5))
        }
    }

    /// Waits for every module and returns the ones that failed, in list order.
    public func finish() -> [ModuleLoadFailure] {
        coordinator?.join()
        return state.withLock { $0.failures }.sorted { order[$0.path, default: 0] < order[$1.path, default: 0] }
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
