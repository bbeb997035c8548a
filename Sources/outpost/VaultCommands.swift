import ArgumentParser
import Foundation
import OutpostBundle

// `outpost vault show`: the vault's approved policies in a vault.json (from a
// factory image's CONFIG) or a bundle's manifest, and whether each signature
// verifies, so an operator can tell a vault that will unlock from one that
// will not before any device tries.

struct VaultCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vault", abstract: "Inspect the vault's signed approved policies (docs/vault.md).",
        subcommands: [VaultShow.self])
}

struct VaultShow: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show", abstract: "Print each slot's approved policy and whether its signature verifies.",
        discussion: """
            FILE is a vault.json (as written onto CONFIG by 'outpost image build --vault-key') or an \
            update bundle (its manifest's vault approvals; the bundle's own signature is not checked \
            here, 'outpost bundle verify' does that). Every approved policy is recomputed from the \
            slot's PCR 8/9 and the security version. With --trust, each signature must verify with an \
            unrevoked trust anchor; without it, with the key the file names. Exit 0 when every slot \
            verifies, 1 otherwise.
            """)

    @Argument(help: "A vault.json or an update bundle.") var file: String
    @Option(help: "Trust directory (*.pem public keys, optional revoked.txt).") var trust: String?
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        let approvals = try Self.load(file)
        let store = try trust.map { path throws(BundleError) in try TrustStore.load(directory: path) }
        let report = VaultReport(approvals, trust: store, source: file)
        if json {
            print(try encodeJSON(report))
        } else {
            print("\(file): version \(approvals.osVersion), security version \(approvals.securityVersion), floor index \(hexHandle(approvals.floorHandle))")
            for line in report.lines { print(line) }
        }
        guard report.ok else { throw ExitCode.failure }
    }

    /// A vault.json starts with `{`; anything else is read as a bundle.
    static func load(_ path: String) throws -> VaultApprovals {
        let source = try FilePayloadSource(path: path)
        if source.size > 0, try source.read(offset: 0, count: 1) == [UInt8(ascii: "{")] {
            return try VaultApprovals.load(path: path)
        }
        let manifest = try BundleManifest.decode(try BundlePrologue.read(from: source).manifestBytes)
        guard var vault = manifest.vault else {
            throw BundleError.manifestInvalid(field: "vault", reason: "\(path) carries no vault approvals (made before the vault, or without --measurements)")
        }
        vault.source = path
        return vault
    }
}

/// What `vault show --json` prints, and what `bundle verify` summarises.
struct VaultReport: Encodable {
    struct Slot: Encodable {
        var slot: String
        var pcr8: String
        var pcr9: String
        var approvedPolicy: String
        var signatureVerifies: Bool
        var error: String?
    }

    var source: String
    var osVersion: String
    var securityVersion: UInt64
    var floorHandle: UInt32
    var keyID: String
    /// Whether the key is an unrevoked trust anchor; nil when no trust store was given.
    var keyTrusted: Bool?
    var keyError: String?
    var slots: [Slot]
    var ok: Bool

    init(_ v: VaultApprovals, trust: TrustStore?, source: String) {
        self.source = source
        osVersion = v.osVersion
        securityVersion = v.securityVersion
        floorHandle = v.floorHandle
        keyID = v.keyID
        do {
            _ = try v.releaseKey()
            if let trust {
                do {
                    try v.check(trust: trust)
                    keyTrusted = true
                } catch {
                    // Only the key's standing is decided here; the slots below say which signature failed.
                    if case let .vaultInvalid(_, field, _) = error, field == "publicKey" {
                        keyTrusted = false
                        keyError = "\(error)"
                    } else {
                        keyTrusted = true
                    }
                }
            }
        } catch {
            keyError = "\(error)"
        }
        slots = v.slots.keys.sorted().map { name in
            let s = v.slots[name]
            do {
                let (approved, _) = try v.approval(forSlot: name)
                let verifies = try v.signatureVerifies(forSlot: name)
                return Slot(slot: name, pcr8: s?.pcr8 ?? "", pcr9: s?.pcr9 ?? "", approvedPolicy: approved.policy.description,
                            signatureVerifies: verifies, error: verifies ? nil : "signature does not verify with key \(v.keyID)")
            } catch {
                return Slot(slot: name, pcr8: s?.pcr8 ?? "", pcr9: s?.pcr9 ?? "", approvedPolicy: s?.approvedPolicy ?? "",
                            signatureVerifies: false, error: "\(error)")
            }
        }
        ok = keyError == nil && keyTrusted != false && slots.allSatisfy(\.signatureVerifies)
    }

    /// One line per slot, then the key's standing.
    var lines: [String] {
        var out = slots.map { s in
            "vault \(s.slot): approved policy \(s.approvedPolicy), signature " + (s.signatureVerifies ? "verifies" : "REFUSED: \(s.error ?? "")")
        }
        switch keyTrusted {
        case true?: out.append("vault key \(keyID): trust anchor")
        case false?: out.append("vault key \(keyID): NOT TRUSTED: \(keyError ?? "")")
        case nil: out.append("vault key \(keyID): " + (keyError ?? "not checked against a trust store (use --trust)"))
        }
        return out
    }
}

/// The lines `bundle verify` prints for a manifest's approvals.
func vaultLines(_ vault: VaultApprovals, trust: TrustStore) throws -> [String] {
    VaultReport(vault, trust: trust, source: vault.source).lines
}

/// A TPM handle as 0x and eight hex digits, as tpm2-tools prints it.
func hexHandle(_ handle: UInt32) -> String {
    let digits = String(handle, radix: 16)
    return "0x" + String(repeating: "0", count: max(0, 8 - digits.count)) + digits
}
