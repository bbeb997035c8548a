// Updates the controller asks for (its config's base OS), on the update
// component's own thread: the controller client only drops the request here
// and returns. The bundle is downloaded into PERSIST with the device's client
// certificate (resuming with Range after an interruption), then installed
// through the same engine call a bundle on update media goes through:
// signature and payload verified before anything is written, the inactive
// slot written and read back, the slot marked `updating`, and a restart.
//
//   request ─▶ downloading ─▶ (activate?) ─no─▶ downloaded
//                                └─yes─▶ verifying ─▶ installing ─▶ rebooting
//   after the restart: testing ─▶ committed | failed (fallback)
//
// A version that failed is not tried again until the controller's retry
// counter changes: the counter each attempt belonged to is kept on PERSIST.

#if canImport(Glibc)
import Glibc
#endif
import OutpostBundle
import OutpostHTTP
import OutpostPlatform
import OutpostEarlyBoot
import OutpostUpdate
import Synchronization

/// Where the update flow is, as the controller sees it (DeviceInfo.update).
public struct UpdateProgress: Sendable, Equatable {
    public enum Step: String, Sendable {
        case idle, downloading, downloaded, verifying, installing, rebooting, testing, committed, failed
    }
    public var step: Step = .idle
    public var version = ""
    public var bytesDone: UInt64 = 0
    public var bytesTotal: UInt64 = 0
    public var secondsLeft: Int = 0
    public var reason = ""
    public var retryCounter: UInt32 = 0
    /// Unix milliseconds when the flow entered `step`.
    public var sinceUnixMs: UInt64 = 0
}

/// The controller's desired base OS, as the update service needs it.
public struct ControllerUpdateRequest: Sendable, Equatable {
    public var version: String
    public var bundleURL: String
    /// False: download and check the signature only.
    public var activate: Bool
    public var retryCounter: UInt32
    public var size: UInt64

    public init(version: String, bundleURL: String, activate: Bool, retryCounter: UInt32, size: UInt64) {
        self.version = version
        self.bundleURL = bundleURL
        self.activate = activate
        self.retryCounter = retryCounter
        self.size = size
    }
}

/// The controller-facing state of the update service, behind one lock.
struct ControllerUpdateState {
    var progress = UpdateProgress()
    /// The newest request not yet acted on, and when it may be tried.
    var pending: ControllerUpdateRequest?
    var notBefore: Int64 = 0
    /// Told on every step change (the fleet client's `stateChanged`).
    var onChange: (@Sendable () -> Void)?
    /// TLS for bundle downloads: the controller CA and the device certificate.
    var downloadTLS: TLSContext?
    /// A managed device's extra commit condition: nil when the controller was
    /// reachable within the window of that many seconds, else why not.
    var controllerVerdict: (@Sendable (Int) -> String?)?
    /// Set once a restart was asked for: nothing more is installed this boot.
    var restarting = false
}

extension UpdateService {
    /// How long a failed download waits before it is tried again.
    static let downloadRetryMilliseconds: Int64 = 60_000

    /// The controller client's side: what it reports, and what it hands over.
    public var progress: UpdateProgress { controller.withLock { $0.progress } }

    /// Wires the service to a controller client (a managed device).
    public func attachController(downloadTLS: TLSContext, onChange: @escaping @Sendable () -> Void,
                                 verdict: @escaping @Sendable (Int) -> String?) {
        controller.withLock { c in
            c.downloadTLS = downloadTLS
            c.onChange = onChange
            c.controllerVerdict = verdict
        }
    }

    /// Queues `request` for the update thread and returns at once; a newer
    /// request replaces one not yet started.
    public func request(_ request: ControllerUpdateRequest) {
        controller.withLock { c in
            c.pending = request
            c.notBefore = 0
        }
    }

    /// The controller bumped the retry counter: a request waiting out a
    /// failed download goes again now.
    public func retryNow() {
        controller.withLock { $0.notBefore = 0 }
    }

