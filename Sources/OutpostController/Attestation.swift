// The controller's side of remote attestation (docs/attestation.md):
//
//   register  ek_public + ak_public ──▶ store, MakeCredential ──▶ challenge
//   activate  secret ──▶ SHA-256 equal to the sealed one? ──▶ AK bound
//   nonce     ──▶ 32 random bytes, one per device, 60 s, single use (the store takes it)
//   quote     ──▶ QuoteVerifier: signature, nonce, digest, PCR 0/4 not zero,
//                 PCR 8/9 == the signed manifest's prediction for (os_version, slot),
//                 PCR 0/4/7 == first use ──▶ result (+ a config token on a pass), stored
//   config    a device with a key gets its secrets only with this boot's token
//
// Devices without a TPM (file identity) register no keys: they are not attested and get
// their whole config. The policy is the issue's: no TPM must not brick a device, and
// status, info and the admin API say which devices are not attested.

import Crypto
import Foundation
import OutpostAttestation
import OutpostBundle
import OutpostProto
import Synchronization
import X509

/// Attestation for the device API, with a per-process cache of what the config poll needs
/// (does the device have a key, the hash of its current token), so that polling stays off
/// the store; a token this process has not seen is looked up in the store (another replica
/// may have issued it).
public final class AttestationService: Sendable {
    public let store: any FleetStore
    let manifests: ManifestIndex
    /// How long a nonce is good for.
    public static let nonceLifetimeMs: Int64 = 60_000
    public static let pcrs: [UInt32] = [0, 4, 7, 8, 9]
    /// The firmware PCRs held against the device's first quote.
    public static let firstUsePCRs = [0, 4, 7]

    struct Gate: Sendable {
        var hasKey: Bool
        var tokenSHA256: Data
        var last: AttestationResult?
        /// When this process read it; a pass is believed from memory only this long, so a
        /// failed attestation through another replica withholds secrets here too within it.
        var loadedMs: Int64 = nowMs()
    }
    static let passCacheMs: Int64 = 10_000
    private let gates = Mutex<[String: Gate]>([:])

    public init(store: any FleetStore, bundles: BundleStore) {
        self.store = store
        manifests = ManifestIndex(bundles: bundles)
    }

    // MARK: registration

    /// A registration's TPM keys, checked and sealed for, before anything is stored.
    struct Enrolment: Sendable {
        var request: RegisterRequest
        var challenge: CredentialChallenge
        var credentialSHA256: Data
        /// What became of the EK certificate (EKCertificates.swift).
        var ekCertificateStatus: String
    }

    /// Checks the keys in `r` (AK a restricted P-256 signing key, EK the TCG ECC template, the
    /// EK certificate naming the EK and chaining to a configured EK CA when any is) and makes
    /// the MakeCredential challenge; nil without keys (file identity). Runs before the device
    /// is registered, so a refusal stores nothing.
    func enrol(_ r: RegisterRequest) async throws -> Enrolment? {
        guard !r.akPublic.isEmpty else { return nil }
        let ak: AttestationKeyPublic
        do { ak = try AttestationKeyPublic(parsing: Array(r.akPublic)) } catch {
            throw APIError.malformed("RegisterRequest.ak_public: \(error.description.replacingOccurrences(of: "attestation: ", with: ""))")
        }
        var secret = [UInt8](repeating: 0, count: 32)
        var rng = SystemRandomNumberGenerator()
        for i in secret.indices { secret[i] = rng.next() }
        let sealed: CredentialChallenge
        do { sealed = try CredentialChallenge.make(endorsementKeyPublic: Array(r.ekPublic), name: ak.name, credential: secret) } catch {
            throw APIError.malformed("RegisterRequest.ek_public: \(error.description.replacingOccurrences(of: "attestation: ", with: ""))")
        }
        var status = EKCertificate.noCertificate
        if !r.ekCertificate.isEmpty {
            let cert = try EKCertificate.check(der: Array(r.ekCertificate), endorsementKeyPublic: Array(r.ekPublic))
            status = try await EKCertificate.verify(cert, authorities: try await store.ekCertificateAuthorities())
        }
        return Enrolment(request: r, challenge: sealed, credentialSHA256: Data(SHA256.hash(data: secret)), ekCertificateStatus: status)
    }

