// A new swtpm made the way a TPM maker ships a part: endorsement keys and their EK
// certificates in NV, issued by a local CA (swtpm-localca) that plays the maker, so a
// controller configured with that CA's root (`outpost-controller ek-ca add`) verifies the
// device's EK certificate as it would a real TPM's.
//
//   swtpm_setup --create-ek-cert --create-platform-cert   RSA 2048 EK cert at 0x01C00002,
//                                                         ECC P-384 EK cert at 0x01C00016,
//                                                         platform cert at 0x01C08000
//   swtpm (TCP, briefly) + tpm2_createek -G ecc           the P-256 EK (template L-2) the device uses
//   swtpm_localca --ek x=…,y=…,id=secp256r1               its certificate, from the same CA
//   tpm2_nvdefine/nvwrite/nvwritelock -C p 0x01C0000A     stored where the device reads it
//
// swtpm_setup 0.7 certifies no P-256 EK, hence the second half.

#if canImport(Glibc)
import Glibc
#endif
import Foundation
import OutpostProcess

/// Manufactures swtpm state with EK certificates from a local CA kept in `caDirectory`.
public struct TPMManufacture: Sendable {
    /// swtpm-localca's state: its root and the intermediate that signs EK certificates,
    /// made at the first manufacture and reused by every later one.
    public let caDirectory: String

    public init(caDirectory: String) { self.caDirectory = caDirectory }

    /// The self-signed root, and the intermediate that signs EK certificates: what a controller's
    /// `ek-ca add` takes.
    public var rootCertificate: String { caDirectory + "/swtpm-localca-rootca-cert.pem" }
    public var issuerCertificate: String { caDirectory + "/issuercert.pem" }
    /// The TCG EK Credential Profile's index for the ECC P-256 EK's certificate.
    public static let p256EKCertificateIndex = "0x01c0000a"

    /// Whether `stateDirectory` holds no TPM yet (swtpm writes tpm2-00.permall).
    public static func isFresh(_ stateDirectory: String) -> Bool {
        !FileManager.default.fileExists(atPath: stateDirectory + "/tpm2-00.permall")
    }

    /// Makes the TPM in `stateDirectory` (which must hold none) with its EK certificates.
    public func manufacture(stateDirectory: String) throws {
        let fm = FileManager.default
        for (directory, what) in [(caDirectory, "EK CA"), (stateDirectory, "TPM state")] {
            do { try fm.createDirectory(atPath: directory, withIntermediateDirectories: true) } catch {
                throw QEMUError.io(path: directory, message: "cannot create the \(what) directory: \(error.localizedDescription)")
            }
        }
        try Self.step(try setupCommand(stateDirectory: stateDirectory))
        guard let port = LoopbackPort.freePair() else { throw QEMUError.swtpm("no free pair of loopback ports") }
        let swtpm = Background(["swtpm", "socket", "--tpm2", "--tpmstate", "dir=\(stateDirectory)",
                                "--server", "type=tcp,port=\(port),bindaddr=127.0.0.1",
                                "--ctrl", "type=tcp,port=\(port + 1),bindaddr=127.0.0.1",
                                "--flags", "not-need-init,startup-clear"]) { _ in }
        defer { swtpm.stop() }
        let deadline = Date().addingTimeInterval(10)
        while !LoopbackPort.accepts(port) {
            if let failure = swtpm.failure { throw failure }
            guard Date() < deadline else { throw QEMUError.swtpm("no TPM on port \(port) within 10 s") }
            usleep(20_000)
        }
        try installP256Certificate(tcti: "swtpm:host=127.0.0.1,port=\(port)", work: stateDirectory + "/.ekcert", run: Self.step)
    }

    /// swtpm_setup's command line for a new TPM in `stateDirectory` with EK and platform
    /// certificates from this CA (its config files are written first). Run it with any runner.
    public func setupCommand(stateDirectory: String) throws -> [String] {
        ["swtpm_setup", "--tpm2", "--tpmstate", stateDirectory, "--create-ek-cert", "--create-platform-cert",
         "--config", try writeConfigs(), "--not-overwrite"]
    }

    var localCAConfig: String { caDirectory + "/swtpm-localca.conf" }

    /// swtpm_setup.conf and swtpm-localca.conf pointing at `caDirectory` instead of
    /// /var/lib/swtpm-localca, so a user who is not root can keep a CA too.
    func writeConfigs() throws -> String {
        let ca = "statedir = \(caDirectory)\nsigningkey = \(caDirectory)/signkey.pem\n"
            + "issuercert = \(issuerCertificate)\ncertserial = \(caDirectory)/certserial\n"
        let setup = "create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = \(localCAConfig)\n"
            + "create_certs_tool_options = /etc/swtpm-localca.options\nactive_pcr_banks = sha256\n"
        let setupPath = caDirectory + "/swtpm_setup.conf"
        for (path, text) in [(localCAConfig, ca), (setupPath, setup)] {
            do { try text.write(toFile: path, atomically: true, encoding: .utf8) } catch {
                throw QEMUError.io(path: path, message: "cannot write: \(error.localizedDescription)")
            }
        }
        return setupPath
    }

    /// Certifies the P-256 EK of the running TPM at `tcti` with the same CA and stores the DER
    /// at 0x01C0000A, defined by the platform hierarchy with the attributes swtpm_setup gives
    /// its own certificate indices. `run` runs one command and throws when it fails (the
    /// host's HostProcess here; the test support's own runner in its processes).
    public func installP256Certificate(tcti: String, work: String, run step: ([String]) throws -> Void) throws {
        try? FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: work) }
        try step(["tpm2_createek", "-T", tcti, "-G", "ecc", "-c", work + "/ek.ctx", "-u", work + "/ek.der", "-f", "der"])
        try step(["tpm2_flushcontext", "-T", tcti, "-t"])
        guard let der = FileManager.default.contents(atPath: work + "/ek.der"), der.count >= 64 else {
            throw QEMUError.swtpm("tpm2_createek wrote no P-256 public key")
        }
        // A P-256 SubjectPublicKeyInfo ends with the uncompressed point's x and y.
        let point = Array(der.suffix(64))
        let x = point.prefix(32).map { String(format: "%02x", $0) }.joined()
        let y = point.suffix(32).map { String(format: "%02x", $0) }.joined()
        try step(["swtpm_localca", "--type", "ek", "--ek", "x=\(x),y=\(y),id=secp256r1", "--dir", work,
                  "--tpm-spec-family", "2.0", "--tpm-spec-level", "0", "--tpm-spec-revision", "164",
                  "--tpm-manufacturer", "id:00001014", "--tpm-model", "swtpm", "--tpm-version", "id:20191023", "--tpm2",
                  "--configfile", localCAConfig, "--optsfile", "/etc/swtpm-localca.options"])
        let cert = work + "/ek.cert"
        guard let size = FileManager.default.contents(atPath: cert)?.count, size > 0 else {
            throw QEMUError.swtpm("swtpm_localca wrote no certificate")
        }
        let index = Self.p256EKCertificateIndex
        try step(["tpm2_nvdefine", "-T", tcti, index, "-C", "p", "-s", String(size),
                  "-a", "ppwrite|writedefine|ppread|ownerread|authread|no_da|platformcreate"])
        try step(["tpm2_nvwrite", "-T", tcti, index, "-C", "p", "-i", cert])
        try step(["tpm2_nvwritelock", "-T", tcti, index, "-C", "p"])
    }

    private static func step(_ argv: [String]) throws {
        do { try HostProcess.output(argv) } catch { throw QEMUError.swtpm("making the TPM: \(error)") }
    }
}
