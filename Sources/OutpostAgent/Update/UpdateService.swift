// The agent's half of the update flow (ARCHITECTURE.md, "Update flow"):
// after every boot it asks the engine what happened (fallback? trial?),
// runs the test window on a trial boot and commits or gives up, and installs
// bundles that arrive on update media. The engine (OutpostUpdate) does every
// write; this type decides when, and says what it did on the console.

#if canImport(Glibc)
import Glibc
#endif
import FoundationEssentials
import OutpostBundle
import OutpostDisk
import OutpostUpdate
import OutpostPlatform
import OutpostEarlyBoot
import Synchronization

/// Where the agent's update inputs and outputs live on the device.
public struct UpdatePaths: Sendable {
    public var trustDirectory = "/etc/outpost/trust"
    public var stateDirectory = "/persist/update"
    /// Where installs keep a bundle's vault approvals for its slot (VaultPaths.directory).
    public var vaultDirectory: String? = "/persist/vault"
    public var configFile = "/config/update.json"
    public var boardFile = "/etc/outpost/board"
    /// The controller's root CA from CONFIG, trusted for downloads too.
    public var controllerCAFile = "/config/root-ca.pem"
    public init() {}
}

/// `/config/update.json`: per-device update policy from CONFIG.
public struct UpdatePolicy: Codable, Sendable, Equatable {
    /// How long a new slot must stay healthy before it is committed.
    public var testWindowSeconds: Int = 600

    public init() {}

    public static func load(path: String) -> (UpdatePolicy, String?) {
        guard Sys.exists(path) else { return (UpdatePolicy(), nil) }
        do {
            let bytes = try Sys.readFile(path, limit: 64 << 10)
            var policy = try JSONDecoder().decode(UpdatePolicy.self, from: Data(bytes))
            policy.testWindowSeconds = max(1, min(policy.testWindowSeconds, 24 * 3600))
            return (policy, nil)
        } catch {
            return (UpdatePolicy(), "\(path): \(error); using the default test window")
        }
    }
}

/// Why the service wants the device restarted.
public enum UpdateRebootReason: Sendable, Equatable {
    /// A bundle was installed into the other slot.
    case update(version: String, slot: String)
    /// The trial slot failed its test window; restarting falls back.
    case testFailed(version: String?, reason: String)
}

public final class UpdateService: Sendable {
    public let diskPath: String
    public let bootedPartUUID: String
    public let version: String
    public let paths: UpdatePaths
    /// What the controller asked for and where the flow is (ControllerUpdates.swift).
    let controller = Mutex(ControllerUpdateState())
    /// The vault, whose TPM floor follows the committed security version.
    public let vault: VaultService?

    public init(diskPath: String, bootedPartUUID: String, version: String, paths: UpdatePaths = UpdatePaths(),
                vault: VaultService? = nil) {
        self.diskPath = diskPath
        self.bootedPartUUID = bootedPartUUID
        self.version = version
        self.paths = paths
        self.vault = vault
    }

    /// Opens the disk, the trust anchors and the state store.
    public func engine() throws -> UpdateEngine {
        let device = try FileBlockDevice(path: diskPath, writable: true)
        let trust = try TrustStore.load(directory: paths.trustDirectory)
        try? Sys.mkdir(paths.stateDirectory, 0o700)
        let board = (try? Sys.readText(paths.boardFile))?.split(separator: "\n").first.map(String.init) ?? "generic-efi"
        return UpdateEngine(device: device, store: DirectoryStateStore(directory: paths.stateDirectory), trust: trust,
                            identity: DeviceIdentity(board: board, arch: "x86_64"), vaultDirectory: paths.vaultDirectory)
    }

