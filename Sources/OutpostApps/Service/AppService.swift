// The device's app instances as one service: from the configured apps to
// running QEMUs, and the operator's commands on them.
//
//   ROOT (PERSIST/apps)/
//     images/                 ContentStore: verified images by digest, partial downloads
//     instances/<name>/       AppInstance: overlays, console.log, qmp.sock
//     instances/<name>/counters   the restart and purge counters last acted on
//   VAULT (options.vault, open)/instances/<name>/   the same for an app with "vault": true (AppVault)
//
//   per app:  downloading ─▶ verifying ─▶ creating volume ─▶ booting ─▶ running
//               │ (a refusal or error: broken with the error, retried with backoff)
//               ▼
//             broken ── retry after 5 s, 10 s, ... ≤ 5 min
//
// `step()` does one round for every app (fetch what is missing, create the
// instance, start it when activated, act on a counter that went up); the
// supervisor's component calls it in a loop. The operator's commands
// (restart, purge, stop, start, snapshot, rollback) run on the caller's thread;
// an app that is busy with one refuses the next in one line. A QEMU that
// dies is restarted by its AppInstance with backoff; one the guest powered
// off, or the operator stopped, stays halted until asked.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import OutpostHTTP
import OutpostPlatform
import Synchronization

/// kill(2) under a name the `Command.kill` case does not shadow.
private func signalProcess(_ pid: pid_t, _ signal: Int32) -> Int32 { kill(pid, signal) }

/// One app instance as status reports it.
public struct AppStatus: Equatable, Sendable {
    /// downloading, verifying, creating volume, booting, running, halting, halted or broken.
    public var state: String
    public var name: String
    /// Why the app is broken (or the last refusal while it waits for a retry).
    public var error: String?
    /// While downloading: bytes so far of the image's size.
    public var downloadedBytes: UInt64?
    public var totalBytes: UInt64?
    public var activate: Bool
    /// The operator stopped it (`app stop`); it stays halted until `app start`.
    public var stoppedByOperator: Bool
    public var pid: Int32?
    /// QEMU starts after the first (crash restarts and operator restarts alike).
    public var restarts: Int
    /// The last boot: QEMU's start to the first console line (or QMP "running").
    public var bootSeconds: Double?
    /// When the instance became running (Unix seconds); nil when it is not running.
    public var runningSinceUnix: Int64?
    public var memoryLimitBytes: UInt64?
    public var residentBytes: UInt64?
    /// The app network's ACL counters, rule by rule per tap, drop-all last; empty without taps.
    public var acl: [ACLCounter] = []
    /// The running QEMU's CPU time (user + system, /proc/PID/stat) for the controller's metrics.
    public var cpuSeconds: Double? = nil
    /// The app's addresses on the app network, `interface=address`, from dnsmasq's leases.
    public var addresses: [String] = []
    /// Bytes the instance's overlays take on PERSIST (allocated blocks; the guest's writes and
    /// its snapshots); the verified base images are shared and not counted.
    public var diskBytes: UInt64? = nil

    public init(state: String, name: String, error: String?, downloadedBytes: UInt64?, totalBytes: UInt64?, activate: Bool,
                stoppedByOperator: Bool, pid: Int32?, restarts: Int, bootSeconds: Double?, runningSinceUnix: Int64?,
                memoryLimitBytes: UInt64?, residentBytes: UInt64?) {
        self.state = state
        self.name = name
        self.error = error
        self.downloadedBytes = downloadedBytes
        self.totalBytes = totalBytes
        self.activate = activate
        self.stoppedByOperator = stoppedByOperator
        self.pid = pid
        self.restarts = restarts
        self.bootSeconds = bootSeconds
        self.runningSinceUnix = runningSinceUnix
        self.memoryLimitBytes = memoryLimitBytes
        self.residentBytes = residentBytes
    }

    /// One line for the console and `outpostd status`.
    public var line: String {
        var text = "app \(name): \(state)"
        if let downloadedBytes, let totalBytes { text += " \(downloadedBytes)/\(totalBytes) bytes" }
        if !activate { text += " (not activated)" }
        if stoppedByOperator { text += " (stopped by the operator)" }
        if let pid { text += " pid=\(pid)" }
        if restarts > 0 { text += " restarts=\(restarts)" }
        if let bootSeconds { text += " boot=\(Self.tenths(bootSeconds)) s" }
        if let residentBytes, let memoryLimitBytes { text += " rss=\(residentBytes >> 20)/\(memoryLimitBytes >> 20) MiB" }
        if let diskBytes { text += " disk=\(Self.tenths(Double(diskBytes) / 1_048_576)) MiB" }
        if !addresses.isEmpty { text += " " + addresses.joined(separator: " ") }
        // Only rules that counted something: which rule dropped (or passed) what.
        let hits = acl.filter { $0.packets > 0 }.map { "\($0.rule)(\($0.action))=\($0.packets)" }
        if !hits.isEmpty { text += " acl " + hits.joined(separator: " ") }
        if let error { text += " error=\"\(error)\"" }
        return text
    }

