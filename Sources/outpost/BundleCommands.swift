import ArgumentParser
import Foundation
import OutpostBuilder
import OutpostBundle

// `outpost keys ...` and `outpost bundle ...`: signing keys and update
// bundles. Verification is the same library code the device runs.

struct KeysCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keys", abstract: "Create and inspect bundle signing keys (ECDSA P-256).",
        subcommands: [KeysGenerate.self, KeysID.self])
}

struct KeysGenerate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate", abstract: "Create a signing key pair and print its key ID.",
        discussion: """
            Writes DIR/NAME.key.pem (PKCS#8 private key, mode 0600) and DIR/NAME.pub.pem (the public \
            key: copy it into the trust directory baked into images). The key ID is the first 16 hex \
            digits of SHA-256 over the public key's DER. An existing key is never overwritten.
            """)

    @Option(help: "Directory to write the key pair into (created if missing).") var out: String
    @Option(help: "File name stem.") var name = "outpost"
    @Flag(help: "Print JSON: {keyID, privateKey, publicKey}.") var json = false

    func run() throws {
        let fm = FileManager.default
        try fm.createDirectory(atPath: out, withIntermediateDirectories: true)
        let priv = "\(out)/\(name).key.pem", pub = "\(out)/\(name).pub.pem"
        for p in [priv, pub] where fm.fileExists(atPath: p) {
            throw BundleError.key(path: p, reason: "already exists; not overwriting a key")
        }
        let key = SigningKey.generate()
        // Created 0600 from the start: the private key is never world-readable, not even briefly.
        guard fm.createFile(atPath: priv, contents: Data(key.privatePEM.utf8), attributes: [.posixPermissions: 0o600]),
              fm.createFile(atPath: pub, contents: Data(key.publicPEM.utf8), attributes: [.posixPermissions: 0o644]) else {
            throw BundleError.key(path: out, reason: "cannot write the key files")
        }
        if json {
            print(#"{"keyID":"\#(key.keyID)","privateKey":"\#(priv)","publicKey":"\#(pub)"}"#)
        } else {
            print("key ID:      \(key.keyID)")
            print("private key: \(priv)")
            print("public key:  \(pub)")
        }
    }
}

struct KeysID: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "id", abstract: "Print the key ID of a PEM key (public or private), e.g. for revoked.txt.")

    @Argument(help: "A .pub.pem or .key.pem file.") var key: String

    func run() throws {
        guard let text = try? String(contentsOfFile: key, encoding: .utf8) else {
            throw BundleError.key(path: key, reason: "cannot read the file")
        }
        if text.contains("PRIVATE KEY-----") {
            print(try SigningKey.load(path: key).keyID)
        } else {
            print(try KeyID(publicKeyFile: key))
        }
    }
}

struct BundleCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bundle", abstract: "Create and verify signed update bundles.",
        subcommands: [BundleCreate.self, BundleVerify.self, BundleInstall.self])
}

