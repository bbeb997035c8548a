import Foundation
import OutpostProto

/// The admin socket's rollout calls (`outpost-controller rollout …`).
extension AdminRoutes {
    func rolloutCreate(_ body: [String: Any]) async throws -> Any {
        guard let select = body["select"] as? String else { throw ControllerError.invalidInput("--select is missing") }
        let waves: [Double]
        if let text = body["waves"] as? String { waves = try Rollouts.parseWaves(text) } else {
            throw ControllerError.invalidInput("--waves is missing")
        }
        func ms(_ key: String, _ what: String) throws -> Int64 {
            guard let v = body[key] as? Int, v >= 0 else { throw ControllerError.invalidInput("\(what) is missing or negative") }
            return Int64(v)
        }
        let soak = try ms("soakMs", "--soak"), deadline = try ms("deadlineMs", "--deadline")
        guard let maxFailures = body["maxFailuresPercent"] as? Double ?? (body["maxFailuresPercent"] as? Int).map(Double.init),
              (0...100).contains(maxFailures) else { throw ControllerError.invalidInput("--max-failures must be 0–100%") }
        if let open = try await fleet.store.rollouts().first(where: { $0.state == "running" || $0.state == "paused" }) {
            throw ControllerError.invalidInput("rollout \(open.id) is still \(open.state): abort it (or let it finish) first")
        }
        let devices = try await selected(select).map(\.0)
        guard !devices.isEmpty else { throw ControllerError.invalidInput("--select '\(select)' picks no device") }
        let (base, report) = try await baseOS(body)
        let id = String(UUID().uuidString.lowercased().prefix(8))
        let cumulative = Rollouts.cumulative(waves, count: devices.count)
        var rows: [RolloutDevice] = []
        for (k, d) in devices.enumerated() {
            let wave = cumulative.firstIndex { k < $0 } ?? (waves.count - 1)
            rows.append(RolloutDevice(rolloutID: id, deviceID: d.id, wave: wave, state: "pending", startedMs: 0, doneMs: 0, reason: ""))
        }
        let now = nowMs()
        let r = RolloutRecord(id: id, createdMs: now, selector: select, version: base.version, baseOS: try base.serializedBytes(),
                              waves: waves, soakMs: soak, deadlineMs: deadline, maxFailuresPercent: maxFailures, state: "running",
                              wave: -1, waveStartedMs: 0, waveDoneMs: 0, reason: "", revision: 0)
        try await fleet.store.createRollout(r, devices: rows, event: RolloutEvent(
            atMs: now, kind: "created", wave: -1, detail: "\(devices.count) devices, version \(base.version)", holder: "admin"))
        var status = try await rolloutStatus(id)
        if !report.isEmpty { status["bundle"] = report["bundle"] }
        return status
    }

    func rolloutList() async throws -> Any {
        var out: [Any] = []
        for r in try await fleet.store.rollouts() {
            out.append(["id": r.id, "state": r.state, "version": r.version, "selector": r.selector, "created": Views.iso(r.createdMs),
                        "wave": r.wave + 1, "waves": r.waves.count] as [String: Any])
        }
        return out
    }

    /// `latest` (or an empty id): the newest rollout; otherwise an id or unique prefix.
    func findRollout(_ ref: String) async throws -> RolloutRecord {
        let all = try await fleet.store.rollouts()
        if ref.isEmpty || ref == "latest" {
            guard let r = all.first else { throw ControllerError.invalidInput("there is no rollout yet (`outpost-controller rollout create`)") }
            return r
        }
        let matches = all.filter { $0.id.hasPrefix(ref.lowercased()) }
        guard matches.count == 1, let r = matches.first else {
            throw ControllerError.invalidInput(matches.isEmpty ? "no rollout '\(ref)' (see `outpost-controller rollout status`)"
                                                               : "'\(ref)' matches \(matches.count) rollouts")
        }
        return r
    }

    func rolloutStatus(_ ref: String) async throws -> [String: Any] {
        let r = try await findRollout(ref)
        let devices = try await fleet.store.rolloutDevices(rolloutID: r.id)
        let serials = Dictionary(fleet.devices().map { ($0.id, $0.serial) }, uniquingKeysWith: { a, _ in a })
        var waves: [[String: Any]] = []
        for (i, pct) in r.waves.enumerated() {
            let mine = devices.filter { $0.wave == i }
            var w: [String: Any] = ["wave": i + 1, "percent": pct, "devices": mine.count]
            for state in ["pending", "updating", "committed", "failed"] { w[state] = mine.filter { $0.state == state }.count }
            w["state"] = i < r.wave ? "done" : i > r.wave ? "waiting" : (r.waveDoneMs > 0 ? "soaking" : "updating")
            waves.append(w)
        }
        let failed = devices.filter { $0.state == "failed" }.map {
            ["device": $0.deviceID, "serial": serials[$0.deviceID] ?? "", "wave": $0.wave + 1, "reason": $0.reason, "at": Views.iso($0.doneMs)]
                as [String: Any]
        }
        let events = try await fleet.store.rolloutEvents(rolloutID: r.id).map {
            ["at": Views.iso($0.atMs), "kind": $0.kind, "wave": $0.wave + 1, "detail": $0.detail, "by": $0.holder] as [String: Any]
        }
        return ["id": r.id, "state": r.state, "version": r.version, "selector": r.selector, "created": Views.iso(r.createdMs),
                "wave": r.wave + 1, "waveStarted": Views.iso(r.waveStartedMs), "waveDone": Views.iso(r.waveDoneMs),
                "soakMs": r.soakMs, "deadlineMs": r.deadlineMs, "maxFailuresPercent": r.maxFailuresPercent, "reason": r.reason,
                "devices": devices.count, "committed": devices.filter { $0.state == "committed" }.count,
                "waves": waves, "failed": failed, "events": events]
    }

    /// pause (no new wave starts; outcomes are still read), resume, abort (final; devices that
    /// already have the new base OS keep it).
    func rolloutAction(_ ref: String, _ action: String) async throws -> Any {
        let allowed: [String: (from: Set<String>, to: String)] = [
            "pause": (["running"], "paused"), "resume": (["paused"], "running"), "abort": (["running", "paused", "halted"], "aborted"),
        ]
        guard let rule = allowed[action] else { throw ControllerError.invalidInput("unknown rollout action '\(action)' (pause, resume, abort)") }
        // A save can lose against the advancer's (a new revision): read again and retry, bounded.
        for _ in 0..<20 {
            let r = try await findRollout(ref)
            guard rule.from.contains(r.state) else {
                throw ControllerError.invalidInput("rollout \(r.id) is \(r.state); \(action) needs it \(rule.from.sorted().joined(separator: " or "))")
            }
            var next = r
            next.state = rule.to
            if action == "abort" { next.reason = "aborted by an administrator" }
            let e = RolloutEvent(atMs: nowMs(), kind: rule.to, wave: r.wave, detail: "\(action) by an administrator", holder: "admin")
            if try await fleet.store.saveRollout(next, expectedRevision: r.revision, event: e) { return try await rolloutStatus(r.id) }
        }
        throw ControllerError.store("rollout \(ref): the rollout kept changing; try again")
    }
}
