// The device's controller client: one thread that registers, polls config,
// acts on commands, drains the info outbox, sends metrics and uploads logs.
//
//   start ─▶ load last good config, apply it (offline autonomy)
//         ─▶ loop: register (onboarding cert) until done
//                  config poll (jittered 0.3–1×) ─▶ 304 | persist ─▶ apply
//                  info: compose, put in outbox on change or every info interval
//                  outbox / metrics / logs when due
//                  sleep until the earliest due time or a wake-up
//
// When the controller is unreachable every call waits for one shared,
// growing, jittered backoff, so a fleet does not stampede it on its return.

import Crypto
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import OutpostHTTP
import OutpostPlatform
import OutpostProto
import SwiftProtobuf
import Synchronization

/// What the console shows about the controller connection.
public struct FleetStatus: Sendable, Equatable {
    public var registered = false
    public var deviceID: String?
    public var configHash = ""
    /// Seconds since the controller last answered (nil: never this boot).
    public var secondsSinceContact: Int?
    public var lastError: String?
    public var pendingInfo = 0
    public var logBacklog: UInt64 = 0
    public var route: String?
    /// This boot's attestation: "passed", "failed: PCR 8: expected …, actual …", why it
    /// could not run; nil for the file identity, or before the first attempt.
    public var attestation: String?
}

public final class FleetClient: Sendable {
    public let configuration: FleetConfiguration
    public let identity: any DeviceIdentity
    /// The TPM's attestation side; nil for the file identity (never attested).
    public let attestor: (any DeviceAttestor)?
    /// The identity line for DeviceInfo.identity.tpm_state (IdentitySelection's status).
    public let identityStatus: String
    public let logStore: LogStore
    let outbox: InfoOutbox
    let dependencies: FleetDependencies
    let link: ControllerLink
    /// The same routes with short timeouts: a pushed network configuration's
    /// test asks it whether the controller still answers.
    let acceptanceLink: ControllerLink
    let files: FleetState
    let metrics: MetricsCollector
    let deviceTLS: TLSContext
    private let onboardingTLS: TLSContext

    private let stopSignal = StopSignal()
    private let wakeup: Wakeup
    private let thread = Mutex<NamedThread?>(nil)
    let loop: Mutex<LoopState>

    struct LoopState {
        var deviceID: String?
        var configHash = ""
        var intervals: FleetIntervals
        var handled: Outpost_Api_V1_HandledCounters?
        var networkPush: Outpost_Api_V1_NetworkPushResult?
        /// Why the last apps section was refused (DeviceInfo.apps_error).
        var appsError: String?
        var infoDirty = true
        var lastInfo: Outpost_Api_V1_DeviceInfo?
        var nextConfig = MonotonicClock.now()
        var nextMetrics = MonotonicClock.now()
        var nextInfoFull = MonotonicClock.now()
        var nextLogs = MonotonicClock.now()
        /// While the controller is unreachable nothing is tried before this.
        var blockedUntil = MonotonicClock.now()
        var failures = 0
        var lastError: String?
        var random = SystemRandomNumberGenerator()
        /// Attestation runs once per boot, before the first config poll.
        var attested = false
        /// AttestationResult.token of this boot's pass (memory only: a reboot attests anew).
        var attestationToken: [UInt8] = []
        var attestation: String?
        /// The withheld-secrets note is said once per change.
        var withheldNoted = false
    }