    static func tenths(_ value: Double) -> String {
        let tenths = Int64((value * 10).rounded())
        return "\(tenths / 10).\(tenths % 10)"
    }
}

/// Every configured app of the device, fetched, created, run and commanded.
public final class AppService: Sendable {
    public struct Options: Sendable {
        /// The template every instance starts from (QEMU, firmware, accelerator, backoff).
        public var instance = AppInstance.Options()
        /// Downloads: timeouts, TLS, the interface.
        public var http = HTTPOptions()
        /// A cgroup v2 directory (controllers cpu and memory enabled for its children) under which
        /// each instance gets its own; nil: no cgroup limits.
        public var cgroupRoot: String?
        /// The first retry delay after a failed fetch or start; it doubles up to `maxRetryBackoff`.
        public var retryBackoff = Duration.seconds(5)
        public var maxRetryBackoff = Duration.seconds(300)
        /// Free space on PERSIST (statvfs; tests pass a figure).
        public var freeSpace: @Sendable (String) throws(AppsError) -> UInt64 = ContentStore.statvfsFree
        /// Where vault apps' instances live; closed (the default): vault apps do not start.
        public var vault = AppVault.closed(reason: "this device has no vault")

        public init() {}
    }

    /// Where an app is before (or instead of) its instance.
    enum Phase: Equatable, Sendable {
        case waiting
        case downloading(bytes: UInt64, of: UInt64)
        case verifying
        case creatingVolume
        case failed(String)
    }

    struct Entry: Sendable {
        var config: AppInstanceConfig
        var phase = Phase.waiting
        var instance: AppInstance?
        /// The command in progress ("restart", a download), so a second one is refused.
        var busy: String?
        /// Started once this boot (by the service or the operator): a halt after that is respected.
        var started = false
        var stoppedByOperator = false
        var retryAt: Deadline?
        var failures = 0
        var reportedError: String?
        var health = HealthWatch()
        /// A network probe of the health check is out (one at a time per app), and when the next may go.
        var probing = false
        var nextProbe: Deadline?
        /// The instance directory left at the other place by a switch between plain PERSIST and the
        /// vault; the app is refused until an operator purge deletes it.
        var stranded: String?
    }

    public let root: String
    public let store: ContentStore
    public let options: Options
    private let reaper: Reaper
    private let admission: MemoryAdmission
    private let log: @Sendable (String) -> Void
    private let entries: Mutex<[Entry]>
    /// A config `submit` handed over (the controller's apps section), or the part of one `apply`
    /// had to leave for later (an app busy with a command); taken at the start of each `step`.
    private let pending = Mutex<AppsConfig?>(nil)
    private let source = Mutex("apps.json")

    /// Where the configured apps came from ("apps.json", "controller"), for the device's info.
    public var configSource: String {
        get { source.withLock { $0 } }
        set { source.withLock { $0 = newValue } }
    }

    public var imagesDirectory: String { root + "/images" }
    public var instancesDirectory: String { root + "/instances" }
    /// A plain app's instance directory on PERSIST.
    public func instanceDirectory(_ name: String) -> String { instancesDirectory + "/" + name }

    /// Where the instance of `config` lives: in the vault for a vault app, which needs the vault
    /// open (never plain PERSIST instead), else on PERSIST.
    public func instanceDirectory(for config: AppInstanceConfig) throws(AppsError) -> String {
        guard config.vault else { return instanceDirectory(config.name) }
        switch options.vault {
        case let .open(root): return root + "/instances/" + config.name
        case let .closed(reason): throw .vaultClosed(app: config.name, reason: reason)
        }
    }

    /// The place `config` does not ask for (nil: the vault is closed, so it cannot be looked at).
    func otherInstanceDirectory(_ config: AppInstanceConfig) -> String? {
        config.vault ? instanceDirectory(config.name) : options.vault.instancesDirectory.map { $0 + "/" + config.name }
    }

    /// `log` gets one line per event worth telling an operator (an app's state change, a refusal).
    public init(config: AppsConfig, root: String, options: Options = Options(), reaper: Reaper = .shared,
                admission: MemoryAdmission = MemoryAdmission(), log: @escaping @Sendable (String) -> Void = { _ in }) {
        self.root = root
        self.options = options
        self.reaper = reaper
        self.admission = admission
        self.log = log
        store = ContentStore(root: root + "/images", freeSpace: options.freeSpace)
        entries = Mutex(config.apps.map { Entry(config: $0) })
    }

    public var names: [String] { entries.withLock { $0.map(\.config.name) } }

