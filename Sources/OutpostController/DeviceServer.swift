import CompressNIO
import Foundation
import Hummingbird
import HummingbirdTLS
import Logging
import NIOCore
import NIOSSL
import OutpostProto

/// The context of a device request: the channel, for its TLS peer certificate.
public struct DeviceContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    let channel: any Channel

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
    }

    public var maxUploadSize: Int { Limits.body }
}

/// Body size limits. Devices send small messages; logs come in gzip batches
/// of at most ~50 KB, so 1 MiB is ample and 8 MiB once decompressed.
public enum Limits {
    public static let body = 1 << 20
    public static let decompressedLogs = 8 << 20
    public static let metricsHistory = 60
}

/// The device API, `/api/v1/edgedevice/*` and `/api/v1/bundles/*`, over
/// mutual TLS. Identity is the client certificate's SHA-256 fingerprint:
/// the onboarding certificate may only register, a registered device's own
/// certificate may call everything else, anything else gets 403.
public struct DeviceAPIRoutes: Sendable {
    let fleet: Fleet
    let bundles: BundleStore
    let logger: Logger
    let metrics: ControllerMetrics?
    let attestation: AttestationService

    public init(fleet: Fleet, bundles: BundleStore, logger: Logger, metrics: ControllerMetrics? = nil) {
        self.fleet = fleet
        self.bundles = bundles
        self.logger = logger
        self.metrics = metrics
        attestation = AttestationService(store: fleet.store, bundles: bundles)
    }

    public func router() -> Router<DeviceContext> {
        let r = Router(context: DeviceContext.self)
        r.post(RouterPath(DeviceAPI.register)) { req, ctx in await handle(req, ctx, "register") { try await register(req, ctx) } }
        r.get(RouterPath(DeviceAPI.ping)) { req, ctx in await handle(req, ctx, "ping") { try await ping(ctx) } }
        r.post(RouterPath(DeviceAPI.config)) { req, ctx in await handle(req, ctx, "config") { try await config(req, ctx) } }
        r.post(RouterPath(DeviceAPI.info)) { req, ctx in await handle(req, ctx, "info") { try await info(req, ctx) } }
        r.post(RouterPath(DeviceAPI.metrics)) { req, ctx in await handle(req, ctx, "metrics") { try await metrics(req, ctx) } }
        r.post(RouterPath(DeviceAPI.logs)) { req, ctx in await handle(req, ctx, "logs") { try await logs(req, ctx) } }
        r.post(RouterPath(DeviceAPI.attestActivate)) { req, ctx in await handle(req, ctx, "attest-activate") { try await activate(req, ctx) } }
        r.post(RouterPath(DeviceAPI.attestNonce)) { req, ctx in await handle(req, ctx, "attest-nonce") { try await nonce(ctx) } }
        r.post(RouterPath(DeviceAPI.attestQuote)) { req, ctx in await handle(req, ctx, "attest-quote") { try await quote(req, ctx) } }
        r.get(RouterPath(DeviceAPI.bundles + ":name")) { req, ctx in await handle(req, ctx, "bundle") { try await bundle(req, ctx, head: false) } }
        r.head(RouterPath(DeviceAPI.bundles + ":name")) { req, ctx in await handle(req, ctx, "bundle") { try await bundle(req, ctx, head: true) } }
        return r
    }

    /// Every refusal is a status and one line of text; nothing is stored
    /// before a request has been fully checked.
    private func handle(_ req: Request, _ ctx: DeviceContext, _ route: String, _ body: () async throws -> Response) async -> Response {
        guard let metrics else { return await answer(req, ctx, body) }
        let start = ContinuousClock.now
        let response = await answer(req, ctx, body)
        metrics.request(route: route, status: response.status.code, duration: ContinuousClock.now - start)
        return response
    }

    private func answer(_ req: Request, _ ctx: DeviceContext, _ body: () async throws -> Response) async -> Response {
        do { return try await body() } catch let e as APIError {
            if e.status >= 500 { logger.error("\(req.method) \(req.uri.path): \(e.message)") }
            else { logger.debug("\(req.method) \(req.uri.path): \(e.status) \(e.message)") }
            return Self.text(e.status, e.message)
        } catch {
            logger.error("\(req.method) \(req.uri.path): \(error)")
            return Self.text(500, "internal error: \(error)")
        }
    }

    static func text(_ status: Int, _ message: String) -> Response {
        var h = HTTPFields()
        h[.contentType] = "text/plain; charset=utf-8"
        return Response(status: .init(code: status), headers: h, body: .init(byteBuffer: ByteBuffer(string: message + "\n")))
    }