struct BundleCreate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create", abstract: "Sign a slot image into an update bundle.",
        discussion: """
            The manifest records the OS and security version, board and arch, the payload's size and \
            SHA-256, the dm-verity parameters (from the slot manifest) and the predicted PCR 8/9 per \
            slot (from --measurements). Each --key adds one signature; sign with the old and the new \
            key while rotating. With --measurements, the manifest also carries the vault's approved \
            policies for those slots, signed by --vault-key (default: the first --key; docs/vault.md). \
            The bundle is written under a temporary name and renamed when complete.
            """)

    @Option(name: .customLong("key"), help: "Private key (PEM); repeat to add signatures.") var keys: [String]
    @Option(help: "The slot image (the payload).") var slot = "out/slot.img"
    @Option(help: "The slot manifest (default: the slot image's .json).") var manifest: String?
    @Option(help: "Predicted PCRs (out/measurements.json) to carry in the manifest.") var measurements: String?
    @Option(help: "OS version; must match the slot manifest's (default: taken from it).") var imageVersion: String?
    @Option(help: "Security version (anti-rollback): devices refuse bundles below their committed floor.")
    var securityVersion: UInt64 = 1
    @Option(help: "The release key (PEM) that signs the vault's approved policies (default: the first --key).")
    var vaultKey: String?
    @Option(help: "Compatible board.") var board = "generic-efi"
    @Option(help: "Compatible CPU architecture.") var arch = "x86_64"
    @Option(name: .shortAndLong, help: "The bundle to write.") var output = "out/update.bundle"
    @Flag(name: .shortAndLong, help: "No progress lines.") var quiet = false

    func run() throws {
        let progress = OutpostBuilder.Progress(enabled: !quiet)
        let signers = try keys.map { path throws(BundleError) in try SigningKey.load(path: path) }
        let manifestPath = manifest ?? (slot.hasSuffix(".img") ? String(slot.dropLast(4)) : slot) + ".json"
        let sm: SlotManifest = try decodeJSON(manifestPath, what: "slot manifest")
        if let imageVersion, imageVersion != sm.version {
            throw BuilderError.invalidInput(path: manifestPath, message: "the slot image is version \(sm.version), --image-version says \(imageVersion)")
        }
        var pcrs: [String: BundleManifest.SlotPCRs] = [:]
        if let measurements {
            let mf: MeasurementsFile = try decodeJSON(measurements, what: "measurements")
            guard mf.rootHash == sm.rootHash else {
                throw BuilderError.invalidInput(path: measurements, message: "root hash \(mf.rootHash) is not the slot's \(sm.rootHash)")
            }
            for (name, s) in mf.slots { pcrs[name] = .init(pcr8: s.pcr8.lowercased(), pcr9: s.pcr9.lowercased()) }
        }
        let payload = try FilePayloadSource(path: slot)
        progress.step(1, of: 2, "hashing \(slot) (\(payload.size >> 20) MiB)")
        let digest = try hashAll(payload, progress: progress)
        guard payload.size == sm.size, digest == sm.sha256 else {
            throw BuilderError.invalidInput(path: manifestPath, message: "describes a different image than \(slot) (size/sha256 differ)")
        }
        var vault: VaultApprovals?
        if vaultKey != nil, pcrs.isEmpty { throw ValidationError("--vault-key needs --measurements (the PCRs it approves)") }
        if !pcrs.isEmpty {
            guard let releaseKey = try vaultKey.map({ path throws(BundleError) in try SigningKey.load(path: path) }) ?? signers.first else {
                throw ValidationError("--key is required")
            }
            vault = try VaultApprovals.sign(pcrs: pcrs, securityVersion: securityVersion, osVersion: sm.version, key: releaseKey)
        }
        let m = BundleManifest(
            osVersion: sm.version, securityVersion: securityVersion, board: board, arch: arch,
            payloadSize: payload.size, payloadSHA256: digest,
            verity: .init(rootHash: sm.rootHash, salt: sm.salt, rootOffset: sm.rootOffset,
                          rootDataBlocks: sm.rootDataBlocks, hashOffset: sm.hashOffset),
            pcrs: pcrs, vault: vault)
        let prologue = try BundleWriter.prologue(manifest: m, keys: signers)
        progress.step(2, of: 2, "writing \(output)")
        try writeBundle(prologue: prologue, payload: payload, progress: progress)
        if !quiet {
            print("bundle:   \(output) (\(m.osVersion), security version \(m.securityVersion), \(board)/\(arch))")
            print("signed by: \(signers.map { $0.keyID.description }.joined(separator: ", "))")
            if let vault { print("vault:    approved policies for \(vault.slots.keys.sorted().joined(separator: ", ")) by key \(vault.keyID)") }
        }
    }

    private func writeBundle(prologue: [UInt8], payload: FilePayloadSource, progress: OutpostBuilder.Progress) throws {
        try AtomicOutput.produce(output) { partial, _ in
            guard FileManager.default.createFile(atPath: partial, contents: Data(prologue)),
                  let h = FileHandle(forWritingAtPath: partial) else {
                throw BundleError.system(.current("create", partial))
            }
            defer { try? h.close() }
            try h.seekToEnd()
            var off: UInt64 = 0
            while off < payload.size {
                let n = Int(min(1 << 20, payload.size - off))
                try h.write(contentsOf: try payload.read(offset: off, count: n))
                off += UInt64(n)
                progress.percent("payload", done: off, total: payload.size)
            }
        }
    }
}