    /// Creates the directories and removes stored images no configured app uses.
    public func prepare() throws(AppsError) {
        do throws(SystemError) {
            for path in [root, instancesDirectory] {
                _ = try systemCall("mkdir", path, expecting: [.fileExists]) { mkdir(path, 0o755) }
            }
        } catch { throw .system(error) }
        let vaultInstances = options.vault.instancesDirectory
        let (digests, overlays, unreadable) = entries.withLock { entries -> (Set<String>, [String], [String]) in
            var digests = Set<String>()
            var overlays: [String] = []
            var unreadable: [String] = []
            for entry in entries {
                for source in entry.config.images { digests.insert(source.sha256) }
                if entry.config.vault && vaultInstances == nil { unreadable.append(entry.config.name) }
                // Both places: an instance a switch left behind keeps its bases until it is purged.
                for directory in [instanceDirectory(entry.config.name)] + (vaultInstances.map { [$0 + "/" + entry.config.name] } ?? []) {
                    for index in entry.config.manifest.images.indices { overlays.append(directory + "/disk\(index).qcow2") }
                }
            }
            return (digests, overlays, unreadable)
        }
        // A vault app's overlay may sit on an older base (a preserved disk) that only the vault shows.
        guard unreadable.isEmpty else {
            log("apps: unused images are kept: the vault is closed, so the overlays of \(unreadable.joined(separator: ", ")) cannot be read")
            return
        }
        let removed = try store.collectGarbage(referenced: digests, overlays: overlays)
        if !removed.isEmpty { log("apps: removed \(removed.count) image(s) no app uses") }
    }

    /// One round over every app: fetch, create, start, act on counters. `alive` is called
    /// during long work (downloads) so the supervisor sees progress.
    public func step(alive: @escaping () -> Void = {}) {
        if let config = pending.withLock({ pending in defer { pending = nil }; return pending }) {
            apply(config)
        }
        for name in names { step(name, alive: alive) }
    }

    // MARK: - A new config at runtime

    /// Hands over a new config (the controller's apps section) without waiting: the next `step`
    /// applies it. For callers that must not block (the controller client's thread).
    public func submit(_ config: AppsConfig) {
        pending.withLock { $0 = config }
    }

    /// Makes `config` the configured apps: new ones are added (the next `step` fetches and starts
    /// them), ones no longer listed are stopped and their instance directories and unused images
    /// removed, and existing ones take the new activate flag and counters (a restart or purge
    /// counter that went up restarts or purges a running instance once). An app whose manifest or
    /// image sources changed is stopped and rebuilt: its overlays are kept only where they are on
    /// the same base image or the manifest's disk says `preserve` (InstanceDisk). One whose `vault`
    /// changed is stopped, its directory left where it is, and refused until it is purged. An app busy with
    /// an operator command keeps its old config until the command ends (a later `step` applies
    /// it). Blocks while instances stop (up to their stop grace); returns the lines it logged.
    @discardableResult
    public func apply(_ config: AppsConfig) -> [String] {
        enum Action {
            case remove(AppInstance?, AppInstanceConfig), rebuild(AppInstance, moved: Bool), stop(AppInstance)
            case counters(AppInstance, AppInstanceConfig)
        }
        var actions: [Action] = []
        var deferred = false
        entries.withLock { entries in
            var next: [Entry] = []
            for wanted in config.apps {
                guard let index = entries.firstIndex(where: { $0.config.name == wanted.name }) else {
                    next.append(Entry(config: wanted))
                    continue
                }
                var entry = entries[index]
                if entry.busy != nil {
                    if entry.config != wanted { deferred = true }
                    next.append(entry)
                    continue
                }
                let moved = entry.config.vault != wanted.vault
                if entry.config.manifest != wanted.manifest || entry.config.images != wanted.images || moved {
                    if let instance = entry.instance { actions.append(.rebuild(instance, moved: moved)) }
                    entry = Entry(config: wanted)
                    entry.stoppedByOperator = entries[index].stoppedByOperator
                    entry.busy = entries[index].instance == nil ? nil : "rebuild"
                    next.append(entry)
                    continue
                }
                let before = entry.config
                entry.config = wanted
                if let instance = entry.instance, entry.started {
                    if before.activate && !wanted.activate {
                        actions.append(.stop(instance))
                        entry.started = false
                        entry.busy = "stop"
                    } else if wanted.activate && (before.restartCounter != wanted.restartCounter || before.purgeCounter != wanted.purgeCounter) {
                        actions.append(.counters(instance, wanted))
                        entry.busy = wanted.purgeCounter > before.purgeCounter ? "purge" : "restart"
                    }
                } else if !wanted.activate {
                    entry.started = false
                }
                next.append(entry)
            }
            for entry in entries where !config.apps.contains(where: { $0.name == entry.config.name }) {
                if entry.busy != nil {
                    deferred = true
                    next.append(entry)
                } else {
                    actions.append(.remove(entry.instance, entry.config))
                }
            }
            entries = next
        }
        if deferred { pending.withLock { if $0 == nil { $0 = config } } }
        var lines: [String] = []
        func tell(_ line: String) {
            lines.append(line)
            log(line)
        }
        for action in actions {
            switch action {
            case let .remove(instance, config):
                let name = config.name
                instance?.close()
                // Both places: an instance a switch left behind goes with the app.
                for directory in [instanceDirectory(name)] + (options.vault.instancesDirectory.map { [$0 + "/" + name] } ?? []) {
                    if let error = Self.removeTree(directory) { tell("warning: apps: \(name): \(error)") }
                }
                if config.vault, case let .closed(reason) = options.vault {
                    tell("warning: apps: \(name): its instance directory in the vault stays (\(reason))")
                }
                tell("apps: \(name): removed (no longer configured)")
            case let .rebuild(instance, moved):
                instance.close()
                update(instance.name) { $0.busy = nil }
                tell("apps: \(instance.name): " + (moved ? "\"vault\" changed; stopped, its disks stay at \(instance.directory) until it is purged"
                                                     : "manifest or images changed; rebuilt"))
            case let .stop(instance):
                instance.stop()
                update(instance.name) { $0.busy = nil }
                tell("apps: \(instance.name): halted (not activated)")
            case let .counters(instance, wanted):
                do throws(AppsError) {
                    let purge = try countersAskForPurge(wanted, directory: instance.directory)
                    if purge { try instance.purge() } else { try instance.restart() }
                    update(instance.name) { $0.busy = nil }
                    finish(instance.name, error: nil)
                    tell("apps: \(instance.name): " + (purge ? "purged (purge counter \(wanted.purgeCounter))" : "restarted (restart counter \(wanted.restartCounter))"))
                } catch {
                    finish(instance.name, error: error)
                }
            }
        }
        let removedAny = actions.contains { if case .remove = $0 { return true } else { return false } }
        if removedAny || actions.contains(where: { if case .rebuild = $0 { return true } else { return false } }) {
            do { try prepare() } catch { tell("warning: apps: \(error)") }
        }
        return lines
    }

