import Foundation
import Hummingbird
import Logging
import NIOCore
import OutpostProto

/// The administration API: JSON over HTTP on a UNIX socket (DIR/admin.sock,
/// mode 0600), so the credential is the file system's: only the data
/// directory's owner (and root) can administer. Nothing administrative is
/// reachable on the devices' TLS port.
///
///     GET  /devices?select=SEL          every device (summary), or those the label selector picks
///     POST /devices/REF/label           {"set": {"k": "v"}, "remove": ["k"]}
///     POST /bulk/ACTION                 {"select": SEL, …}: a device action (set-os, reboot, shutdown,
///                                       retry-update) on every device the selector picks
///     GET  /devices/REF                 one device: config, info, update history
///     GET  /devices/REF/logs?after=N&limit=M
///     GET  /devices/REF/metrics?limit=M
///     GET  /devices/REF/attestation     TPM keys, the last quote (hex parts for tpm2_checkquote) and its verdict
///     POST /devices/REF/attestation-reset  forget the first-use PCR 0/4/7 (after a firmware update)
///     GET  /attestation/models          firmware PCR 0/4/7 per hardware model (DeviceInfo.identity.board)
///     POST /attestation/models/MODEL    {"pcrs": {"0": HEX, "4": HEX, "7": HEX}} or {"remove": true}
///     GET  /attestation/ek-cas          the TPM makers' CAs EK certificates must chain to
///     POST /attestation/ek-cas          {"pem": PEM}: adds every certificate in it
///     POST /attestation/ek-cas/FP/remove
///     POST /devices/REF/set-os          {"bundle": PATH} or {"url": URL, "version": V}; "activate" (default true)
///     POST /devices/REF/set-network     {"networkJSON": "..."}
///     POST /devices/REF/set-apps        {"appsJSON": "..."} (the apps.json shape; validated, then the config's apps section)
///     POST /devices/REF/set-secret      {"name": N, "valueBase64": B64}: a secret for the device's vault (AdminSecrets.swift)
///     POST /devices/REF/remove-secret   {"name": N}
///     POST /devices/REF/reboot|shutdown|retry-update
///     POST /devices/REF/intervals       {"config": s, "metrics": s, "info": s}
///     GET  /rollouts, POST /rollouts    list; create {"select", "waves", "soakMs", "deadlineMs",
///                                       "maxFailuresPercent", and "bundle" or "url"+"version"}
///     GET  /rollouts/ID|latest          status: waves, failed devices and why, history
///     POST /rollouts/ID|latest/pause|resume|abort
///     GET  /onboard                     the allow-list
///     POST /onboard/allow|remove        {"certPEM": PEM, "serial": S or "*"}
///     GET  /bundles, POST /bundles      {"path": PATH}
///
/// Errors: status 400/404 and {"error": "one line"}.
public struct AdminRoutes: Sendable {
    let fleet: Fleet
    let bundles: BundleStore

    public init(fleet: Fleet, bundles: BundleStore) {
        self.fleet = fleet
        self.bundles = bundles
    }

