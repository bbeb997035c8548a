import Foundation
import OutpostProcess

/// One swtpm on loopback TCP (command port P, control port P+1, as tss2's
/// swtpm TCTI expects), its state in `stateDirectory` so that a restart on
/// the same directory is the same TPM. Shared by the trust tests and the
/// fleet client's attestation tests. Killed by its PID at `stop` or deinit.
public final class SoftwareTPM {
    public let stateDirectory: String
    public private(set) var port = 0
    private var process: ChildProcess?

    public var tcti: String { "swtpm:host=127.0.0.1,port=\(port)" }

    /// Manufactures a TPM in `stateDirectory` (an endorsement key, as a real
    /// part has) unless it already holds one, then starts it. With an
    /// `endorsementCA` (a swtpm-localca directory, shared by the TPMs of one
    /// "maker"), the TPM also gets EK certificates as a real part does,
    /// including one for the ECC P-256 EK at 0x01C0000A (see `installP256EKCertificate`).
    public init(stateDirectory: String, endorsementCA: EndorsementCA? = nil) throws {
        self.stateDirectory = stateDirectory
        try FileManager.default.createDirectory(atPath: stateDirectory, withIntermediateDirectories: true)
        let fresh = !FileManager.default.fileExists(atPath: stateDirectory + "/tpm2-00.permall")
        if fresh {
            var argv = ["swtpm_setup", "--tpm2", "--tpmstate", stateDirectory, "--createek"]
            if let endorsementCA { argv += ["--create-ek-cert", "--create-platform-cert", "--config", try endorsementCA.setupConfig()] }
            let setup = try runCommand(argv, timeout: .seconds(60))
            guard setup.status == 0 else {
                throw TestSupportError.spawn(command: "swtpm_setup", reason: setup.output.trimmingCharacters(in: .whitespacesAndNewlines))
            }
        }
        try start()
        if fresh, let endorsementCA { try installP256EKCertificate(endorsementCA) }
    }

    /// A TPM maker's CA for EK certificates: swtpm-localca's state in `directory` (its root
    /// CA and the intermediate that signs EK certificates are made at first use).
    public struct EndorsementCA: Sendable {
        public let directory: String
        public init(directory: String) throws {
            self.directory = directory
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        }
        /// The self-signed root ("swtpm-localca-rootca") and the intermediate that signs ("swtpm-localca").
        public var rootCertificate: String { directory + "/swtpm-localca-rootca-cert.pem" }
        public var issuerCertificate: String { directory + "/issuercert.pem" }
        var localCAConfig: String { directory + "/swtpm-localca.conf" }

        /// swtpm_setup.conf and swtpm-localca.conf pointing at `directory`, not /var/lib/swtpm-localca.
        func setupConfig() throws -> String {
            let ca = "statedir = \(directory)\nsigningkey = \(directory)/signkey.pem\n"
                + "issuercert = \(issuerCertificate)\ncertserial = \(directory)/certserial\n"
            try ca.write(toFile: localCAConfig, atomically: true, encoding: .utf8)
            let setup = "create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = \(localCAConfig)\n"
                + "create_certs_tool_options = /etc/swtpm-localca.options\nactive_pcr_banks = sha256\n"
            let path = directory + "/swtpm_setup.conf"
            try setup.write(toFile: path, atomically: true, encoding: .utf8)
            return path
        }
    }

    /// The TCG EK Credential Profile's index for the ECC P-256 EK's certificate.
    public static let p256EKCertificateIndex = "0x01c0000a"

    /// swtpm_setup 0.7 certifies an RSA 2048 and an ECC P-384 EK only; the device uses the P-256
    /// EK (template L-2). As a maker would, this certifies that EK with the same CA and stores
    /// the DER at 0x01C0000A, defined by the platform hierarchy with the attributes swtpm gives
    /// its own certificate indices.
    func installP256EKCertificate(_ ca: EndorsementCA) throws {
        let work = stateDirectory + "/ekcert"
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: work) }
        func run(_ argv: [String]) throws {
            let r = try runCommand(argv, timeout: .seconds(60))
            guard r.status == 0 else { throw TestSupportError.failed(command: argv.joined(separator: " "), status: r.status, output: r.output) }
        }
        try run(["tpm2_createek", "-T", tcti, "-G", "ecc", "-c", work + "/ek.ctx", "-u", work + "/ek.der", "-f", "der"])
        try run(["tpm2_flushcontext", "-T", tcti, "-t"])
        guard let der = FileManager.default.contents(atPath: work + "/ek.der"), der.count >= 64 else {
            throw TestSupportError.spawn(command: "tpm2_createek", reason: "no P-256 public key in \(work)/ek.der")
        }
        let point = Array(der.suffix(64))
        let x = point.prefix(32).map { String(format: "%02x", $0) }.joined()
        let y = point.suffix(32).map { String(format: "%02x", $0) }.joined()
        try run(["swtpm_localca", "--type", "ek", "--ek", "x=\(x),y=\(y),id=secp256r1", "--dir", work,
                 "--tpm-spec-family", "2.0", "--tpm-spec-level", "0", "--tpm-spec-revision", "164",
                 "--tpm-manufacturer", "id:00001014", "--tpm-model", "swtpm", "--tpm-version", "id:20191023", "--tpm2",
                 "--configfile", ca.localCAConfig, "--optsfile", "/etc/swtpm-localca.options"])
        let cert = work + "/ek.cert"
        let size = (try FileManager.default.attributesOfItem(atPath: cert)[.size] as? Int) ?? 0
        let index = Self.p256EKCertificateIndex
        try run(["tpm2_nvdefine", "-T", tcti, index, "-C", "p", "-s", String(size),
                 "-a", "ppwrite|writedefine|ppread|ownerread|authread|no_da|platformcreate"])
        try run(["tpm2_nvwrite", "-T", tcti, index, "-C", "p", "-i", cert])
        try run(["tpm2_nvwritelock", "-T", tcti, index, "-C", "p"])
    }

    deinit { stop() }

    /// Starts swtpm on a free pair of ports and waits (bounded) until it accepts connections.
    public func start() throws {
        stop()
        port = try Self.freePortPair()
        let child = try ChildProcess([
            "swtpm", "socket", "--tpm2", "--tpmstate", "dir=\(stateDirectory)",
            "--server", "type=tcp,port=\(port),bindaddr=127.0.0.1",
            "--ctrl", "type=tcp,port=\(port + 1),bindaddr=127.0.0.1",
            "--flags", "not-need-init,startup-clear",
        ])
        process = child
        try waitFor("swtpm on port \(port)", within: .seconds(10)) {
            guard child.isRunning else { throw TestSupportError.spawn(command: "swtpm", reason: "exited at start") }
            return Self.accepts(port)
        }
    }

    /// Stops swtpm (SIGTERM, then SIGKILL) and reaps it; the state stays.
    public func stop() {
        process?.terminate()
        process = nil
    }

    public static func accepts(_ port: Int) -> Bool { LoopbackPort.accepts(port) }

    /// A port P with P+1 also free now (bounded tries).
    public static func freePortPair() throws -> Int {
        guard let port = LoopbackPort.freePair() else {
            throw TestSupportError.spawn(command: "swtpm", reason: "no free pair of loopback ports")
        }
        return port
    }
}