    /// Removes a directory and everything in it (an instance's overlays, console logs, socket).
    /// nil when it is gone (or never was); else why not.
    static func removeTree(_ path: String) -> String? {
        var info = stat()
        guard lstat(path, &info) == 0 else { return errno == ENOENT ? nil : "\(path): lstat: \(String(cString: strerror(errno)))" }
        if (info.st_mode & S_IFMT) == S_IFDIR {
            guard let dir = opendir(path) else { return "\(path): opendir: \(String(cString: strerror(errno)))" }
            var names: [String] = []
            while let item = readdir(dir) {
                let name = withUnsafeBytes(of: item.pointee.d_name) { raw in
                    String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
                }
                if name != "." && name != ".." { names.append(name) }
            }
            closedir(dir)
            for name in names {
                if let error = removeTree(path + "/" + name) { return error }
            }
            guard rmdir(path) == 0 else { return "\(path): rmdir: \(String(cString: strerror(errno)))" }
            return nil
        }
        guard unlink(path) == 0 || errno == ENOENT else { return "\(path): unlink: \(String(cString: strerror(errno)))" }
        return nil
    }

    private func step(_ name: String, alive: @escaping () -> Void) {
        // Claim the app for this round unless a command holds it or a retry is not due.
        enum Work: Sendable { case none, fetch(AppInstanceConfig), start(AppInstance, AppInstanceConfig) }
        let work = entries.withLock { entries -> Work in
            guard let index = entries.firstIndex(where: { $0.config.name == name }) else { return .none }
            var entry = entries[index]
            defer { entries[index] = entry }
            guard entry.busy == nil else { return .none }
            if let retryAt = entry.retryAt, !retryAt.hasPassed { return .none }
            guard let instance = entry.instance else {
                entry.busy = "fetch"
                return .fetch(entry.config)
            }
            guard entry.config.activate, !entry.started, !entry.stoppedByOperator else { return .none }
            entry.busy = "start"
            return .start(instance, entry.config)
        }
        switch work {
        case .none: return
        case let .fetch(config):
            do throws(AppsError) {
                let instance = try makeInstance(config, alive: alive)
                update(name) {
                    $0.instance = instance
                    $0.phase = .waiting
                }
                finish(name, error: nil)
                // Start it in this round, not the next one half a second later (bench/app-start.sh
                // measured that wait as most of config-to-running). The instance exists now, so
                // this claims `.start` or nothing: no deeper recursion.
                step(name, alive: alive)
            } catch {
                finish(name, error: error)
            }
        case let .start(instance, config):
            update(name) { $0.phase = .creatingVolume }
            do throws(AppsError) {
                let purge = try countersAskForPurge(config, directory: instance.directory)
                try instance.start(purge: purge)
                log("apps: \(name): started" + (purge ? " on fresh disks (purge counter \(config.purgeCounter))" : ""))
                update(name) {
                    $0.started = true
                    $0.phase = .waiting
                }
                finish(name, error: nil)
            } catch {
                update(name) { $0.phase = .waiting }
                finish(name, error: error)
            }
        }
    }