    static func proto(_ bytes: Data, status: Int = 200) -> Response {
        var h = HTTPFields()
        h[.contentType] = DeviceAPI.contentType
        return Response(status: .init(code: status), headers: h, body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
    }

    // MARK: identity

    private func fingerprint(_ ctx: DeviceContext) async throws(APIError) -> String {
        let cert: NIOSSLCertificate?
        do { cert = try await ctx.channel.nioSSL_peerCertificate().get() } catch {
            throw APIError(403, "no TLS client certificate")
        }
        guard let cert, let der = try? cert.toDERBytes() else { throw APIError(403, "no TLS client certificate") }
        return PKI.fingerprint(der: der)
    }

    /// The registered device behind the client certificate, or 403.
    private func device(_ ctx: DeviceContext) async throws(APIError) -> Fleet.Entry {
        let fp = try await fingerprint(ctx)
        let caller: Fleet.Caller
        do { caller = try await fleet.identify(fingerprint: fp) } catch { throw APIError(500, "cannot look the certificate up: \(error)") }
        switch caller {
        case .device(let e):
            fleet.seen(e.record.id)
            return e
        case .onboarding:
            throw APIError(403, "the onboarding certificate may only register; use the device certificate")
        case .unknown:
            throw APIError(403, "unknown device certificate (register first)")
        }
    }

    private func body(_ req: Request, limit: Int = Limits.body) async throws(APIError) -> Data {
        if let len = req.headers[.contentLength].flatMap({ Int($0) }), len > limit {
            throw APIError(413, "body of \(len) bytes is larger than the limit of \(limit)")
        }
        do {
            let buf = try await req.body.collect(upTo: limit)
            return Data(buf.readableBytesView)
        } catch is NIOTooManyBytesError {
            throw APIError(413, "body is larger than the limit of \(limit) bytes")
        } catch {
            throw APIError(400, "cannot read the body: \(error)")
        }
    }

    // MARK: endpoints

    private func register(_ req: Request, _ ctx: DeviceContext) async throws -> Response {
        let fp = try await fingerprint(ctx)
        if case .unknown = try await fleet.identify(fingerprint: fp) {
            throw APIError(403, "not an onboarding certificate this controller accepts")
        }
        let r = try WireCheck.register(try await body(req))
        // A TPM identity's keys are checked (and sealed for) before anything is stored.
        let enrolment = try await attestation.enrol(r)
        var reg = try await fleet.register(clientFingerprint: fp, request: r)
        if reg.created { logger.info("registered device \(reg.response.deviceID) (serial \(r.serial))") }
        // The challenge that binds the AK to the EK.
        if let enrolment, let challenge = try await attestation.register(deviceID: reg.response.deviceID, enrolment) {
            reg.response.credentialChallenge = challenge
        }
        return Self.proto(try reg.response.serializedBytes(), status: reg.created ? 201 : 200)
    }

    private func activate(_ req: Request, _ ctx: DeviceContext) async throws -> Response {
        let e = try await device(ctx)
        let a = try WireCheck.credentialAnswer(try await body(req))
        try await attestation.activate(deviceID: e.record.id, answer: a)
        logger.info("device \(e.record.id): attestation key bound to its endorsement key")
        return Response(status: .ok)
    }

    private func nonce(_ ctx: DeviceContext) async throws -> Response {
        let e = try await device(ctx)
        return Self.proto(try await attestation.nonce(deviceID: e.record.id).serializedBytes())
    }

    private func quote(_ req: Request, _ ctx: DeviceContext) async throws -> Response {
        let e = try await device(ctx)
        let q = try WireCheck.quote(try await body(req))
        let result = try await attestation.quote(deviceID: e.record.id, q)
        logger.info("device \(e.record.id): attestation \(result.reason)")
        return Self.proto(try result.serializedBytes())
    }

    private func ping(_ ctx: DeviceContext) async throws -> Response {
        _ = try await device(ctx)
        return Response(status: .ok)
    }

    private func config(_ req: Request, _ ctx: DeviceContext) async throws -> Response {
        let e = try await device(ctx)
        let r = try WireCheck.config(try await body(req))
        // A device with an attestation key gets its secrets only with this boot's token.
        if case .withheld(let last) = try await attestation.verdict(deviceID: e.record.id, token: r.attestationToken) {
            let now = try await fleet.current(e.record.id) ?? e
            let hash = AttestationService.withheldHash(now.record.configHash)
            if r.configHash == hash { return Response(status: .notModified) }
            var resp = ConfigResponse()
            resp.config = try DeviceConfig(serializedBytes: now.record.config)
            // Really removed: the bytes served carry no secret value.
            resp.config.secrets = []
            resp.configHash = hash
            resp.attestation.secretsWithheld = true
            if let last { resp.attestation.last = last }
            return Self.proto(try resp.serializedBytes())
        }
        if r.configHash == e.record.configHash { return Response(status: .notModified) }
        // The device holds a hash this process does not: another replica may have served it a
        // newer config. The store decides, so a device never gets an older config back.
        let now = try await fleet.current(e.record.id) ?? e
        if r.configHash == now.record.configHash { return Response(status: .notModified) }
        return Self.proto(now.response)
    }

    private func info(_ req: Request, _ ctx: DeviceContext) async throws -> Response {
        let e = try await device(ctx)
        let bytes = try await body(req)
        let i = try WireCheck.info(bytes)
        // A new step (or a new version's) goes into the update history; the store compares with
        // the previous info under its lock, so the same report through two replicas counts once.
        let received = nowMs()
        try await fleet.store.putInfo(deviceID: e.record.id, body: bytes, receivedMs: received) { previousBody in
            guard i.hasUpdate else { return nil }
            let prev = previousBody.flatMap { try? DeviceInfo(serializedBytes: $0) }
            let changed = prev.map { $0.update.step != i.update.step || $0.update.version != i.update.version
                || $0.update.retryCounter != i.update.retryCounter } ?? true
            guard changed else { return nil }
            return UpdateStepRecord(step: Views.stepName(i.update.step), version: i.update.version, reason: i.update.reason,
                                    deviceTimeMs: Int64(clamping: i.update.timeUnixMs), receivedMs: received)
        }
        return Response(status: .ok)
    }

    private func metrics(_ req: Request, _ ctx: DeviceContext) async throws -> Response {
        let e = try await device(ctx)
        let bytes = try await body(req)
        _ = try WireCheck.metrics(bytes)
        try await fleet.store.putMetrics(deviceID: e.record.id, body: bytes, receivedMs: nowMs(), keep: Limits.metricsHistory)
        return Response(status: .ok)
    }

    private func logs(_ req: Request, _ ctx: DeviceContext) async throws -> Response {
        let e = try await device(ctx)
        var bytes = try await body(req)
        switch req.headers[.contentEncoding]?.lowercased() {
        case nil, "identity": break
        case "gzip": bytes = try Self.gunzip(bytes, limit: Limits.decompressedLogs)
        case let other?: throw APIError(415, "Content-Encoding '\(other)' is not supported (use gzip)")
        }
        let b = try WireCheck.logs(bytes)
        // A NUL is valid in a protobuf string but not in PostgreSQL text: stored as U+FFFD on
        // every store, so one odd line can never wedge a device's log upload.
        func storable(_ text: String) -> String { text.contains("\u{0}") ? text.replacingOccurrences(of: "\u{0}", with: "\u{FFFD}") : text }
        let rows = b.entries.map {
            LogRow(sequence: $0.sequence, timeMs: Int64(clamping: $0.timeUnixMs), source: storable($0.source),
                   severity: $0.severity.rawValue, message: storable($0.message))
        }
        var resp = LogsResponse()
        resp.ackedSequence = try await fleet.store.appendLogs(deviceID: e.record.id, entries: rows, droppedBefore: b.droppedBefore)
        return Self.proto(try resp.serializedBytes())
    }

    static func gunzip(_ data: Data, limit: Int) throws(APIError) -> Data {
        var buf = ByteBuffer(bytes: data)
        do {
            // maxSize bounds the allocation; the size check makes the limit exact.
            let out = try buf.decompress(with: .gzip(), maxSize: limit + 1)
            guard out.readableBytes <= limit else { throw CompressNIOError.bufferOverflow }
            return Data(out.readableBytesView)
        } catch let e as CompressNIOError where e == .bufferOverflow {
            throw APIError(413, "logs larger than \(limit) bytes once decompressed")
        } catch {
            throw APIError(400, "malformed gzip body: \(error)")
        }
    }

    private func bundle(_ req: Request, _ ctx: DeviceContext, head: Bool) async throws -> Response {
        _ = try await device(ctx)
        guard let name = ctx.parameters.get("name"), let file = bundles.file(named: name) else {
            throw APIError(404, "no such bundle")
        }
        var h = HTTPFields()
        h[.contentType] = "application/octet-stream"
        h[.acceptRanges] = "bytes"
        let size = file.size
        var range: ClosedRange<Int>? = nil
        if let spec = req.headers[.range] {
            guard let r = ByteRange.parse(spec, size: size) else {
                h[.contentRange] = "bytes */\(size)"
                return Response(status: .rangeNotSatisfiable, headers: h)
            }
            range = r
        }
        let r = range ?? 0...max(0, size - 1)
        h[.contentLength] = String(size == 0 ? 0 : r.count)
        if range != nil { h[.contentRange] = "bytes \(r.lowerBound)-\(r.upperBound)/\(size)" }
        let status: HTTPResponse.Status = range != nil ? .partialContent : .ok
        if head || size == 0 { return Response(status: status, headers: h) }
        let body = try await FileIO().loadFile(path: file.path, range: r, context: ctx)
        return Response(status: status, headers: h, body: body)
    }
}

/// One `bytes=` range of a Range header (the only form devices send).
enum ByteRange {
    static func parse(_ spec: String, size: Int) -> ClosedRange<Int>? {
        guard spec.hasPrefix("bytes="), size > 0 else { return nil }
        let v = spec.dropFirst(6)
        guard !v.contains(","), let dash = v.firstIndex(of: "-") else { return nil }
        let a = v[..<dash].trimmingCharacters(in: .whitespaces), b = v[v.index(after: dash)...].trimmingCharacters(in: .whitespaces)
        if a.isEmpty {
            guard let n = Int(b), n > 0 else { return nil }
            return max(0, size - n)...(size - 1)
        }
        guard let start = Int(a), start >= 0, start < size else { return nil }
        if b.isEmpty { return start...(size - 1) }
        guard let end = Int(b), end >= start else { return nil }
        return start...min(end, size - 1)
    }
}