    /// Opens the client's state on PERSIST (identity, outbox, log store) so
    /// that `log` works before `start`. `identity` defaults to the software one.
    public init(configuration: FleetConfiguration, dependencies: FleetDependencies,
                identity: (any DeviceIdentity)? = nil, attestor: (any DeviceAttestor)? = nil,
                identityStatus: String = "") throws(FleetError) {
        self.configuration = configuration
        self.dependencies = dependencies
        self.attestor = attestor
        self.identityStatus = identityStatus
        let dir = configuration.stateDirectory
        try FleetFiles.makeDirectory(dir)
        if let identity {
            self.identity = identity
        } else {
            self.identity = try SoftwareIdentity.loadOrCreate(directory: dir, serial: configuration.serial)
        }
        logStore = try LogStore(directory: dir + "/logs", quotaBytes: configuration.logQuotaBytes)
        outbox = try InfoOutbox(directory: dir + "/outbox", retryMinimum: configuration.intervals.retryMinimum,
                                retryMaximum: configuration.intervals.retryMaximum)
        files = FleetState(directory: dir)
        link = ControllerLink(baseURL: configuration.controllerURL, routes: dependencies.routes)
        acceptanceLink = ControllerLink(baseURL: configuration.controllerURL, routes: dependencies.routes,
                                        connectTimeout: .seconds(3), callTimeout: .seconds(5))
        metrics = MetricsCollector(persistPath: dir)
        deviceTLS = try self.identity.tlsContext(trusting: [configuration.rootCAFile])
        do {
            onboardingTLS = try TLSContext(caFiles: [configuration.rootCAFile], systemDefaults: false,
                                           client: TLSClientCertificate(certificatePEM: configuration.onboardingCertificatePEM,
                                                                        privateKeyPEM: configuration.onboardingKeyPEM,
                                                                        label: "onboarding certificate"))
        } catch {
            throw .configuration(item: "onboarding certificate", reason: error.description)
        }
        do { wakeup = try Wakeup(label: "fleet client") } catch { throw .system(error) }
        var state = LoopState(intervals: configuration.intervals)
        state.deviceID = try files.deviceID()
        state.handled = try files.handled()
        state.networkPush = try files.networkPush()
        loop = Mutex(state)
    }

    /// Applies the last good config (the device runs on it with no
    /// controller), then starts the client's thread.
    public func start() throws(FleetError) {
        if let stored = try files.lastGoodConfig() {
            loop.withLock { $0.configHash = stored.configHash }
            apply(stored.config, atBoot: true)
            let missing = secretsMissingFromVault(stored.config)
            if !missing.isEmpty {
                note("secrets: the vault lacks \(missing.joined(separator: ", ")): asking the controller for the config again")
                loop.withLock { $0.configHash = "" }
            }
        }
        let started: NamedThread
        do { started = try NamedThread.start(name: "fleet") { [self] in run() } } catch { throw .system(error) }
        thread.withLock { $0 = started }
    }

    /// Stops the thread (an exchange in flight finishes or times out first)
    /// and flushes the log store.
    public func stop() {
        stopSignal.raise()
        wakeup.signal()
        thread.withLock { $0 }?.join()
        logStore.sync()
    }

    /// The device's state changed (update step, ports, boot): send info soon.
    public func stateChanged() {
        loop.withLock { $0.infoDirty = true }
        wakeup.signal()
    }

    /// One line into the log store (what outpostd and its components print).
    public func log(source: String, severity: Outpost_Api_V1_Severity = .info, _ message: String) {
        _ = try? logStore.append(source: source, severity: severity, message: message)
    }

    /// The controller answered within `window` (503 counts): the update test
    /// window asks this before committing a new version.
    public func controllerReachable(within window: Duration) -> Bool {
        guard let last = link.lastAnswered else { return false }
        return last.elapsed <= window
    }

    public var status: FleetStatus {
        let s = loop.withLock { $0 }
        var status = FleetStatus()
        status.registered = s.deviceID != nil
        status.deviceID = s.deviceID
        status.configHash = s.configHash
        status.secondsSinceContact = link.lastAnswered.map { Int($0.elapsed.seconds) }
        status.lastError = s.lastError
        status.pendingInfo = outbox.pendingCount
        status.logBacklog = logStore.backlog
        status.route = link.currentRoute.map { $0.device ?? "default route" }
        status.attestation = s.attestation
        return status
    }

    /// One line from the client itself; a warning's line starts with "warning: "
    /// for the agent's console, which files it under that severity.
    func note(_ line: String, severity: Outpost_Api_V1_Severity = .info) {
        if let log = dependencies.log {
            log(severity == .warning ? "warning: " + line : line)
        } else {
            log(source: "fleet", severity: severity, line)
        }
    }

    // MARK: the loop

