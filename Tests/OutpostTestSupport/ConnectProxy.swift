import Foundation

/// The tests' HTTP CONNECT proxy (`connect-proxy.py`, python3): it logs each request line, and
/// with `deny` answers 403 to everything, as a proxy that refuses a device would.
public enum ConnectProxy {
    /// The script's path in the source tree (the namespace tests run it inside a namespace).
    public static let scriptPath = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("connect-proxy.py").path

    /// Starts one on 127.0.0.1 on a free port, logging to `log`; killed when the server is dropped.
    public static func onLoopback(log: String, deny: Bool, in dir: String) throws -> PythonServer {
        let portFile = dir + "/proxy-\(UUID().uuidString.prefix(8)).port"
        return try PythonServer(scriptPath: scriptPath,
                                arguments: ["--listen", "127.0.0.1:0", "--log", log, "--port-file", portFile, "--lifetime", "120"]
                                    + (deny ? ["--deny"] : []),
                                portFile: portFile)
    }
}
