// ECDSA P-256 / SHA-256 with the nonce of RFC 6979 (section 3.2), so the same
// key and message always give the same signature. swift-crypto's signer draws
// a random nonce; a factory image carries signed vault approvals on CONFIG and
// must stay bit-identical for identical inputs, so the builder signs these.
//
//   h1 = SHA-256(m), z = h1 mod n, x = private scalar (32 bytes BE)
//   V = 01³², K = 00³²
//   K = HMAC_K(V ‖ 00 ‖ x ‖ z), V = HMAC_K(V), K = HMAC_K(V ‖ 01 ‖ x ‖ z), V = HMAC_K(V)
//   repeat: V = HMAC_K(V); k = V; accept 1 ≤ k < n; else K = HMAC_K(V ‖ 00), V = HMAC_K(V)
//   r = x(k·G) mod n (k·G through swift-crypto), s = k⁻¹(z + r·x) mod n
//
// The modular arithmetic below is plain and not constant-time: it runs on the
// build host over a release key, never on a device.

import Crypto

public enum DeterministicECDSA {
    /// The order of the P-256 group.
    static let n = Scalar(hex: "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551")

    /// Signs SHA-256(`message`) with `key`; r ‖ s, 32 bytes each.
    public static func sign(_ message: [UInt8], key: P256.Signing.PrivateKey) -> [UInt8] {
        let h1 = Array(SHA256.hash(data: message))
        let x = Array(key.rawRepresentation)
        let d = Scalar(bytes: x)
        let z = Scalar(bytes: h1).reduced(n)
        var v = [UInt8](repeating: 1, count: 32)
        var k = SymmetricKey(data: [UInt8](repeating: 0, count: 32))
        func mac(_ data: [UInt8]) -> [UInt8] { Array(HMAC<SHA256>.authenticationCode(for: data, using: k)) }
        k = SymmetricKey(data: mac(v + [0] + x + z.bytes))
        v = mac(v)
        k = SymmetricKey(data: mac(v + [1] + x + z.bytes))
        v = mac(v)
        while true {
            v = mac(v)
            let nonce = Scalar(bytes: v)
            if !nonce.isZero, nonce < n, let point = try? P256.KeyAgreement.PrivateKey(rawRepresentation: v).publicKey {
                // x963: 04 ‖ X ‖ Y.
                let r = Scalar(bytes: Array(point.x963Representation.dropFirst().prefix(32))).reduced(n)
                let s = nonce.inverse(n).times(z.plus(r.times(d, n), n), n)
                if !r.isZero, !s.isZero { return r.bytes + s.bytes }
            }
            k = SymmetricKey(data: mac(v + [0]))
            v = mac(v)
        }
    }
}

/// A 256-bit unsigned integer, four little-endian 64-bit limbs, with the
/// arithmetic modulo an odd modulus above 2²⁵⁵ that ECDSA needs.
struct Scalar: Comparable {
    var limbs: [UInt64]

    init(limbs: [UInt64]) { self.limbs = limbs }

    /// From 32 big-endian bytes.
    init(bytes: [UInt8]) {
        var l = [UInt64](repeating: 0, count: 4)
        for (i, b) in bytes.suffix(32).reversed().enumerated() { l[i / 8] |= UInt64(b) << (UInt64(i % 8) * 8) }
        limbs = l
    }

    init(hex s: String) { self.init(bytes: OutpostBundle.bytes(fromHex: s) ?? []) }

    /// 32 big-endian bytes.
    var bytes: [UInt8] {
        (0..<32).map { i in UInt8(truncatingIfNeeded: limbs[(31 - i) / 8] >> (UInt64((31 - i) % 8) * 8)) }
    }

    var isZero: Bool { limbs.allSatisfy { $0 == 0 } }

    static func < (a: Scalar, b: Scalar) -> Bool {
        for i in (0..<4).reversed() where a.limbs[i] != b.limbs[i] { return a.limbs[i] < b.limbs[i] }
        return false
    }

    /// self − other, ignoring the final borrow (callers ensure self ≥ other, or wrap on purpose).
    func minus(_ other: Scalar) -> Scalar {
        var out = [UInt64](repeating: 0, count: 4)
        var borrow: UInt64 = 0
        for i in 0..<4 {
            let (a, o1) = limbs[i].subtractingReportingOverflow(other.limbs[i])
            let (b, o2) = a.subtractingReportingOverflow(borrow)
            out[i] = b
            borrow = (o1 || o2) ? 1 : 0
        }
        return Scalar(limbs: out)
    }

    /// self mod m, for any 256-bit self and m > 2²⁵⁵ (one subtraction suffices).
    func reduced(_ m: Scalar) -> Scalar { self < m ? self : minus(m) }

    /// (self + other) mod m, both below m.
    func plus(_ other: Scalar, _ m: Scalar) -> Scalar {
        var out = [UInt64](repeating: 0, count: 4)
        var carry: UInt64 = 0
        for i in 0..<4 {
            let (a, o1) = limbs[i].addingReportingOverflow(other.limbs[i])
            let (b, o2) = a.addingReportingOverflow(carry)
            out[i] = b
            carry = (o1 || o2) ? 1 : 0
        }
        let sum = Scalar(limbs: out)
        // A carry out means the true sum is 2²⁵⁶ + sum ≥ m; the wrapping subtraction gives the right value.
        return (carry == 1 || !(sum < m)) ? sum.minus(m) : sum
    }

    /// (self · other) mod m, both below m, by doubling and adding from the top bit.
    func times(_ other: Scalar, _ m: Scalar) -> Scalar {
        var acc = Scalar(limbs: [0, 0, 0, 0])
        for i in (0..<256).reversed() {
            acc = acc.plus(acc, m)
            if other.limbs[i / 64] >> UInt64(i % 64) & 1 == 1 { acc = acc.plus(self, m) }
        }
        return acc
    }

    /// self⁻¹ mod m for a prime m (Fermat: self^(m−2)).
    func inverse(_ m: Scalar) -> Scalar {
        let e = m.minus(Scalar(limbs: [2, 0, 0, 0]))
        var result = Scalar(limbs: [1, 0, 0, 0])
        for i in (0..<256).reversed() {
            result = result.times(result, m)
            if e.limbs[i / 64] >> UInt64(i % 64) & 1 == 1 { result = result.times(self, m) }
        }
        return result
    }
}