    private func run() {
        while !stopSignal.isRaised {
            let wait = round()
            if stopSignal.isRaised { break }
            _ = wakeup.wait(timeout: max(.milliseconds(10), min(wait, .seconds(60))))
        }
    }

    /// One pass over everything due; returns how long to sleep.
    func round() -> Duration {
        let now = MonotonicClock.now()
        let blockedUntil = loop.withLock { $0.blockedUntil }
        if now < blockedUntil { return blockedUntil - now }
        do {
            if loop.withLock({ $0.deviceID }) == nil { try register() }
            if attestor != nil, !loop.withLock({ $0.attested }) { try attest() }
            let (pollDue, metricsDue, logsDue) = loop.withLock { ($0.nextConfig <= now, $0.nextMetrics <= now, $0.nextLogs <= now) }
            if pollDue { try pollConfig() }
            try composeInfo()
            try sendInfo()
            if metricsDue { sendMetrics() }
            if logsDue && logStore.backlog > 0 { try sendLogs() }
            loop.withLock { s in
                s.failures = 0
                s.lastError = nil
            }
        } catch {
            failed(error)
        }
        let next = loop.withLock { s -> MonotonicClock.Instant in
            var next = min(s.nextConfig, s.nextMetrics, s.nextInfoFull)
            if logStore.backlog > 0 { next = min(next, s.nextLogs) }
            if let due = outbox.nextDue { next = min(next, due) }
            return max(next, s.blockedUntil)
        }
        return next - MonotonicClock.now()
    }

    /// A failed exchange: one line, and every call waits a growing jittered time.
    private func failed(_ error: FleetError) {
        let line = error.description
        let (wait, repeated) = loop.withLock { s -> (Duration, Bool) in
            s.failures += 1
            let wait = Jitter.backoff(attempt: s.failures, minimum: s.intervals.retryMinimum,
                                      maximum: s.intervals.retryMaximum, using: &s.random)
            s.blockedUntil = MonotonicClock.now().advanced(by: wait)
            defer { s.lastError = line }
            return (wait, s.lastError == line)
        }
        if !repeated { note("\(line) (retrying in \(Int(wait.seconds)) s)", severity: .warning) }
    }

    // MARK: register

    func register() throws(FleetError) {
        var request = Outpost_Api_V1_RegisterRequest()
        request.deviceCertPem = identity.certificatePEM
        request.serial = identity.serial
        request.osVersion = configuration.osVersion
        if let attestor {
            // A TPM that cannot name its EK registers without keys: unattested, never unmanaged.
            do {
                request.ekPublic = Data(try attestor.endorsementKeyPublic())
                request.akPublic = Data(attestor.attestationKeyPublic)
            } catch {
                note("attestation: registering without TPM keys: \(error)", severity: .warning)
            }
            // The certificate is the controller's to check; one that cannot be read is left out, said once.
            if !request.ekPublic.isEmpty {
                do { if let certificate = try attestor.endorsementCertificate() { request.ekCertificate = Data(certificate) } } catch {
                    note("attestation: registering without the EK certificate: \(error)", severity: .warning)
                }
            }
        }
        let answer = try link.call(APIPath.register, body: try encode(request), tls: onboardingTLS)
        guard answer.status == 200 || answer.status == 201 else {
            throw .status(endpoint: APIPath.register, code: answer.status, detail: Self.textDetail(answer.body))
        }
        let response: Outpost_Api_V1_RegisterResponse = try decode(answer.body, what: "register response")
        guard !response.deviceID.isEmpty else { throw .malformed(what: "register response", detail: "no device_id") }
        // The AK is bound before the registration counts: a failure here registers again next round.
        if let attestor, response.hasCredentialChallenge {
            do { try activate(response.credentialChallenge, attestor) } catch {
                // Unreachable: register again next round. Anything else (the TPM, a refusal) would
                // fail the same way again: stay registered, unattested.
                if case .transport = error { throw error }
                note("attestation: the attestation key is not bound: \(error)", severity: .warning)
            }
        }
        try files.saveDeviceID(response.deviceID)
        loop.withLock { $0.deviceID = response.deviceID; $0.infoDirty = true }
        note("registered with \(configuration.controllerURL.hostPort) as \(response.deviceID)"
             + (response.alreadyRegistered ? " (already registered)" : ""))
    }