    /// Fetches every image (or finds it stored) and builds the instance.
    private func makeInstance(_ config: AppInstanceConfig, alive: @escaping () -> Void) throws(AppsError) -> AppInstance {
        // Before any download: a vault app with the vault closed, or a refused switch, fetches nothing.
        let directory = try placeInstance(config)
        // PERSIST may have been empty (or wiped) since `prepare`: the store's parent must exist.
        do throws(SystemError) {
            for path in [root, instancesDirectory] {
                _ = try systemCall("mkdir", path, expecting: [.fileExists]) { mkdir(path, 0o755) }
            }
        } catch { throw .system(error) }
        var disks: [AppInstance.Disk] = []
        for image in config.manifest.images {
            guard let source = config.source(for: image) else {
                throw .invalid(field: "\(config.name).images", reason: "no source for \"\(image.imageName)\"")
            }
            let name = config.name
            if store.verified(sha256: source.sha256) == nil { log("apps: \(name): downloading \(source.name) (\(source.size) bytes)") }
            var lastReport = MonotonicClock.now()
            let path = try store.fetch(source, options: options.http) { progress in
                switch progress {
                case let .downloading(bytes, total):
                    self.update(name) { $0.phase = .downloading(bytes: bytes, of: total) }
                    if lastReport.elapsed >= .seconds(1) {
                        lastReport = MonotonicClock.now()
                        alive()
                    }
                case .verifying:
                    self.update(name) { $0.phase = .verifying }
                    alive()
                }
            }
            disks.append(AppInstance.Disk(image: image, base: try BaseImage.inspect(path)))
        }
        var instanceOptions = options.instance
        instanceOptions.cgroupDirectory = options.cgroupRoot.map { $0 + "/" + config.name }
        return try AppInstance(name: config.name, manifest: config.manifest, disks: disks,
                               directory: directory, options: instanceOptions,
                               reaper: reaper, admission: admission)
    }

    /// Where the new instance of `config` goes, after the vault and switch rules: a vault app needs
    /// the vault open. An instance directory at the other place (the config moved the app between
    /// plain PERSIST and the vault) is refused until the app is purged, by `app purge` or by a purge
    /// counter above the one that directory recorded; the purge deletes it. Nothing is moved: a
    /// copy out of the vault would put its data in the clear, one into it leaves the old blocks.
    private func placeInstance(_ config: AppInstanceConfig) throws(AppsError) -> String {
        let directory = try instanceDirectory(for: config)
        if let other = otherInstanceDirectory(config), access(other, F_OK) == 0 {
            guard let stored = storedCounters(in: other), config.purgeCounter > stored.purge else {
                update(config.name) { $0.stranded = other }
                throw .storageSwitch(app: config.name, existing: other, toVault: config.vault)
            }
            if let error = Self.removeTree(other) { throw .diskImage(path: other, reason: error) }
            log("apps: \(config.name): purge counter \(config.purgeCounter): deleted its old instance at \(other)")
        }
        update(config.name) { $0.stranded = nil }
        if config.vault, case let .open(root) = options.vault {
            // Only the vault's own directories; the mount point itself is the vault's to make.
            do throws(SystemError) {
                for path in [root, root + "/instances"] {
                    _ = try systemCall("mkdir", path, expecting: [.fileExists]) { mkdir(path, 0o700) }
                }
            } catch { throw .system(error) }
        }
        return directory
    }

    /// Releases the app after a round or command; an error becomes its reported state and a retry.
    private func finish(_ name: String, error: AppsError?) {
        let message = error.map(\.description)
        let tell = entries.withLock { entries -> Bool in
            guard let index = entries.firstIndex(where: { $0.config.name == name }) else { return false }
            entries[index].busy = nil
            guard let message else {
                entries[index].failures = 0
                entries[index].retryAt = nil
                if case .failed = entries[index].phase { entries[index].phase = .waiting }
                entries[index].reportedError = nil
                return false
            }
            entries[index].failures += 1
            let factor = Int64(1) << Int64(min(entries[index].failures - 1, 20))
            entries[index].retryAt = Deadline(after: min(options.retryBackoff * factor, options.maxRetryBackoff))
            entries[index].phase = .failed(message)
            defer { entries[index].reportedError = message }
            return entries[index].reportedError != message
        }
        if tell, let message { log("warning: apps: \(name): \(message)") }
    }