    func setProgress(_ step: UpdateProgress.Step, version: String, reason: String = "", retryCounter: UInt32? = nil,
                     update: (inout UpdateProgress) -> Void = { _ in }) {
        let notify = controller.withLock { c -> (@Sendable () -> Void)? in
            var p = UpdateProgress(step: step, version: version, reason: reason,
                                   retryCounter: retryCounter ?? c.progress.retryCounter,
                                   sinceUnixMs: UInt64(max(0, Int64(time(nil)))) * 1000)
            if step == c.progress.step && version == c.progress.version { p.sinceUnixMs = c.progress.sinceUnixMs }
            update(&p)
            let changed = p != c.progress
            c.progress = p
            return changed ? c.onChange : nil
        }
        notify?()
    }

    /// The progress after boot, from what the engine found.
    func recordBootStatus(_ status: BootStatus, state: DeviceUpdateState?) {
        switch status {
        case let .testing(_, trialVersion):
            setProgress(.testing, version: trialVersion ?? version)
        case let .fellBack(_, failedVersion, reason):
            setProgress(.failed, version: failedVersion ?? "", reason: "fell back: \(reason)")
        case .rebootPending:
            setProgress(.rebooting, version: state?.pending?.version ?? "")
        case .idle, .rescue:
            guard let result = state?.lastResult else { return setProgress(.idle, version: version) }
            switch result.outcome {
            case .committed: setProgress(.committed, version: result.version ?? version)
            case .fellBack, .failed, .refused:
                setProgress(.failed, version: result.version ?? "", reason: result.reason ?? result.outcome.rawValue)
            case .installing, .installed: setProgress(.idle, version: version)
            }
        }
    }

    /// The managed device's commit condition (nil: commit), asked after the
    /// test window passed; an unmanaged device has none.
    func controllerVerdict(windowSeconds: Int) -> String? {
        controller.withLock { $0.controllerVerdict }?(windowSeconds)
    }

    /// Acts on the newest controller request, if one is due. Runs on the
    /// update component's thread; `alive` keeps its liveness during long work.
    public func serveController(alive: () -> Void, reboot: (UpdateRebootReason) -> Void) {
        let now = MonotonicClock.now().milliseconds
        guard let request = controller.withLock({ c -> ControllerUpdateRequest? in
            guard !c.restarting, let p = c.pending, now >= c.notBefore else { return nil }
            c.pending = nil
            return p
        }) else { return }
        guard !request.version.isEmpty, request.version != version else {
            // Nothing asked for, or already running it: the boot status stands.
            return
        }
        do {
            let engine = try self.engine()
            let booted = try engine.slotNumber(partUUID: bootedPartUUID)
            guard let force = try mayAttempt(request, engine: engine) else { return }
            let file = try download(request, alive: alive)
            guard request.activate else {
                let source = try FilePayloadSource(path: file)
                _ = try BundleVerifier.verify(try BundlePrologue.read(from: source), trust: engine.trust, policy: BundlePolicy())
                setProgress(.downloaded, version: request.version, retryCounter: request.retryCounter)
                Console.line("update: downloaded version=\(request.version); waiting for the controller to activate it")
                return
            }
            Console.line("update: installing version=\(request.version) from the controller")
            var options = InstallOptions()
            options.force = force
            var lastPhase: InstallPhase?
            let report = try withoutActuallyEscaping(alive) { alive in
                try engine.install(try FilePayloadSource(path: file), booted: booted, options: options) { phase, _, _ in
                    alive()
                    guard phase != lastPhase else { return }
                    lastPhase = phase
                    self.setProgress(phase == .verifying ? .verifying : .installing, version: request.version,
                                retryCounter: request.retryCounter)
                }
            }
            _ = unlink(file)
            controller.withLock { $0.restarting = true }
            setProgress(.rebooting, version: report.version, retryCounter: request.retryCounter)
            Console.line("update: installed version=\(report.version) slot=\(report.slot); restarting into it")
            reboot(.update(version: report.version, slot: report.slot))
        } catch let error as DownloadError {
            Console.line("warning: update: download of version=\(request.version) failed: \(error); retrying in "
                         + "\(Self.downloadRetryMilliseconds / 1000) s")
            setProgress(.failed, version: request.version, reason: "download: \(error)", retryCounter: request.retryCounter)
            controller.withLock { c in
                if c.pending == nil {
                    c.pending = request
                    c.notBefore = MonotonicClock.now().milliseconds + Self.downloadRetryMilliseconds
                }
            }
        } catch {
            Console.line("update: version=\(request.version) from the controller refused: \(error)")
            setProgress(.failed, version: request.version, reason: "\(error)", retryCounter: request.retryCounter)
        }
    }

