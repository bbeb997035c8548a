import Foundation
import OutpostProto

/// Staged rollouts: a base OS for the devices a selector picks, given wave by wave.
///
///     created ──▶ wave 0 started ──▶ every device committed or failed ──▶ soaked ──▶ wave 1 started … ──▶ completed
///                      │                                                                    
///                      └─ failures over --max-failures (of the devices started so far) ──▶ halted
///
/// A device fails when it reports `failed` for the target version, or has not reported
/// `committed` within the deadline from its wave's start, so a bricked device cannot hold a
/// rollout open. The devices are picked when the rollout is created (registration order) and
/// split by the cumulative wave percentages.
public enum Rollouts {
    /// A rollout's parameters as `rollout create` gives them.
    public struct Plan: Sendable, Equatable {
        public var waves: [Double]
        public var soakMs: Int64
        public var deadlineMs: Int64
        public var maxFailuresPercent: Double
    }

    /// `1%,10%,50%,100%`: increasing cumulative percentages, each in (0, 100], the last 100.
    public static func parseWaves(_ text: String) throws(ControllerError) -> [Double] {
        let bad = { (why: String) in ControllerError.invalidInput("--waves '\(text)': \(why) (e.g. 1%,10%,50%,100%)") }
        var out: [Double] = []
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            let t = part.trimmingCharacters(in: .whitespaces)
            guard let v = Double(t.hasSuffix("%") ? String(t.dropLast()) : t), v.isFinite, v > 0, v <= 100 else {
                throw bad("'\(t)' is not a percentage in (0, 100]")
            }
            if let last = out.last, v <= last { throw bad("'\(t)' is not larger than the wave before") }
            out.append(v)
        }
        guard out.last == 100 else { throw bad("the last wave must be 100%") }
        return out
    }

    /// `5%` or `5`: a percentage in [0, 100].
    public static func parsePercent(_ text: String, what: String) throws(ControllerError) -> Double {
        let t = text.trimmingCharacters(in: .whitespaces)
        guard let v = Double(t.hasSuffix("%") ? String(t.dropLast()) : t), v.isFinite, v >= 0, v <= 100 else {
            throw .invalidInput("\(what) '\(text)' is not a percentage in [0, 100]")
        }
        return v
    }

    /// `500ms`, `30s`, `10m`, `2h`: a duration in milliseconds (a unit is required).
    public static func parseDuration(_ text: String, what: String) throws(ControllerError) -> Int64 {
        let t = text.trimmingCharacters(in: .whitespaces)
        for (unit, ms) in [("ms", 1.0), ("s", 1000.0), ("m", 60_000.0), ("h", 3_600_000.0)] where t.hasSuffix(unit) {
            if let v = Double(t.dropLast(unit.count)), v.isFinite, v >= 0, v * ms <= 30 * 86_400_000 {
                return Int64(v * ms)
            }
            // "10ms" also ends in "s": only fail once no unit fits.
        }
        throw .invalidInput("\(what) '\(text)' is not a duration (e.g. 500ms, 30s, 10m, 2h; at most 30 days)")
    }

    /// How many of `count` devices are in waves up to and including each wave.
    static func cumulative(_ waves: [Double], count: Int) -> [Int] {
        waves.map { min(count, Int((Double(count) * $0 / 100).rounded(.up))) }
    }

    static func seconds(_ ms: Int64) -> String {
        ms % 1000 == 0 ? "\(ms / 1000)s" : String(format: "%.1fs", Double(ms) / 1000)
    }
}

/// Moves rollouts forward. Every `serve` process runs one; only the holder of the database lease
/// `rollouts` acts, and every wave change is a conditional save on the rollout's revision, so
/// two replicas never start a wave twice even if a lease runs out mid-tick.
public final class RolloutAdvancer: Sendable {
    public let fleet: Fleet
    /// This process, as the lease and the rollout history name it.
    public let holder: String
    public let leaseTTLMs: Int64
    static let leaseName = "rollouts"

    public init(fleet: Fleet, holder: String = RolloutAdvancer.defaultHolder(), leaseTTLMs: Int64 = 15_000) {
        self.fleet = fleet
        self.holder = holder
        self.leaseTTLMs = leaseTTLMs
    }

    public static func defaultHolder() -> String {
        var name = [CChar](repeating: 0, count: 256)
        let host = gethostname(&name, name.count) == 0 ? String(cString: name) : "host"
        return "\(host):\(getpid()):\(UUID().uuidString.prefix(8).lowercased())"
    }

    /// One round: takes or renews the lease, then advances every running or paused rollout.
    /// Returns whether this process held the lease.
    @discardableResult
    public func tick(now: Int64 = nowMs()) async throws -> Bool {
        guard try await fleet.store.acquireLease(name: Self.leaseName, holder: holder, nowMs: now, ttlMs: leaseTTLMs) else { return false }
        for r in try await fleet.store.rollouts() where r.state == "running" || r.state == "paused" {
            try await advance(r, now: now)
        }
        return true
    }

    func event(_ kind: String, wave: Int, _ detail: String, now: Int64) -> RolloutEvent {
        RolloutEvent(atMs: now, kind: kind, wave: wave, detail: detail, holder: holder)
    }