    /// A 403 on a device call: the controller does not know this certificate
    /// (its store was reset); register again on the next round.
    private func refused(_ endpoint: String, _ answer: ControllerLink.Answer) throws(FleetError) -> Never {
        if answer.status == 403 {
            try files.forgetRegistration()
            loop.withLock { $0.deviceID = nil }
        }
        throw .status(endpoint: endpoint, code: answer.status, detail: Self.textDetail(answer.body))
    }

    // MARK: config

    /// Returns the HTTP status the controller answered (304: unchanged).
    @discardableResult
    func pollConfig() throws(FleetError) -> Int {
        var request = Outpost_Api_V1_ConfigRequest()
        request.configHash = loop.withLock { $0.configHash }
        request.attestationToken = Data(loop.withLock { $0.attestationToken })
        let answer = try link.call(APIPath.config, body: try encode(request), tls: deviceTLS)
        scheduleConfig()
        switch answer.status {
        case 304: return 304
        case 200:
            let response: Outpost_Api_V1_ConfigResponse = try decode(answer.body, what: "config response")
            guard !response.configHash.isEmpty, response.configHash.utf8.count <= 128 else {
                throw .malformed(what: "config response", detail: "no usable config_hash")
            }
            if response.configHash == request.configHash { return 200 }
            // The secrets' contract (names, sizes, order, count): a config that breaks it is refused whole.
            if let problem = ConfigSecrets.problem(response.config.secrets) {
                throw .malformed(what: "config \(response.configHash.prefix(12))", detail: problem)
            }
            let withheld = response.attestation.secretsWithheld
            if withheld != loop.withLock({ $0.withheldNoted }) {
                loop.withLock { $0.withheldNoted = withheld }
                if withheld {
                    note("config \(response.configHash.prefix(12)) served with its secrets withheld: \(Self.withheldReason(response.attestation))",
                         severity: .warning)
                }
            }
            // Last good first: a crash while applying resumes from it at boot. Never with a
            // secret's value: those live in the vault only (FleetSecrets.swift).
            try files.saveConfig(Self.withoutSecretValues(response))
            loop.withLock { $0.configHash = response.configHash; $0.infoDirty = true }
            // Withheld: the controller left them out, which says nothing about the vault's copies.
            if !withheld { storeSecrets(response.config.secrets) }
            apply(response.config, atBoot: false)
            return 200
        case 503: return 503  // reachable, upgrading: try again next interval
        default: try refused(APIPath.config, answer)
        }
    }

    private func scheduleConfig() {
        loop.withLock { s in
            s.nextConfig = MonotonicClock.now().advanced(by: Jitter.period(s.intervals.config, using: &s.random))
        }
    }

    /// Hands the config to what it drives. Counters act exactly once: the new
    /// handled value is on disk and in the outbox before anything happens.
    func apply(_ config: Outpost_Api_V1_DeviceConfig, atBoot: Bool) {
        loop.withLock { s in
            var intervals = configuration.intervals
            if config.intervals.configIntervalS > 0 { intervals.config = .seconds(Int64(config.intervals.configIntervalS)) }
            if config.intervals.metricsIntervalS > 0 { intervals.metrics = .seconds(Int64(config.intervals.metricsIntervalS)) }
            if config.intervals.infoIntervalS > 0 { intervals.info = .seconds(Int64(config.intervals.infoIntervalS)) }
            s.intervals = intervals
        }
        if atBoot { note("applying the last good config \(loop.withLock { $0.configHash }.prefix(12)) from PERSIST") }
        dependencies.updater.apply(config.baseOs)
        applyNetwork(config.network.networkJson)
        applyApps(config)
        applyCommands(config.commands)
    }

    /// The apps section, when the config has one (absent: the device keeps running apps.json).
    private func applyApps(_ config: Outpost_Api_V1_DeviceConfig) {
        guard config.hasApps else { return }
        let refusal = dependencies.apps.map { $0.apply(apps: config.apps) } ?? "this device runs no apps"
        if let refusal { note("apps section refused: \(refusal)", severity: .warning) }
        loop.withLock { s in
            if s.appsError != refusal { s.infoDirty = true }
            s.appsError = refusal
        }
    }