    /// Stores the registered device's keys and returns the challenge, or nil when the same
    /// keys are bound already. Other keys than the bound ones are refused: the device key lives
    /// in the same TPM, so a new TPM is a new device, and nobody holding only the onboarding
    /// certificate can swap a device's AK.
    func register(deviceID: String, _ e: Enrolment) async throws -> CredentialChallengeMessage? {
        let r = e.request
        let existing = try await store.attestationKey(deviceID: deviceID)
        if let existing, existing.boundMs > 0 {
            guard existing.akPublic == r.akPublic, existing.ekPublic == r.ekPublic else {
                throw APIError(403, "this device's attestation key is bound to another EK or AK; a new TPM is a new device")
            }
            // The same keys again: the certificate's status as checked now (a CA added or removed since).
            if existing.ekCertificate != r.ekCertificate || existing.ekCertificateStatus != e.ekCertificateStatus {
                _ = try await store.changeAttestationKey(deviceID: deviceID) { k in
                    var n = k
                    n.ekCertificate = r.ekCertificate
                    n.ekCertificateStatus = e.ekCertificateStatus
                    return n
                }
            }
            return nil
        }
        // Same EK: the same TPM, so its first-use firmware PCRs still hold.
        let firstUse = existing?.ekPublic == r.ekPublic ? existing?.firstUse ?? [:] : [:]
        try await store.putAttestationKey(AttestationKeyRecord(
            deviceID: deviceID, ekPublic: r.ekPublic, akPublic: r.akPublic, ekCertificate: r.ekCertificate,
            credentialSHA256: e.credentialSHA256, boundMs: 0, firstUse: firstUse, ekCertificateStatus: e.ekCertificateStatus))
        gates.withLock { $0[deviceID] = nil }
        var c = CredentialChallengeMessage()
        c.credentialBlob = Data(e.challenge.credentialBlob)
        c.encryptedSecret = Data(e.challenge.encryptedSecret)
        return c
    }

    /// The device's answer to the challenge: binds the AK when the secret is the sealed one.
    func activate(deviceID: String, answer: CredentialAnswer) async throws {
        let digest = Data(SHA256.hash(data: answer.secret))
        let result = try await store.changeAttestationKey(deviceID: deviceID) { k in
            guard k.credentialSHA256 == digest else { throw APIError(403, "the credential secret is not the one the challenge sealed") }
            guard k.boundMs == 0 else { return nil }
            var n = k
            n.boundMs = nowMs()
            return n
        }
        guard result != nil else { throw APIError(403, "no attestation key registered for this device") }
    }

    // MARK: nonce and quote

    func nonce(deviceID: String) async throws -> AttestationChallenge {
        _ = try await boundKey(deviceID)
        var nonce = [UInt8](repeating: 0, count: 32)
        var rng = SystemRandomNumberGenerator()
        for i in nonce.indices { nonce[i] = rng.next() }
        let expires = nowMs() + Self.nonceLifetimeMs
        try await store.putNonce(deviceID: deviceID, nonce: Data(nonce), expiresMs: expires)
        var c = AttestationChallenge()
        c.nonce = Data(nonce)
        c.pcrs = Self.pcrs
        c.expiresUnixMs = UInt64(expires)
        return c
    }

    private func boundKey(_ deviceID: String) async throws -> AttestationKeyRecord {
        guard let key = try await store.attestationKey(deviceID: deviceID) else {
            throw APIError(409, "this device registered no attestation key (file identity): it is not attested")
        }
        guard key.boundMs > 0 else {
            throw APIError(409, "the attestation key is not bound yet: answer the registration's credential challenge first")
        }
        return key
    }