struct BundleVerify: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify", abstract: "Check a bundle as a device would: signature, key, revocation, floor, board, digest.",
        discussion: """
            TRUST is a directory of public keys (*.pem; private keys there are ignored) and an optional \
            revoked.txt (one key ID per line). Exit 0 with a summary, or 1 with one line naming what failed.
            """)

    @Option(help: "Trust directory.") var trust: String
    @Argument(help: "The bundle file.") var bundle: String
    @Option(help: "Refuse security versions below this (the device's floor).") var floor: UInt64 = 0
    @Option(help: "Require this board.") var board: String?
    @Option(help: "Require this arch.") var arch: String?
    @Option(help: "Require the payload to fit a slot of this many bytes.") var slotSize: UInt64?
    @Flag(help: "Print JSON.") var json = false
    @Flag(name: .shortAndLong, help: "No progress lines.") var quiet = false

    func run() throws {
        do {
            let store = try TrustStore.load(directory: trust)
            let source = try FilePayloadSource(path: bundle)
            let v = try BundleVerifier.verify(source, trust: store, policy: BundlePolicy(
                deviceFloor: floor, board: board, arch: arch, slotSize: slotSize))
            let progress = OutpostBuilder.Progress(enabled: !quiet && !json)
            try BundleVerifier.verifyPayload(source, v) { progress.percent("payload sha256", done: $0, total: $1) }
            let m = v.manifest
            if json {
                let summary = VerifySummary(ok: true, error: nil, signedBy: v.signedBy.description,
                                            signatures: v.prologue.signatures.map { $0.keyID.description }, manifest: m)
                print(try encodeJSON(summary))
            } else {
                print("OK \(bundle): version \(m.osVersion), security version \(m.securityVersion), \(m.board)/\(m.arch)")
                print("payload \(m.payloadSize) bytes, sha256 \(m.payloadSHA256)")
                print("verity root hash \(m.verity.rootHash); PCRs for \(m.pcrs.keys.sorted().joined(separator: ", "))")
                print("signed by key \(v.signedBy)")
                if let vault = m.vault {
                    // The verifier has already checked every approval against the trust store.
                    for line in try vaultLines(vault, trust: store) { print(line) }
                } else {
                    print("vault: no approved policies (bundle made before the vault)")
                }
            }
        } catch {
            if json { print(try encodeJSON(VerifySummary(ok: false, error: "\(error)", signedBy: nil, signatures: nil, manifest: nil))) }
            throw error
        }
    }
}

struct VerifySummary: Encodable {
    var ok: Bool
    var error: String?
    var signedBy: String?
    var signatures: [String]?
    var manifest: BundleManifest?
}

func encodeJSON<T: Encodable>(_ value: T) throws -> String {
    let enc = JSONEncoder()
    enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    return String(decoding: try enc.encode(value), as: UTF8.self)
}

func decodeJSON<T: Decodable>(_ path: String, what: String) throws -> T {
    guard let data = FileManager.default.contents(atPath: path) else { throw BuilderError.missingInput(path: path, what: what) }
    do { return try JSONDecoder().decode(T.self, from: data) } catch {
        throw BuilderError.invalidInput(path: path, message: "not a \(what): \(error)")
    }
}

/// SHA-256 of a whole source, as lower-case hex, with progress.
func hashAll(_ source: PayloadSource, progress: OutpostBuilder.Progress) throws -> String {
    var h = PayloadHasher()
    var off: UInt64 = 0
    while off < source.size {
        let n = Int(min(1 << 20, source.size - off))
        h.update(try source.read(offset: off, count: n))
        off += UInt64(n)
        progress.percent("sha256", done: off, total: source.size)
    }
    return h.hexDigest
}