    private func update(_ name: String, _ change: (inout Entry) -> Void) {
        entries.withLock { entries in
            if let index = entries.firstIndex(where: { $0.config.name == name }) { change(&entries[index]) }
        }
    }

    // MARK: - Counters

    /// The counters last acted on, from an instance directory (nil: never recorded).
    func storedCounters(in directory: String) -> (restart: UInt64, purge: UInt64)? {
        guard let bytes = try? FileIO.readIfPresent(directory + "/counters", limit: 4096) else { return nil }
        var restart: UInt64?
        var purge: UInt64?
        for word in String(decoding: bytes, as: UTF8.self).split(whereSeparator: { $0 == " " || $0 == "\n" }) {
            let parts = word.split(separator: "=", maxSplits: 1)
            guard parts.count == 2, let value = UInt64(parts[1]) else { continue }
            if parts[0] == "restart" { restart = value }
            if parts[0] == "purge" { purge = value }
        }
        guard let restart, let purge else { return nil }
        return (restart, purge)
    }

    private func storeCounters(in directory: String, restart: UInt64, purge: UInt64) throws(AppsError) {
        do throws(SystemError) {
            _ = try systemCall("mkdir", directory, expecting: [.fileExists]) { mkdir(directory, 0o755) }
            try FileIO.writeAtomically(Array("restart=\(restart) purge=\(purge)\n".utf8), to: directory + "/counters")
        } catch { throw .system(error) }
    }

    /// Records the counters before the instance starts and says whether the purge counter went
    /// up since the last value acted on (a restart counter that went up needs nothing more: the
    /// instance is starting anyway). Recorded first: a power cut mid-purge must not purge again.
    /// No record yet (a new instance) is the baseline: its disks are fresh already.
    private func countersAskForPurge(_ config: AppInstanceConfig, directory: String) throws(AppsError) -> Bool {
        let stored = storedCounters(in: directory)
        guard stored?.restart != config.restartCounter || stored?.purge != config.purgeCounter else { return false }
        try storeCounters(in: directory, restart: config.restartCounter, purge: config.purgeCounter)
        guard let stored else { return false }
        return config.purgeCounter > stored.purge
    }

    // MARK: - Operator commands

    /// What an operator can ask of one app.
    public enum Command: Sendable, Equatable {
        case restart, purge, stop, start
        /// SIGKILL to the QEMU (one that no longer answers): the instance restarts it like after a crash.
        case kill
        case snapshot(String), rollback(String), deleteSnapshot(String)
        /// Lists the snapshots.
        case snapshots

        public var word: String {
            switch self {
            case .restart: return "restart"
            case .purge: return "purge"
            case .stop: return "stop"
            case .start: return "start"
            case .kill: return "kill"
            case .snapshot: return "snapshot"
            case .rollback: return "rollback"
            case .deleteSnapshot: return "delete-snapshot"
            case .snapshots: return "snapshots"
            }
        }
    }