    /// Checks a quote against the nonce this device was given and stores the outcome. A
    /// quote without an outstanding nonce (never asked, expired, or used: a replay) is
    /// refused and stores nothing.
    func quote(deviceID: String, _ q: AttestationQuote) async throws -> AttestationResult {
        let key = try await boundKey(deviceID)
        guard let issued = try await store.takeNonce(deviceID: deviceID) else {
            throw APIError(409, "no attestation nonce outstanding for this device (never asked, or already used): ask for a new one")
        }
        let now = nowMs()
        guard issued.expiresMs >= now else { throw APIError(409, "the attestation nonce expired \((now - issued.expiresMs) / 1000) s ago: ask for a new one") }

        var evidence = QuoteEvidence(attest: Array(q.attest), signatureR: Array(q.signatureR), signatureS: Array(q.signatureS), pcrs: [:])
        for (index, value) in q.pcrs { evidence.pcrs[Int(index)] = Array(value) }
        // PCR 0/4/7: the operator's reference for the device's hardware model, else first use.
        var expected: [Int: [UInt8]] = [:]
        var firmware = key.firstUse
        var firmwareSource = "first use"
        if !q.board.isEmpty, let reference = try await store.firmwareReferences()[q.board] {
            firmware = reference
            firmwareSource = "model \(q.board)"
        }
        for (index, value) in firmware { if let i = Int(index), let v = bytes(fromHex: value) { expected[i] = v } }
        var notAttested: String?
        switch manifests.slotPCRs(version: q.osVersion, slot: q.slot) {
        case .found(let slot):
            do { expected = try QuoteVerifier.expectations(slot: slot, firstUse: expected) } catch { notAttested = error.description }
        case .missing(let why):
            notAttested = why
        }

        var result = AttestationResult()
        result.timeUnixMs = UInt64(now)
        var record = AttestationRecord(
            deviceID: deviceID, receivedMs: now, passed: false, reason: "", mismatches: [], nonce: issued.nonce,
            attest: q.attest, signatureR: q.signatureR, signatureS: q.signatureS,
            pcrs: Dictionary(uniqueKeysWithValues: q.pcrs.map { (String($0.key), hex($0.value)) }),
            akPublic: key.akPublic, eventLog: q.eventLog, slot: q.slot, osVersion: q.osVersion,
            board: q.board, firmwareReference: firmwareSource, tokenSHA256: Data())
        do {
            let verifier = try QuoteVerifier(attestationKeyPublic: Array(key.akPublic))
            let report = try verifier.verify(evidence, nonce: Array(issued.nonce), expected: expected)
            // First use: the firmware PCRs of the first quote that proves anything become the reference.
            if key.firstUse.isEmpty {
                let firstUse = Dictionary(uniqueKeysWithValues: Self.firstUsePCRs.compactMap { i in report.pcrs[i].map { (String(i), hex($0)) } })
                _ = try await store.changeAttestationKey(deviceID: deviceID) { k in
                    guard k.firstUse.isEmpty else { return nil }
                    var n = k
                    n.firstUse = firstUse
                    return n
                }
            }
            for m in report.mismatches {
                var pm = PCRMismatchMessage()
                pm.index = UInt32(m.index)
                pm.expected = hex(m.expected)
                pm.actual = m.actual.map { hex($0) } ?? ""
                result.mismatches.append(pm)
            }
            if let notAttested {
                result.reason = "not attested: " + notAttested
            } else if report.passed {
                result.passed = true
                result.reason = "passed: PCRs 0, 4, 7 as \(firmwareSource), 8 and 9 as \(q.osVersion) \(q.slot)'s signed manifest predicts"
                var token = [UInt8](repeating: 0, count: 32)
                var rng = SystemRandomNumberGenerator()
                for i in token.indices { token[i] = rng.next() }
                result.token = Data(token)
                record.tokenSHA256 = Data(SHA256.hash(data: token))
            } else {
                result.reason = "failed: " + report.mismatches.map(\.description).joined(separator: "; ")
            }
        } catch let e as AttestationError {
            result.reason = "refused: " + e.description
        }
        record.passed = result.passed
        record.reason = result.reason
        record.mismatches = result.mismatches.map { .init(index: Int($0.index), expected: $0.expected, actual: $0.actual) }
        try await store.putAttestation(record)
        var stored = result
        stored.token = Data()
        let gate = Gate(hasKey: true, tokenSHA256: record.tokenSHA256, last: stored)
        gates.withLock { $0[deviceID] = gate }
        return result
    }

    // MARK: config

    /// What a config poll gets: the whole config (no key, or this boot's token), or the
    /// config with its secrets withheld and the last result.
    enum Verdict: Sendable {
        case whole
        case withheld(AttestationResult?)
    }

    func verdict(deviceID: String, token: Data) async throws -> Verdict {
        let cached = gates.withLock { $0[deviceID] }
        let tokenHash = token.isEmpty ? Data() : Data(SHA256.hash(data: token))
        if let g = cached {
            if !g.hasKey { return .whole }
            if !token.isEmpty && g.tokenSHA256 == tokenHash && nowMs() - g.loadedMs < Self.passCacheMs { return .whole }
            if token.isEmpty { return .withheld(g.last) }
        }
        let g = try await loadGate(deviceID)
        gates.withLock { $0[deviceID] = g }
        if !g.hasKey { return .whole }
        return !token.isEmpty && g.tokenSHA256 == tokenHash ? .whole : .withheld(g.last)
    }

