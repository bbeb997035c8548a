// Remote attestation on the device (attest.proto), once per boot before the
// first config poll, for TPM identities only:
//
//   register ─▶ credential challenge ─▶ ActivateCredential ─▶ attest/activate
//   attest/nonce ─▶ TPM2_Quote(nonce, PCRs 0,4,7,8,9) + event log (gzip)
//     ─▶ attest/quote ─▶ result: one console line, status, info;
//        a pass's token goes with every config poll of this boot
//
// A failed attestation is not retried this boot: the PCRs will not change.
// The device keeps running on its config; the controller withholds secrets.

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import OutpostPlatform
import OutpostProto

extension FleetClient {
    /// Answers the registration's MakeCredential challenge with the TPM.
    func activate(_ challenge: Outpost_Api_V1_CredentialChallenge, _ attestor: any DeviceAttestor) throws(FleetError) {
        var answer = Outpost_Api_V1_CredentialAnswer()
        answer.secret = Data(try attestor.activateCredential(credentialBlob: Array(challenge.credentialBlob),
                                                             encryptedSecret: Array(challenge.encryptedSecret)))
        let reply = try link.call(APIPath.attestActivate, body: try encode(answer), tls: deviceTLS)
        guard reply.status == 200 else {
            throw .status(endpoint: APIPath.attestActivate, code: reply.status, detail: Self.textDetail(reply.body))
        }
        note("attestation key bound to the TPM's endorsement key")
    }

    /// One attestation: nonce, quote, result. Transport failures and a lapsed nonce throw (the
    /// round backs off and tries again); a verdict, or a TPM that cannot quote, ends it for this boot.
    func attest() throws(FleetError) {
        guard let attestor else { return }
        var reply = try link.call(APIPath.attestNonce, tls: deviceTLS)
        if reply.status == 409 {
            // The controller holds no bound key for this device (registered before it had
            // one, or the binding was lost): register again, which sends the keys.
            try register()
            reply = try link.call(APIPath.attestNonce, tls: deviceTLS)
        }
        guard reply.status == 200 else {
            if reply.status == 503 { throw .status(endpoint: APIPath.attestNonce, code: 503, detail: "upgrading") }
            if reply.status == 409 {
                // Still no bound key after registering again: this boot stays unattested.
                finishAttestation("not attested: \(Self.textDetail(reply.body))", token: [])
                return
            }
            if reply.status == 404 || reply.status == 405 {
                // A controller without the attestation API: run unattested rather than never poll config.
                finishAttestation("not attested: the controller has no attestation API (HTTP \(reply.status))", token: [])
                return
            }
            try refusedCall(APIPath.attestNonce, reply)
        }
        let challenge: Outpost_Api_V1_AttestationChallenge = try decode(reply.body, what: "attestation challenge")
        guard (1...64).contains(challenge.nonce.count) else {
            throw .malformed(what: "attestation challenge", detail: "a nonce of \(challenge.nonce.count) bytes")
        }
        let pcrs = challenge.pcrs.isEmpty ? [0, 4, 7, 8, 9] : challenge.pcrs.map { Int($0) }
        let evidence: AttestationEvidence
        do { evidence = try attestor.quote(nonce: Array(challenge.nonce), pcrs: pcrs) } catch {
            finishAttestation("error: the TPM cannot quote: \(error)", token: [])
            return
        }
        var quote = Outpost_Api_V1_AttestationQuote()
        quote.attest = Data(evidence.attest)
        quote.signatureR = Data(evidence.signatureR)
        quote.signatureS = Data(evidence.signatureS)
        for (index, value) in evidence.pcrs { quote.pcrs[UInt32(index)] = Data(value) }
        if let log = attestor.eventLog(), let gz = try? Gzip.compress(log), gz.count <= 512 << 10 { quote.eventLog = Data(gz) }
        let info = dependencies.state.deviceInfo()
        quote.slot = info.slots.first(where: \.booted)?.label ?? ""
        quote.board = info.identity.board
        quote.osVersion = configuration.osVersion
        let answer = try link.call(APIPath.attestQuote, body: try encode(quote), tls: deviceTLS)
        guard answer.status == 200 else {
            if answer.status == 503 { throw .status(endpoint: APIPath.attestQuote, code: 503, detail: "upgrading") }
            try refusedCall(APIPath.attestQuote, answer)
        }
        let result: Outpost_Api_V1_AttestationResult = try decode(answer.body, what: "attestation result")
        finishAttestation(result.passed ? "passed" : result.reason, token: result.passed ? Array(result.token) : [])
    }

    /// Records this boot's outcome, says it on the console in one line, and polls config
    /// now (with the token, or to learn that secrets are withheld).
    private func finishAttestation(_ line: String, token: [UInt8]) {
        loop.withLock { s in
            s.attested = true
            s.attestationToken = token
            s.attestation = line
            s.infoDirty = true
            s.nextConfig = MonotonicClock.now()
        }
        let text = "attestation: " + line
        if let console = dependencies.console { console(text) } else { note(text, severity: line == "passed" ? .info : .warning) }
    }

    /// A refusal: 403 forgets the registration (as every call does), anything else is one line.
    private func refusedCall(_ endpoint: String, _ answer: ControllerLink.Answer) throws(FleetError) -> Never {
        if answer.status == 403 {
            try files.forgetRegistration()
            loop.withLock { $0.deviceID = nil }
        }
        throw .status(endpoint: endpoint, code: answer.status, detail: Self.textDetail(answer.body))
    }
}