    /// Runs `command` on the app `name` and returns the line that says what happened; the
    /// error says in one line why not. Blocks for as long as the command takes (a stop waits for
    /// the guest's power-down).
    public func perform(_ command: Command, on name: String) throws(AppsError) -> String {
        let (found, stranded) = try entries.withLock { (entries: inout [Entry]) throws(AppsError) -> (AppInstance?, String?) in
            guard let index = entries.firstIndex(where: { $0.config.name == name }) else {
                throw .unknownApp(name: name, known: entries.map(\.config.name))
            }
            if let busy = entries[index].busy {
                throw .notReady(app: name, reason: busy == "fetch" ? "its images are not ready yet (\(Self.state(entries[index])))"
                                : "busy with \(busy); try again shortly")
            }
            guard let instance = entries[index].instance else {
                if command == .purge, let stranded = entries[index].stranded {
                    entries[index].busy = command.word
                    return (nil, stranded)
                }
                throw .notReady(app: name, reason: "its images are not ready yet (\(Self.state(entries[index])))")
            }
            entries[index].busy = command.word
            switch command {
            case .stop: entries[index].stoppedByOperator = true
            case .start, .restart, .purge:
                entries[index].stoppedByOperator = false
                entries[index].started = true
                entries[index].retryAt = nil
                if case .failed = entries[index].phase { entries[index].phase = .waiting }
            case .snapshot, .rollback, .deleteSnapshot, .snapshots, .kill: break
            }
            return (instance, nil)
        }
        defer { update(name) { $0.busy = nil } }
        guard let instance = found else {
            // A purge of an app refused for a switch between plain PERSIST and the vault.
            let old = stranded ?? ""
            if let error = Self.removeTree(old) { throw .diskImage(path: old, reason: error) }
            update(name) { entry in
                entry.stranded = nil
                entry.stoppedByOperator = false
                entry.retryAt = nil
                entry.failures = 0
                entry.reportedError = nil
                if case .failed = entry.phase { entry.phase = .waiting }
            }
            return "app \(name): purged; deleted its old instance at \(old); it starts on fresh disks"
        }
        switch command {
        case .restart:
            try instance.restart()
            return "app \(name): restarted on its disks"
        case .purge:
            try instance.purge()
            return "app \(name): purged; restarted on fresh disks"
        case .start:
            guard instance.pid == nil else { return "app \(name): already \(instance.state)" }
            try instance.start()
            return "app \(name): started"
        case .stop:
            switch instance.stop() {
            case .alreadyHalted: return "app \(name): already halted"
            case .poweredDown: return "app \(name): halted (the guest powered down)"
            case .quit: return "app \(name): halted (the guest ignored the power button; QEMU quit)"
            case .killed: return "app \(name): halted (QEMU killed)"
            case .unresponsive: return "app \(name): QEMU did not end even after SIGKILL"
            }
        case .kill:
            guard let pid = instance.pid else { throw .notReady(app: name, reason: "has no QEMU running") }
            guard signalProcess(pid, SIGKILL) == 0 else { throw .system(.current("kill", "QEMU pid \(pid)")) }
            return "app \(name): QEMU pid \(pid) killed; it is restarted like after a crash"
        case let .snapshot(tag):
            let running = instance.pid != nil
            try instance.snapshot(.save, name: tag)
            return "app \(name): snapshot \(tag) taken" + (running ? "" : " (halted: its disks)")
        case let .rollback(tag):
            let running = instance.pid != nil
            try instance.snapshot(.load, name: tag)
            return "app \(name): rolled back to snapshot \(tag)" + (running ? "" : " (halted: its disks; the next start boots from them)")
        case let .deleteSnapshot(tag):
            try instance.snapshot(.delete, name: tag)
            return "app \(name): snapshot \(tag) deleted"
        case .snapshots:
            let names = try instance.snapshots()
            return names.isEmpty ? "app \(name): no snapshots" : "app \(name): snapshots: " + names.joined(separator: ", ")
        }
    }

    // MARK: - Status

    /// Every app's status; `aclCounters` reads the network's counters (one `nft` run), which
    /// the agent's half-second state watch leaves out.
    public func status(aclCounters: Bool = true) -> [AppStatus] {
        let entries = entries.withLock { $0 }
        return entries.map { entry in
            var status = AppStatus(state: Self.state(entry), name: entry.config.name, error: nil, downloadedBytes: nil,
                                   totalBytes: nil, activate: entry.config.activate,
                                   stoppedByOperator: entry.stoppedByOperator, pid: nil, restarts: 0, bootSeconds: nil,
                                   runningSinceUnix: nil, memoryLimitBytes: nil, residentBytes: nil)
            if case let .downloading(bytes, total) = entry.phase {
                status.downloadedBytes = bytes
                status.totalBytes = total
            }
            if case let .failed(error) = entry.phase { status.error = error }
            if let instance = entry.instance {
                if case let .broken(error) = instance.state, status.error == nil { status.error = error }
                status.pid = instance.pid
                status.restarts = max(0, instance.spawnCount - 1)
                status.bootSeconds = instance.bootDuration.map { Double($0.components.seconds) + Double($0.components.attoseconds) / 1e18 }
                status.runningSinceUnix = instance.runningSinceUnix
                status.memoryLimitBytes = instance.limits.memoryMax
                status.residentBytes = instance.residentBytes
                if aclCounters { status.acl = (try? instance.options.network?.counters(app: entry.config.name)) ?? [] }
                status.cpuSeconds = status.pid.flatMap(Self.cpuSeconds)
                status.diskBytes = instance.diskBytes
                if let network = instance.options.network { status.addresses = network.addresses(app: entry.config.name) }
            }
            return status
        }
    }

    /// utime + stime of a process, from /proc/PID/stat (fields 14 and 15, after the parenthesized name).
    static func cpuSeconds(pid: Int32) -> Double? {
        guard let bytes = try? FileIO.readIfPresent("/proc/\(pid)/stat", limit: 4096) else { return nil }
        let text = String(decoding: bytes, as: UTF8.self)
        guard let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        // fields[0] is the state (field 3), so utime (14) and stime (15) are at 11 and 12.
        guard fields.count > 12, let user = UInt64(fields[11]), let system = UInt64(fields[12]) else { return nil }
        let ticks = sysconf(Int32(_SC_CLK_TCK))
        return ticks > 0 ? Double(user + system) / Double(ticks) : nil
    }

    /// The reported state word: the phase before an instance exists (or while it is created), else the instance's.
    static func state(_ entry: Entry) -> String {
        switch entry.phase {
        case .downloading: return "downloading"
        case .verifying: return "verifying"
        case .creatingVolume: return "creating volume"
        case .failed: return "broken"
        case .waiting:
            guard let instance = entry.instance else { return entry.busy == "fetch" ? "downloading" : "halted" }
            switch instance.state {
            case .halted: return "halted"
            case .booting: return "booting"
            case .running: return "running"
            case .halting: return "halting"
            case .broken: return "broken"
            }
        }
    }

