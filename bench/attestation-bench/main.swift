// Quotes verified per second on one core, against a bare ECDSA P-256 verify
// measured in the same run. The quote is built exactly as a TPM marshals one
// (TPMS_ATTEST over PCRs 0, 4, 7, 8, 9; the AK as a TPM2B_PUBLIC) and signed
// with a software P-256 key: the verifier cannot tell, and its cost is the
// same. Used by bench/attestation-verify.sh.
//
//   attestation-bench [SECONDS]      (default 3 per measurement)

import Crypto
import OutpostAttestation

#if canImport(Glibc)
import Glibc
#endif

/// One line on stderr, exit 1. write(2) rather than fputs: stderr is a global var Swift 6 will not share.
func fail(_ line: String) -> Never {
    let bytes = Array(("attestation-bench: " + line + "\n").utf8)
    _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    exit(1)
}

func be16(_ v: Int) -> [UInt8] { [UInt8(truncatingIfNeeded: v >> 8), UInt8(truncatingIfNeeded: v)] }
func be32(_ v: Int) -> [UInt8] { be16(v >> 16) + be16(v) }

func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// Runs `body` in batches until `seconds` pass; calls per second.
func rate(_ seconds: Double, _ body: () -> Bool) -> Double {
    var count = 0
    let start = now()
    var elapsed = 0.0
    repeat {
        for _ in 0..<64 {
            guard body() else { fail("a verification failed") }
        }
        count += 64
        elapsed = now() - start
    } while elapsed < seconds
    return Double(count) / elapsed
}

let seconds = CommandLine.arguments.count > 1 ? Double(CommandLine.arguments[1]) ?? 3 : 3
let key = P256.Signing.PrivateKey()
let point = Array(key.publicKey.x963Representation.dropFirst())
var area: [UInt8] = be16(0x0023) + be16(0x000B) + be32(0x0005_0072) + be16(0)
area += be16(0x0010) + be16(0x0018) + be16(0x000B) + be16(3) + be16(0x0010)
area += be16(32) + point.prefix(32) + be16(32) + point.suffix(32)
let akPublic = be16(area.count) + area

func random(_ n: Int) -> [UInt8] { (0..<n).map { _ in UInt8.random(in: 0...255) } }
let nonce = random(32)
var pcrs: [Int: [UInt8]] = [:]
for index in [0, 4, 7, 8, 9] { pcrs[index] = random(32) }
let digest = Array(SHA256.hash(data: pcrs.keys.sorted().flatMap { pcrs[$0] ?? [] }))
var attest = be32(0xFF54_4347) + be16(0x8018) + be16(34) + [0x00, 0x0B] + random(32)
attest += be16(nonce.count) + nonce + random(8) + be32(1) + be32(0) + [1] + random(8)
attest += be32(1) + be16(0x000B) + [3, 0x91, 0x03, 0x00] + be16(32) + digest

do {
    let signature = try key.signature(for: attest)
    let raw = Array(signature.rawRepresentation)
    let evidence = QuoteEvidence(attest: attest, signatureR: Array(raw.prefix(32)), signatureS: Array(raw.suffix(32)), pcrs: pcrs)
    let verifier = try QuoteVerifier(attestationKeyPublic: akPublic)
    let expected = [0: pcrs[0] ?? [], 4: pcrs[4] ?? [], 7: pcrs[7] ?? [], 8: pcrs[8] ?? [], 9: pcrs[9] ?? []]
    guard try verifier.verify(evidence, nonce: nonce, expected: expected).passed else {
        fail("the built quote does not verify")
    }
    let publicKey = key.publicKey
    let baseline = rate(seconds) { publicKey.isValidSignature(signature, for: attest) }
    let quotes = rate(seconds) { (try? verifier.verify(evidence, nonce: nonce, expected: expected).passed) == true }
    let withKey = rate(seconds) {
        guard let v = try? QuoteVerifier(attestationKeyPublic: akPublic) else { return false }
        return (try? v.verify(evidence, nonce: nonce, expected: expected).passed) == true
    }
    print("bare ECDSA P-256 verify:             \(Int(baseline.rounded())) /s")
    print("quote verify (AK parsed once):       \(Int(quotes.rounded())) /s  (\(Int((quotes / baseline * 100).rounded())) % of bare)")
    print("quote verify (AK parsed per quote):  \(Int(withKey.rounded())) /s  (\(Int((withKey / baseline * 100).rounded())) % of bare)")
} catch {
    fail("\(error)")
}