    /// One boot's update work. `unhealthy` returns nil while the system is
    /// healthy, or why not; `alive` reports liveness to the supervisor during
    /// the long test window; `reboot` asks PID 1 for an orderly restart.
    public func run(unhealthy: () -> String?, alive: () -> Void, reboot: (UpdateRebootReason) -> Void) {
        let engine: UpdateEngine
        let booted: Int
        do {
            engine = try self.engine()
            booted = try engine.slotNumber(partUUID: bootedPartUUID)
        } catch {
            Console.line("warning: update: cannot open the update engine: \(error)")
            return
        }
        let status: BootStatus
        do { status = try engine.afterBoot(booted: booted) } catch {
            Console.line("warning: update: after-boot check failed: \(error)")
            return
        }
        recordBootStatus(status, state: try? engine.store.load())
        switch status {
        case let .testing(slot, trialVersion):
            let (policy, warning) = UpdatePolicy.load(path: paths.configFile)
            if let warning { Console.line("warning: update: \(warning)") }
            Console.line("update: testing version=\(trialVersion ?? version) slot=\(slot) window=\(policy.testWindowSeconds)s")
            // A managed device also needs its controller within the window (a 503 counts).
            if let reason = testWindow(seconds: policy.testWindowSeconds, unhealthy: unhealthy, alive: alive)
                ?? controllerVerdict(windowSeconds: policy.testWindowSeconds) {
                Console.line("update: test of version=\(trialVersion ?? version) failed: \(reason); restarting to fall back")
                do { try engine.recordTestFailure(booted: booted, reason: reason) } catch {
                    Console.line("warning: update: cannot record the failure: \(error)")
                }
                controller.withLock { $0.restarting = true }
                setProgress(.failed, version: trialVersion ?? version, reason: "test window: \(reason)")
                reboot(.testFailed(version: trialVersion, reason: reason))
                return
            }
            do {
                try engine.commit(booted: booted)
                Console.line("update: committed version=\(trialVersion ?? version) slot=\(slot)")
                setProgress(.committed, version: trialVersion ?? version)
                // From now on no older slot's approvals open the vault.
                if let vault, let floor = (try? engine.store.load())?.securityFloor { vault.raiseFloor(to: floor) }
            } catch {
                Console.line("warning: update: commit failed: \(error)")
                setProgress(.failed, version: trialVersion ?? version, reason: "commit: \(error)")
                return
            }
        case let .fellBack(failedSlot, failedVersion, reason):
            Console.line("update: fell back from \(failedSlot) version=\(failedVersion ?? "unknown"): \(reason)")
        case let .rebootPending(slot):
            Console.line("update: \(slot) is waiting for a restart to boot its update")
        case .idle:
            // A power cut between a commit and the floor's raise: catch up now (it only ever rises).
            if let vault, let floor = (try? engine.store.load())?.securityFloor { vault.raiseFloor(to: floor) }
        case .rescue:
            break
        }
        installFromMedia(engine: engine, booted: booted, reboot: reboot)
    }

    /// Polls health once a second for the window. Returns the first reason
    /// the system was unhealthy, or nil if it stayed healthy throughout.
    func testWindow(seconds: Int, unhealthy: () -> String?, alive: () -> Void) -> String? {
        let end = MonotonicClock.now().milliseconds + Int64(seconds) * 1000
        var reported = Int64.max
        repeat {
            alive()
            if let reason = unhealthy() { return reason }
            // The controller sees the seconds left, refreshed every 30 s (not every second: each is an info report).
            let left = max(0, end - MonotonicClock.now().milliseconds) / 1000
            if reported - left >= 30 {
                reported = left
                setProgress(.testing, version: progress.version) { $0.secondsLeft = Int(left) }
            }
            MonotonicClock.sleep(for: .milliseconds(1000))
        } while MonotonicClock.now().milliseconds < end
        return unhealthy()
    }

    /// Installs the newest bundle on attached update media, if it is a
    /// different version that did not fail before.
    func installFromMedia(engine: UpdateEngine, booted: Int, reboot: (UpdateRebootReason) -> Void) {
        for bundle in UpdateMedia.findBundles() {
            do {
                let source = try FilePayloadSource(path: bundle)
                // Signature only (cheap): enough to trust the version it names.
                let verified = try BundleVerifier.verify(try BundlePrologue.read(from: source), trust: engine.trust,
                                                         policy: BundlePolicy())
                let manifest = verified.manifest.osVersion
                if manifest == version { continue }
                if let failed = try? engine.store.load().failure(of: manifest) {
                    Console.line("update: skipping \(bundle): version \(manifest) failed before (\(failed.reason))")
                    continue
                }
                Console.line("update: installing \(bundle) (version \(manifest))")
                setProgress(.installing, version: manifest)
                let report = try engine.install(source, booted: booted)
                controller.withLock { $0.restarting = true }
                setProgress(.rebooting, version: report.version)
                Console.line("update: installed version=\(report.version) slot=\(report.slot); restarting into it")
                reboot(.update(version: report.version, slot: report.slot))
                return
            } catch {
                Console.line("update: refused \(bundle): \(error)")
            }
        }
    }
}
