import Foundation
import OutpostProcess
import OutpostQEMU

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
    /// including one for the ECC P-256 EK at 0x01C0000A (OutpostQEMU.TPMManufacture).
    public init(stateDirectory: String, endorsementCA: EndorsementCA? = nil) throws {
        self.stateDirectory = stateDirectory
        try FileManager.default.createDirectory(atPath: stateDirectory, withIntermediateDirectories: true)
        // The maker's steps are OutpostQEMU.TPMManufacture's (as `outpost run` makes a TPM),
        // run with this module's runner: swift-subprocess does not reap children in a test process.
        let fresh = TPMManufacture.isFresh(stateDirectory)
        if fresh {
            let argv = try endorsementCA?.maker.setupCommand(stateDirectory: stateDirectory)
                ?? ["swtpm_setup", "--tpm2", "--tpmstate", stateDirectory, "--createek"]
            try Self.run(argv)
        }
        try start()
        if fresh, let endorsementCA {
            try endorsementCA.maker.installP256Certificate(tcti: tcti, work: stateDirectory + "/ekcert", run: Self.run)
        }
    }

    /// A TPM maker's CA for EK certificates: swtpm-localca's state in `directory` (its root
    /// CA and the intermediate that signs EK certificates are made at first use), the same
    /// maker `outpost run --ek-ca` uses (OutpostQEMU.TPMManufacture).
    public struct EndorsementCA: Sendable {
        public let maker: TPMManufacture
        public var directory: String { maker.caDirectory }
        public init(directory: String) throws {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            maker = TPMManufacture(caDirectory: directory)
        }
        /// The self-signed root ("swtpm-localca-rootca") and the intermediate that signs ("swtpm-localca").
        public var rootCertificate: String { maker.rootCertificate }
        public var issuerCertificate: String { maker.issuerCertificate }
    }

    /// The TCG EK Credential Profile's index for the ECC P-256 EK's certificate.
    public static let p256EKCertificateIndex = TPMManufacture.p256EKCertificateIndex

    /// Runs one command (bounded); a failure throws with its output.
    static func run(_ argv: [String]) throws {
        let r = try runCommand(argv, timeout: .seconds(60))
        guard r.status == 0 else { throw TestSupportError.failed(command: argv.joined(separator: " "), status: r.status, output: r.output) }
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