    private func loadGate(_ deviceID: String) async throws -> Gate {
        guard try await store.attestationKey(deviceID: deviceID) != nil else { return Gate(hasKey: false, tokenSHA256: Data(), last: nil) }
        guard let r = try await store.attestation(deviceID: deviceID) else { return Gate(hasKey: true, tokenSHA256: Data(), last: nil) }
        return Gate(hasKey: true, tokenSHA256: r.tokenSHA256, last: Self.result(r))
    }

    static func result(_ r: AttestationRecord) -> AttestationResult {
        var out = AttestationResult()
        out.passed = r.passed
        out.reason = r.reason
        out.timeUnixMs = UInt64(max(0, r.receivedMs))
        out.mismatches = r.mismatches.map { m in
            var pm = PCRMismatchMessage()
            pm.index = UInt32(m.index)
            pm.expected = m.expected
            pm.actual = m.actual
            return pm
        }
        return out
    }

    /// The config hash a device with withheld secrets gets: another value than the whole
    /// config's, so that once it has attested it fetches the config again.
    static func withheldHash(_ hash: String) -> String {
        hex(Array(SHA256.hash(data: Array((hash + ":secrets-withheld").utf8))))
    }

    /// Sets (or, with nil, removes) the firmware PCRs 0, 4 and 7 for a hardware model: values
    /// the operator knows, e.g. from one machine of the model, instead of each device's first use.
    public func setFirmwareReference(model: String, pcrs: [Int: String]?) async throws {
        guard !model.isEmpty, model.utf8.count <= 128, model.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7f }) else {
            throw ControllerError.invalidInput("the model '\(model.prefix(40))' is not 1–128 printable ASCII characters")
        }
        guard let pcrs else { return try await store.setFirmwareReference(model: model, pcrs: nil) }
        var out: [String: String] = [:]
        for (index, value) in pcrs {
            guard Self.firstUsePCRs.contains(index) else {
                throw ControllerError.invalidInput("PCR \(index) is not a firmware PCR (0, 4 or 7): 8 and 9 come from the signed manifest")
            }
            guard let v = bytes(fromHex: value.lowercased()), v.count == 32 else {
                throw ControllerError.invalidInput("PCR \(index): '\(value.prefix(80))' is not 64 hex digits (SHA-256)")
            }
            out[String(index)] = hex(v)
        }
        guard !out.isEmpty else { throw ControllerError.invalidInput("no PCR values given (--pcr 0=HEX …)") }
        try await store.setFirmwareReference(model: model, pcrs: out)
    }

    /// Forgets the first-use firmware PCRs (after a firmware update): the next quote records them.
    public func resetFirstUse(deviceID: String) async throws -> Bool {
        let r = try await store.changeAttestationKey(deviceID: deviceID) { k in
            var n = k
            n.firstUse = [:]
            return n
        }
        return r != nil
    }
}

/// The signed manifests of the bundles this controller holds, by OS version: where the
/// PCR 8/9 predictions come from. A bundle's manifest is read (and its signature checked
/// against DIR/trust) once per file; bundle names carry their digest, so a file never changes.
final class ManifestIndex: Sendable {
    let bundles: BundleStore
    private let cache = Mutex<[String: BundleManifest]>([:])

    init(bundles: BundleStore) { self.bundles = bundles }

    enum Lookup {
        case found(BundleManifest.SlotPCRs)
        case missing(String)
    }

    func slotPCRs(version: String, slot: String) -> Lookup {
        guard !version.isEmpty else { return .missing("the quote names no OS version") }
        let trust = try? TrustStore.load(directory: bundles.trustDirectory)
        var found: BundleManifest?
        for file in bundles.list() {
            let name = (file.path as NSString).lastPathComponent
            if let m = cache.withLock({ $0[name] }) {
                if m.osVersion == version { found = m; break }
                continue
            }
            guard let trust, let source = try? FilePayloadSource(path: file.path),
                  let verified = try? BundleVerifier.verify(source, trust: trust, policy: BundlePolicy()) else { continue }
            cache.withLock { $0[name] = verified.manifest }
            if verified.manifest.osVersion == version { found = verified.manifest; break }
        }
        guard let manifest = found else {
            return .missing("the controller holds no signed bundle manifest for OS version '\(version)' (add its bundle)")
        }
        guard let pcrs = manifest.pcrs[slot] else {
            let known = manifest.pcrs.keys.sorted().joined(separator: ", ")
            return .missing("the manifest of \(version) predicts no PCRs for slot '\(slot)' (it has: \(known.isEmpty ? "none" : known))")
        }
        return .found(pcrs)
    }
}