    /// The last good config as stored on PERSIST (nil before the first): the agent builds its
    /// apps from this section at boot, before the client's thread runs.
    public func storedConfig() -> Outpost_Api_V1_DeviceConfig? {
        (try? files.lastGoodConfig())?.config
    }

    private func applyNetwork(_ json: Data) {
        guard !json.isEmpty else { return }
        let digest = SHA256.hash(data: Array(json)).map { byte in
            let hex = String(byte, radix: 16)
            return hex.count == 1 ? "0" + hex : hex
        }.joined()
        // A config already pushed (this boot or an earlier one) is not pushed
        // again: the network manager keeps its own last-known-good. Only one
        // that never got a result (a crash mid-push) goes again at boot.
        if loop.withLock({ $0.networkPush?.networkSha256 }) == digest { return }
        let outcome = dependencies.network.push(networkJSON: Array(json)) { [self] _ in controllerAnswers() }
        var result = Outpost_Api_V1_NetworkPushResult()
        result.networkSha256 = digest
        result.timeUnixMs = Wallclock.unixMilliseconds()
        switch outcome {
        case .applied: result.outcome = .applied
        case .rolledBack(let reason): result.outcome = .rolledBack; result.reason = reason
        case .rejected(let reason): result.outcome = .rejected; result.reason = reason
        }
        do { try files.saveNetworkPush(result) } catch { note("network push result not stored: \(error)") }
        loop.withLock { $0.networkPush = result; $0.infoDirty = true }
        note("network config \(digest.prefix(12)) pushed: \(outcome)")
    }

    /// nil when the controller answers a ping with the device's certificate
    /// (any status: 503 is an answer), else the transport failure. A pushed
    /// network configuration is kept only if this holds over its port.
    func controllerAnswers() -> String? {
        do {
            _ = try acceptanceLink.call(APIPath.ping, method: "GET", tls: deviceTLS, limit: 64 << 10)
            return nil
        } catch {
            return error.description
        }
    }

    private func applyCommands(_ commands: Outpost_Api_V1_Commands) {
        let previous = loop.withLock { $0.handled }
        var handled = Outpost_Api_V1_HandledCounters()
        handled.reboot = commands.reboot
        handled.shutdown = commands.shutdown
        handled.updateRetry = commands.updateRetry
        guard previous != handled else { return }
        do {
            try files.saveHandled(handled)
        } catch {
            // Not acting is the safe side: acting without a record could act twice.
            note("command counters not stored, not acting: \(error)")
            return
        }
        loop.withLock { $0.handled = handled; $0.infoDirty = true }
        // A fresh device records the counters it finds without acting on them.
        guard let previous else { return }
        try? composeInfo()  // the echo is durable in the outbox before acting
        if handled.updateRetry != previous.updateRetry {
            note("controller command: update retry \(handled.updateRetry)")
            dependencies.updater.retryFailedUpdate(counter: handled.updateRetry)
        }
        if handled.shutdown != previous.shutdown {
            note("controller command: shutdown \(handled.shutdown)")
            logStore.sync()
            dependencies.power.shutdown(reason: "controller")
        } else if handled.reboot != previous.reboot {
            note("controller command: reboot \(handled.reboot)")
            logStore.sync()
            dependencies.power.reboot(reason: "controller")
        }
    }

    // MARK: info

