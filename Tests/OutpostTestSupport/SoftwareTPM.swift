import Foundation

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
    /// part has) unless it already holds one, then starts it.
    public init(stateDirectory: String) throws {
        self.stateDirectory = stateDirectory
        try FileManager.default.createDirectory(atPath: stateDirectory, withIntermediateDirectories: true)
        if !FileManager.default.fileExists(atPath: stateDirectory + "/tpm2-00.permall") {
            let setup = try runCommand(["swtpm_setup", "--tpm2", "--tpmstate", stateDirectory, "--createek"], timeout: .seconds(60))
            guard setup.status == 0 else {
                throw TestSupportError.spawn(command: "swtpm_setup", reason: setup.output.trimmingCharacters(in: .whitespacesAndNewlines))
            }
        }
        try start()
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

    public static func accepts(_ port: Int) -> Bool { onLoopback(port) { connect($0, $1, $2) } }

    /// A port P with P+1 also free now (bounded tries).
    public static func freePortPair() throws -> Int {
        for _ in 0..<50 {
            let port = try freeLoopbackPort()
            if port < 65535 && !accepts(port + 1) && canBind(port + 1) { return port }
        }
        throw TestSupportError.spawn(command: "swtpm", reason: "no free pair of loopback ports")
    }

    public static func canBind(_ port: Int) -> Bool { onLoopback(port) { bind($0, $1, $2) } }

    /// Calls `call` (connect or bind) on a new TCP socket with 127.0.0.1:`port`; true when it succeeds.
    private static func onLoopback(_ port: Int,
                                   _ call: (Int32, UnsafePointer<sockaddr>, socklen_t) -> Int32) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                call(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
    }
}