    public func router() -> Router<BasicRequestContext> {
        let r = Router(context: BasicRequestContext.self)
        r.get("/devices") { q, _ in await json { try await deviceList(select: q.uri.queryParameters.get("select")) } }
        r.get("/devices/:ref") { _, c in await json { try await deviceShow(try ref(c)) } }
        r.get("/devices/:ref/logs") { q, c in
            await json { try await deviceLogs(try ref(c), after: UInt64(q.uri.queryParameters.get("after") ?? "") ?? 0,
                                              limit: Int(q.uri.queryParameters.get("limit") ?? "") ?? 1000) }
        }
        r.get("/devices/:ref/attestation") { _, c in await json { try await deviceAttestation(try ref(c)) } }
        r.get("/devices/:ref/metrics") { q, c in
            await json { try await deviceMetrics(try ref(c), limit: Int(q.uri.queryParameters.get("limit") ?? "") ?? 1) }
        }
        r.post("/devices/:ref/:action") { q, c in
            await json {
                let body = try await object(q)
                let action = c.parameters.get("action") ?? ""
                if action == "label" { return try await label(try ref(c), body) }
                if action == "attestation-reset" { return try await resetFirstUse(try ref(c)) }
                return try await deviceAction(try ref(c), action, body)
            }
        }
        r.post("/bulk/:action") { q, c in
            await json {
                let body = try await object(q)
                return try await bulkAction(c.parameters.get("action") ?? "", body)
            }
        }
        r.get("/attestation/models") { _, _ in await json { try await firmwareModels() } }
        r.post("/attestation/models/:model") { q, c in
            await json { try await setFirmwareModel(c.parameters.get("model") ?? "", try await object(q)) }
        }
        r.get("/attestation/ek-cas") { _, _ in await json { try await ekAuthorities() } }
        r.post("/attestation/ek-cas") { q, _ in await json { try await addEKAuthorities(try await object(q)) } }
        r.post("/attestation/ek-cas/:fingerprint/remove") { _, c in
            await json { try await removeEKAuthority(c.parameters.get("fingerprint") ?? "") }
        }
        r.get("/rollouts") { _, _ in await json { try await rolloutList() } }
        r.post("/rollouts") { q, _ in await json { try await rolloutCreate(try await object(q)) } }
        r.get("/rollouts/:id") { _, c in await json { try await rolloutStatus(c.parameters.get("id") ?? "") } }
        r.post("/rollouts/:id/:action") { _, c in
            await json { try await rolloutAction(c.parameters.get("id") ?? "", c.parameters.get("action") ?? "") }
        }
        r.get("/onboard") { _, _ in
            await json { try await fleet.store.onboardingEntries().map { ["fingerprint": $0.fingerprint, "serial": $0.serial, "note": $0.note] } }
        }
        r.post("/onboard/:action") { q, c in
            await json {
                let body = try await object(q)
                guard let pem = body["certPEM"] as? String else { throw ControllerError.invalidInput("certPEM is missing") }
                switch c.parameters.get("action") {
                case "allow":
                    guard let serial = body["serial"] as? String, !serial.isEmpty else { throw ControllerError.invalidInput("--serial is missing") }
                    let fp = try await fleet.allowOnboarding(certificatePEM: pem, serial: serial)
                    return ["fingerprint": fp, "serial": serial]
                case "remove":
                    let n = try await fleet.removeOnboarding(certificatePEM: pem, serial: body["serial"] as? String)
                    return ["removed": n]
                default:
                    throw ControllerError.invalidInput("unknown onboard action")
                }
            }
        }
        r.get("/bundles") { _, _ in await json { bundles.list().map { ["name": ($0.path as NSString).lastPathComponent, "size": $0.size] as [String: Any] } } }
        r.post("/bundles") { q, _ in
            await json {
                let body = try await object(q)
                guard let path = body["path"] as? String else { throw ControllerError.invalidInput("path is missing") }
                return addedJSON(try await offPool { try bundles.add(path: path) })
            }
        }
        return r
    }