    /// Puts the current info in the outbox when it changed, or when the last
    /// one is older than the info interval.
    func composeInfo() throws(FleetError) {
        let now = MonotonicClock.now()
        let (dirty, full) = loop.withLock { ($0.infoDirty, $0.nextInfoFull <= now) }
        guard dirty || full else { return }
        var info = dependencies.state.deviceInfo()
        let s = loop.withLock { s -> LoopState in
            s.infoDirty = false
            return s
        }
        if let handled = s.handled { info.handled = handled }
        info.configHash = s.configHash
        if let push = s.networkPush { info.networkPush = push }
        if let appsError = s.appsError { info.appsError = appsError }
        if info.identity.serial.isEmpty { info.identity.serial = identity.serial }
        if info.identity.osVersion.isEmpty { info.identity.osVersion = configuration.osVersion }
        info.identity.identityKind = identity.kind
        info.identity.tpmState = identityStatus
        info.identity.attestation = s.attestation ?? ""
        // Compare without the timestamp: only a real change is a change.
        if !full, let last = s.lastInfo, last == info { return }
        var stamped = info
        stamped.timeUnixMs = Wallclock.unixMilliseconds()
        try outbox.put(key: "device", payload: try encode(stamped))
        loop.withLock { s in
            s.lastInfo = info
            s.nextInfoFull = now.advanced(by: s.intervals.info)
        }
    }

    func sendInfo() throws(FleetError) {
        guard loop.withLock({ $0.deviceID }) != nil else { return }
        for item in outbox.due() {
            let answer: ControllerLink.Answer
            do {
                answer = try link.call(APIPath.info, body: item.payload, tls: deviceTLS)
            } catch {
                outbox.failed(item)
                throw error
            }
            guard (200..<300).contains(answer.status) else {
                outbox.failed(item)
                if answer.status == 503 { return }
                try refused(APIPath.info, answer)
            }
            try outbox.delivered(item)
        }
    }

    // MARK: metrics

    /// The device's figures and its apps' for one metrics report.
    func metricsSample() -> Outpost_Api_V1_DeviceMetrics {
        var sample = metrics.sample(watchdog: dependencies.state.watchdogState())
        sample.apps = dependencies.state.appMetrics()
        return sample
    }

    /// Best effort: a failure drops the sample and blocks nothing.
    func sendMetrics() {
        let sample = metricsSample()
        loop.withLock { s in
            s.nextMetrics = MonotonicClock.now().advanced(by: Jitter.period(s.intervals.metrics, using: &s.random))
        }
        guard let body = try? encode(sample) else { return }
        _ = try? link.call(APIPath.metrics, body: body, tls: deviceTLS)
    }

    // MARK: logs

    func sendLogs() throws(FleetError) {
        guard loop.withLock({ $0.deviceID }) != nil else { return }
        for _ in 0..<8 {
            guard let batch = try logStore.pendingBatch() else { break }
            var message = Outpost_Api_V1_LogBatch()
            message.entries = batch.entries
            message.droppedBefore = batch.droppedBefore
            let body = try Gzip.compress(try encode(message))
            let answer = try link.call(APIPath.logs, body: body, headers: [("Content-Encoding", "gzip")], tls: deviceTLS)
            guard answer.status == 200 else {
                if answer.status == 503 { break }
                try refused(APIPath.logs, answer)
            }
            let response: Outpost_Api_V1_LogsResponse = try decode(answer.body, what: "logs response")
            try logStore.acknowledge(response.ackedSequence)
            // The controller holds less than was sent (a gap on its side):
            // resend from its mark next time rather than loop now.
            if response.ackedSequence < batch.lastSequence { break }
        }
        loop.withLock { s in
            s.nextLogs = MonotonicClock.now().advanced(by: logStore.backlog > 500 ? .seconds(3) : s.intervals.logs)
        }
    }

    // MARK: coding

    func encode(_ message: some SwiftProtobuf.Message) throws(FleetError) -> [UInt8] {
        do { return try message.serializedBytes() } catch { throw .malformed(what: "outgoing \(type(of: message))", detail: "\(error)") }
    }

    func decode<M: SwiftProtobuf.Message>(_ bytes: [UInt8], what: String) throws(FleetError) -> M {
        do { return try M(serializedBytes: bytes) } catch { throw .malformed(what: what, detail: "\(error)") }
    }

    /// The controller's one-line refusal text, made safe to print.
    static func textDetail(_ body: [UInt8]) -> String {
        let text = String(decoding: body.prefix(200), as: UTF8.self)
        return String(text.map { $0.isASCII && ($0.asciiValue ?? 0) < 32 ? " " : $0 }).trimmingWhitespace
    }
}