    func advance(_ rollout: RolloutRecord, now: Int64) async throws {
        var r = rollout
        var devices = try await fleet.store.rolloutDevices(rolloutID: r.id)
        if r.wave < 0 {
            guard r.state == "running" else { return }
            var next = r
            next.wave = 0
            next.waveStartedMs = now
            next.waveDoneMs = 0
            guard try await fleet.store.saveRollout(next, expectedRevision: r.revision,
                                                    event: event("wave-started", wave: 0, "wave 1 started", now: now)) else { return }
            next.revision += 1
            r = next
        }

        // The current wave's devices: give the base OS to those still pending, read the others' outcome.
        var changed: [RolloutDevice] = []
        for i in devices.indices where devices[i].wave == r.wave {
            let before = devices[i]
            devices[i] = try await evaluate(devices[i], rollout: r, now: now)
            if devices[i] != before { changed.append(devices[i]) }
        }
        try await fleet.store.updateRolloutDevices(changed)

        let started = devices.filter { $0.wave <= r.wave }
        let failed = started.filter { $0.state == "failed" }
        if !failed.isEmpty, Double(failed.count) * 100 > r.maxFailuresPercent * Double(started.count) {
            var next = r
            next.state = "halted"
            let pct = Double(failed.count) * 100 / Double(started.count)
            next.reason = "\(failed.count) of \(started.count) devices failed (\(String(format: "%.1f", pct))% > \(r.maxFailuresPercent)%)"
            _ = try await fleet.store.saveRollout(next, expectedRevision: r.revision, event: event("halted", wave: r.wave, next.reason, now: now))
            return
        }
        guard r.state == "running" else { return }

        let wave = devices.filter { $0.wave == r.wave }
        guard wave.allSatisfy({ $0.state == "committed" || $0.state == "failed" }) else { return }
        var next = r
        if r.waveDoneMs == 0 {
            next.waveDoneMs = now
            let ok = wave.filter { $0.state == "committed" }.count
            _ = try await fleet.store.saveRollout(next, expectedRevision: r.revision,
                                                  event: event("wave-done", wave: r.wave, "wave \(r.wave + 1): \(ok) of \(wave.count) committed; soaking \(Rollouts.seconds(r.soakMs))", now: now))
            return
        }
        guard now - r.waveDoneMs >= r.soakMs else { return }
        if r.wave + 1 >= r.waves.count {
            next.state = "completed"
            _ = try await fleet.store.saveRollout(next, expectedRevision: r.revision,
                                                  event: event("completed", wave: r.wave, "every wave done", now: now))
            return
        }
        next.wave = r.wave + 1
        next.waveStartedMs = now
        next.waveDoneMs = 0
        _ = try await fleet.store.saveRollout(next, expectedRevision: r.revision,
                                              event: event("wave-started", wave: next.wave, "wave \(next.wave + 1) started", now: now))
        // Its devices get the base OS at the next tick, from whichever replica holds the lease then.
    }

    /// One device of the current wave, one step further.
    func evaluate(_ device: RolloutDevice, rollout r: RolloutRecord, now: Int64) async throws -> RolloutDevice {
        var d = device
        switch d.state {
        case "pending":
            d.startedMs = r.waveStartedMs
            if let info = try await fleet.store.info(deviceID: d.deviceID).flatMap({ try? DeviceInfo(serializedBytes: $0.body) }),
               Self.runningVersion(info) == r.version {
                d.state = "committed"
                d.doneMs = now
                d.reason = "already running \(r.version)"
                return d
            }
            let base = try BaseOS(serializedBytes: r.baseOS)
            do {
                // The same change as `device set-os`: a device that already has it keeps its hash.
                try await fleet.updateConfig(d.deviceID) { c in
                    var n = base
                    n.retryCounter = c.commands.updateRetry
                    c.baseOs = n
                }
                d.state = "updating"
            } catch ControllerError.unknownDevice {
                d.state = "failed"
                d.doneMs = now
                d.reason = "no longer registered"
            }
        case "updating", "committed":
            let history = try await fleet.store.updateHistory(deviceID: d.deviceID)
                .filter { $0.version == r.version && $0.receivedMs >= d.startedMs }
            if let last = history.last(where: { $0.step == "failed" || $0.step == "committed" }) {
                if last.step == "failed" {
                    d.state = "failed"
                    d.doneMs = last.receivedMs
                    d.reason = "reported failed" + (last.reason.isEmpty ? "" : ": \(last.reason)")
                } else if d.state == "updating" {
                    d.state = "committed"
                    d.doneMs = last.receivedMs
                }
            } else if d.state == "updating", now - d.startedMs > r.deadlineMs {
                d.state = "failed"
                d.doneMs = now
                let step = try await fleet.store.updateHistory(deviceID: d.deviceID).last { $0.receivedMs >= d.startedMs }
                d.reason = "no committed report within \(Rollouts.seconds(r.deadlineMs)) of its wave's start"
                    + (step.map { " (last step: \($0.step) \($0.version))" } ?? " (no update report at all)")
            }
        default:
            break
        }
        return d
    }

    static func runningVersion(_ i: DeviceInfo) -> String {
        if let v = i.slots.first(where: \.booted)?.version, !v.isEmpty { return v }
        return i.identity.osVersion
    }
}