    /// Whether `request` may be attempted, and with `force` (a failed
    /// version the controller asked to retry); nil when it is skipped.
    func mayAttempt(_ request: ControllerUpdateRequest, engine: UpdateEngine) throws -> Bool? {
        let attemptFile = paths.stateDirectory + "/controller-attempt"
        let recorded = (try? FileIO.read(attemptFile, limit: 4096)).map { String(decoding: $0, as: UTF8.self) }
            .map { $0.split(separator: "\n").map(String.init) } ?? []
        let state = try engine.store.load()
        if let failure = state.failure(of: request.version) {
            // The failure belongs to the counter of the attempt that made it
            // (or, with no record, to the current one): only a bump retries.
            let failedCounter = recorded.count == 2 && recorded[0] == request.version ? UInt32(recorded[1]) : nil
            if failedCounter ?? request.retryCounter == request.retryCounter {
                if failedCounter == nil { try recordAttempt(request, file: attemptFile) }
                setProgress(.failed, version: request.version,
                            reason: "failed before (\(failure.reason)); not retried until the retry counter changes",
                            retryCounter: request.retryCounter)
                Console.line("update: version=\(request.version) failed before; waiting for the controller's retry counter")
                return nil
            }
            Console.line("update: retrying version=\(request.version) (retry counter \(request.retryCounter))")
            try recordAttempt(request, file: attemptFile)
            return true
        }
        try recordAttempt(request, file: attemptFile)
        return false
    }

    private func recordAttempt(_ request: ControllerUpdateRequest, file: String) throws {
        try FileIO.writeAtomically(Array("\(request.version)\n\(request.retryCounter)\n".utf8), to: file, mode: 0o600)
    }

    /// Downloads the bundle into PERSIST (resuming a partial file of the
    /// same version) and returns its path.
    func download(_ request: ControllerUpdateRequest, alive: () -> Void) throws -> String {
        let safe = String(request.version.unicodeScalars.map {
            ($0.properties.isAlphabetic && $0.isASCII) || ("0"..."9").contains($0) || $0 == "." || $0 == "-" ? Character($0) : "_"
        })
        let name = "controller-\(safe).bundle"
        let file = paths.stateDirectory + "/" + name
        // A partial download of another version is of no use any more.
        for other in (try? Sys.listDirectory(paths.stateDirectory)) ?? []
        where other.hasPrefix("controller-") && other.hasSuffix(".bundle") && other != name {
            _ = unlink(paths.stateDirectory + "/" + other)
        }
        var options = HTTPOptions()
        options.tls = controller.withLock { $0.downloadTLS }
        let url = try HTTPURL(request.bundleURL)
        Console.line("update: downloading version=\(request.version) from \(url)")
        setProgress(.downloading, version: request.version, retryCounter: request.retryCounter) {
            $0.bytesTotal = request.size
        }
        var lastTenth: UInt64 = .max
        try HTTPDownload(url: url, destination: file, options: options).run { have, total in
            alive()
            let total = total ?? request.size
            let tenth = total > 0 ? have * 10 / total : 0
            guard tenth != lastTenth else { return }
            lastTenth = tenth
            setProgress(.downloading, version: request.version, retryCounter: request.retryCounter) {
                $0.bytesDone = have
                $0.bytesTotal = total
            }
        }
        return file
    }
}

/// One slot as the controller's device info lists it.
public struct SlotSummary: Sendable, Equatable {
    public var name: String
    /// active, updating, inprogress, unused (or "other" for attributes outside the contract).
    public var state: String
    /// The OS version in the slot, when the device knows it.
    public var version: String
    public var booted: Bool
}

extension UpdateService {
    /// Both slots from the partition table, in partition order; empty when
    /// the disk cannot be read (the report then says nothing rather than guess).
    public func slotSummaries() -> [SlotSummary] {
        guard let engine = try? engine(), let booted = try? engine.slotNumber(partUUID: bootedPartUUID),
              let status = try? engine.status(booted: booted) else { return [] }
        return status.slots.map { slot in
            let isBooted = slot.name == status.booted
            let pending = status.state.pending.flatMap { $0.slot == slot.name ? $0.version : nil }
            return SlotSummary(name: slot.name, state: slot.state, version: isBooted ? version : pending ?? "", booted: isBooted)
        }
    }
}