    /// Verifying and copying a bundle reads the whole file: that runs on a
    /// Dispatch thread, so the cooperative pool keeps serving devices.
    private func offPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { cont in
            DispatchQueue.global().async {
                do { cont.resume(returning: try body()) } catch { cont.resume(throwing: error) }
            }
        }
    }

    private func ref(_ c: BasicRequestContext) throws -> String {
        guard let r = c.parameters.get("ref"), !r.isEmpty else { throw ControllerError.invalidInput("no device given") }
        return r
    }

    private func object(_ req: Request) async throws -> [String: Any] {
        let buf = try await req.body.collect(upTo: 4 << 20)
        if buf.readableBytes == 0 { return [:] }
        guard let o = try? JSONSerialization.jsonObject(with: Data(buf.readableBytesView)) as? [String: Any] else {
            throw ControllerError.invalidInput("the admin request body is not a JSON object")
        }
        return o
    }

    private func json(_ body: () async throws -> Any) async -> Response {
        var h = HTTPFields()
        h[.contentType] = "application/json"
        do {
            let v = try await body()
            return Response(status: .ok, headers: h, body: .init(byteBuffer: ByteBuffer(bytes: Views.encode(v))))
        } catch let e as ControllerError {
            let status: HTTPResponse.Status
            switch e {
            case .unknownDevice: status = .notFound
            case .store, .io: status = .internalServerError
            default: status = .badRequest
            }
            return Response(status: status, headers: h, body: .init(byteBuffer: ByteBuffer(bytes: Views.encode(["error": e.description]))))
        } catch {
            return Response(status: .internalServerError, headers: h,
                            body: .init(byteBuffer: ByteBuffer(bytes: Views.encode(["error": "\(error)"]))))
        }
    }

    private func info(_ id: String) async throws -> DeviceInfo? {
        try await fleet.store.info(deviceID: id).flatMap { try? DeviceInfo(serializedBytes: $0.body) }
    }

    /// The devices `select` picks (all when nil), in registration order, with their labels.
    func selected(_ select: String?) async throws -> [(DeviceRecord, [String: String])] {
        let selector = try LabelSelector.parse(select ?? "")
        let labels = try await fleet.store.labels()
        return try await fleet.storedDevices().compactMap { d in
            let l = labels[d.id] ?? [:]
            return selector.matches(l) ? (d, l) : nil
        }
    }

    func deviceList(select: String?) async throws -> Any {
        var out: [Any] = []
        for (d, labels) in try await selected(select) {
            var o = Views.summary(d, info: try await info(d.id))
            o["labels"] = labels
            out.append(o)
        }
        return out
    }

    func label(_ ref: String, _ body: [String: Any]) async throws -> Any {
        let d = try await fleet.resolve(ref)
        var set: [String: String] = [:]
        for (k, v) in body["set"] as? [String: Any] ?? [:] {
            guard let v = v as? String, case let .set(key, value) = try LabelSelector.parseChange("\(k)=\(v)") else {
                throw ControllerError.invalidInput("label '\(k)': the value is not a string")
            }
            set[key] = value
        }
        var remove: [String] = []
        for k in body["remove"] as? [Any] ?? [] {
            guard let k = k as? String, case let .remove(key) = try LabelSelector.parseChange(k + "-") else {
                throw ControllerError.invalidInput("a label key to remove is not a string")
            }
            remove.append(key)
        }
        if let both = remove.first(where: { set[$0] != nil }) { throw ControllerError.invalidInput("label '\(both)' is both set and removed") }
        try await fleet.store.setLabels(deviceID: d.id, set: set, remove: remove)
        return ["device": d.id, "labels": try await fleet.store.labels()[d.id] ?? [:]] as [String: Any]
    }

    func deviceShow(_ ref: String) async throws -> Any {
        let d = try await fleet.resolve(ref)
        let i = try await info(d.id)
        var o = Views.summary(d, info: i)
        let config = try fleet.config(of: d.id)
        o["config"] = Views.configJSON(config)
        if let i { o["info"] = Views.json(i) }
        if let vault = Views.vaultJSON(i, config: config) { o["vault"] = vault }
        o["certificateFingerprint"] = d.fingerprint
        o["labels"] = try await fleet.store.labels()[d.id] ?? [:]
        o["updateHistory"] = try await fleet.store.updateHistory(deviceID: d.id).map {
            ["step": $0.step, "version": $0.version, "reason": $0.reason, "deviceTime": Views.iso($0.deviceTimeMs),
             "received": Views.iso($0.receivedMs)]
        }
        o["logsAcked"] = try await fleet.store.logAck(deviceID: d.id)
        return o
    }

    func deviceLogs(_ ref: String, after: UInt64, limit: Int) async throws -> Any {
        let d = try await fleet.resolve(ref)
        let rows = try await fleet.store.logs(deviceID: d.id, after: after, limit: max(1, min(limit, 10_000)))
        return ["device": d.id, "acked": try await fleet.store.logAck(deviceID: d.id), "entries": rows.map(Views.logJSON)] as [String: Any]
    }

    func deviceMetrics(_ ref: String, limit: Int) async throws -> Any {
        let d = try await fleet.resolve(ref)
        let m = try await fleet.store.metrics(deviceID: d.id, limit: max(1, min(limit, Limits.metricsHistory)))
        return ["device": d.id, "metrics": m.compactMap { b -> Any? in
            (try? DeviceMetrics(serializedBytes: b.body)).map { Views.json($0) }
        }] as [String: Any]
    }

    private func addedJSON(_ a: BundleStore.Added) -> [String: Any] {
        ["name": a.name, "version": a.version, "sha256": a.sha256, "size": a.size, "signedBy": a.signedBy]
    }

    /// What an action does to a device's config, and what to report about it besides.
    struct ConfigChange {
        var apply: @Sendable (inout DeviceConfig) throws -> Void
        var report: [String: Any] = [:]
    }

    /// The BaseOS a set-os or a rollout gives: a bundle FILE (verified, added and served here) or a URL
    /// and its version.
    func baseOS(_ body: [String: Any]) async throws -> (BaseOS, [String: Any]) {
        var base = BaseOS()
        base.activate = body["activate"] as? Bool ?? true
        var report: [String: Any] = [:]
        if let path = body["bundle"] as? String {
            let a = try await offPool { try bundles.add(path: path) }
            if let v = body["version"] as? String, !v.isEmpty, v != a.version {
                throw ControllerError.invalidInput("--version \(v) does not match the bundle's version \(a.version)")
            }
            base.version = a.version
            base.bundleURL = fleet.url + DeviceAPI.bundles + a.name
            base.sha256 = a.sha256
            base.size = a.size
            report["bundle"] = addedJSON(a)
        } else if let url = body["url"] as? String {
            guard url.hasPrefix("https://") || url.hasPrefix("http://"), URL(string: url)?.host != nil else {
                throw ControllerError.invalidInput("--bundle '\(url)' is neither a file nor an http(s) URL")
            }
            guard let v = body["version"] as? String, !v.isEmpty else {
                throw ControllerError.invalidInput("--version is needed with a bundle URL (the controller cannot read its manifest)")
            }
            base.version = v
            base.bundleURL = url
        } else {
            throw ControllerError.invalidInput("set-os needs --bundle FILE or URL")
        }
        return (base, report)
    }

    /// A device action's config change; a set-os bundle is verified and added once here,
    /// however many devices then get it.
    func configChange(_ action: String, _ body: [String: Any]) async throws -> ConfigChange {
        switch action {
        case "set-os":
            let (b, report) = try await baseOS(body)
            return ConfigChange(apply: { c in
                var n = b
                n.retryCounter = c.commands.updateRetry
                c.baseOs = n
            }, report: report)
        case "set-network":
            guard let text = body["networkJSON"] as? String else { throw ControllerError.invalidInput("networkJSON is missing") }
            guard let obj = try? JSONSerialization.jsonObject(with: Data(text.utf8)), obj is [String: Any] else {
                throw ControllerError.invalidInput("the network config is not a JSON object")
            }
            return ConfigChange(apply: { c in c.network.networkJson = Data(text.utf8) })
        case "set-apps":
            guard let text = body["appsJSON"] as? String else { throw ControllerError.invalidInput("appsJSON is missing") }
            let section = try AppsSectionCodec.section(fromAppsJSON: Data(text.utf8))
            return ConfigChange(apply: { c in c.apps = section },
                                report: ["apps": section.instances.map(\.name)])
        case "set-secret", "remove-secret":
            return try secretChange(action, body)
        case "reboot":
            return ConfigChange(apply: { c in c.commands.reboot &+= 1 })
        case "shutdown":
            return ConfigChange(apply: { c in c.commands.shutdown &+= 1 })
        case "retry-update":
            return ConfigChange(apply: { c in
                c.commands.updateRetry &+= 1
                if c.hasBaseOs { c.baseOs.retryCounter = c.commands.updateRetry }
            })
        case "intervals":
            func seconds(_ k: String) throws -> UInt32? {
                guard let v = body[k] else { return nil }
                guard let n = v as? Int, n >= 0, n <= 86_400 else { throw ControllerError.invalidInput("\(k) must be 0–86400 seconds") }
                return UInt32(n)
            }
            let (ci, mi, ii) = (try seconds("config"), try seconds("metrics"), try seconds("info"))
            return ConfigChange(apply: { c in
                if let ci { c.intervals.configIntervalS = ci }
                if let mi { c.intervals.metricsIntervalS = mi }
                if let ii { c.intervals.infoIntervalS = ii }
            })
        default:
            throw ControllerError.invalidInput("unknown device action '\(action)'")
        }
    }

    func deviceAction(_ ref: String, _ action: String, _ body: [String: Any]) async throws -> Any {
        let change = try await configChange(action, body)
        let record = try await fleet.updateConfig(ref, change.apply)
        var result = change.report
        result["device"] = record.id
        result["configHash"] = record.configHash
        result["config"] = Views.configJSON(try fleet.config(of: record.id))
        return result
    }

    /// The actions that make sense for many devices at once.
    static let bulkActions: Set<String> = ["set-os", "reboot", "shutdown", "retry-update"]

    func bulkAction(_ action: String, _ body: [String: Any]) async throws -> Any {
        guard Self.bulkActions.contains(action) else {
            throw ControllerError.invalidInput("'\(action)' is not a bulk action (\(Self.bulkActions.sorted().joined(separator: ", ")))")
        }
        guard let select = body["select"] as? String else { throw ControllerError.invalidInput("select is missing") }
        let devices = try await selected(select)
        let change = try await configChange(action, body)
        var done: [[String: Any]] = []
        for (d, _) in devices {
            let record = try await fleet.updateConfig(d.id, change.apply)
            done.append(["device": record.id, "configHash": record.configHash])
        }
        var result = change.report
        result["select"] = select
        result["devices"] = done
        return result
    }
}