    /// The last `count` lines of the app's serial console (console.log on PERSIST).
    public func consoleTail(_ name: String, lines count: Int) throws(AppsError) -> [String] {
        let instance = try entries.withLock { (entries: inout [Entry]) throws(AppsError) -> AppInstance? in
            guard let entry = entries.first(where: { $0.config.name == name }) else {
                throw .unknownApp(name: name, known: entries.map(\.config.name))
            }
            return entry.instance
        }
        guard let instance else { return [] }
        return instance.consoleFile.tail(count)
    }

    /// Every instance's new console lines (and the rotation of logs over their quota), for
    /// the agent to send with the device's logs. Called every round whether or not anyone
    /// sends them, so the quota holds on an unmanaged device too.
    /// The drained lines also feed each app's health check: a running guest that has not printed
    /// its marker for the check's timeout gets its QEMU killed (SIGKILL, since a hung guest does
    /// not answer the power button) and is restarted like after a crash, with the same backoff.
    public func drainConsoles() -> [(app: String, drain: ConsoleLog.Drain)] {
        let instances = entries.withLock { $0.compactMap { entry in entry.instance.map { (entry.config.name, $0) } } }
        return instances.map { name, instance in
            let drain = instance.drainConsole()
            checkHealth(name, instance, lines: drain.lines)
            return (name, drain)
        }
    }

    private func checkHealth(_ name: String, _ instance: AppInstance, lines: [String]) {
        let running = instance.state == .running, spawn = instance.spawnCount, pid = instance.pid
        let (silent, probe) = entries.withLock { entries -> ((Duration, AppHealthCheck)?, AppHealthCheck?) in
            guard let index = entries.firstIndex(where: { $0.config.name == name }), entries[index].instance === instance,
                  entries[index].busy == nil, let check = entries[index].config.health else { return (nil, nil) }
            var probe: AppHealthCheck?
            if running, check.tcpPort != nil, !entries[index].probing, entries[index].nextProbe?.hasPassed ?? true {
                entries[index].probing = true
                // A few probes per timeout, so one lost SYN does not cost the app its QEMU.
                entries[index].nextProbe = Deadline(after: .seconds(max(1, min(10, check.timeoutSeconds / 3))))
                probe = check
            }
            return (entries[index].health.observe(check, running: running, spawn: spawn, lines: lines).map { ($0, check) }, probe)
        }
        if let probe { startProbe(name, instance, check: probe, spawn: spawn) }
        guard let (duration, check) = silent, let pid else { return }
        let seconds = duration.components.seconds
        guard signalProcess(pid, SIGKILL) == 0 else {
            log("warning: apps: \(name): health check failed but QEMU pid \(pid) could not be killed: errno \(errno)")
            return
        }
        let what = [check.consoleMarker.map { "no \"\($0)\" on its console" },
                    check.tcpPort.map { port in check.httpPath.map { "no answer to GET \($0) on port \(port)" } ?? "no answer on TCP port \(port)" }]
            .compactMap { $0 }.joined(separator: " and ")
        log("warning: apps: \(name): \(what) for \(seconds) s (health check); QEMU pid \(pid) killed, restarted like after a crash")
    }

    /// One network probe on a thread of its own: the app's first address on the app network
    /// (no lease yet: no answer), a TCP connect or an HTTP GET, at most 2 s.
    private func startProbe(_ name: String, _ instance: AppInstance, check: AppHealthCheck, spawn: Int) {
        let address = instance.options.network?.addresses(app: name).first.map { String($0.drop { $0 != "=" }.dropFirst()) }
        let done: @Sendable (Bool) -> Void = { [weak self] answered in
            self?.entries.withLock { entries in
                guard let index = entries.firstIndex(where: { $0.config.name == name }), entries[index].instance === instance else { return }
                entries[index].probing = false
                if answered { entries[index].health.answered(spawn: spawn) }
            }
        }
        guard let address, let port = check.tcpPort else { return done(false) }
        do {
            try NamedThread.detach(name: "app-probe") {
                done(HealthProbe.answers(address: address, port: port, httpPath: check.httpPath, timeout: .seconds(2)))
            }
        } catch {
            done(false)
        }
    }

    /// The instance of `name` once its images are in place (tests, status details).
    public func instance(_ name: String) -> AppInstance? {
        entries.withLock { $0.first { $0.config.name == name }?.instance }
    }

    /// Stops every instance (ACPI, then quit) and their monitor threads.
    public func close() {
        let instances = entries.withLock { $0.compactMap(\.instance) }
        for instance in instances { instance.close() }
    }
}
