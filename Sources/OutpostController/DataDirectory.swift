import Foundation

/// The controller's data directory, made by `outpost-controller init` and
/// used by `serve` and the admin CLI:
///
///     DIR/
///       controller.json       listen port and the URL devices use
///       ca/ca.cert.pem        the controller CA (root-ca.pem on devices)
///       ca/ca.key.pem         its key (0600; never leaves this directory)
///       server/server.*.pem   the TLS server certificate (SANs: every --host)
///       config/               a CONFIG directory for `outpost image build --config`
///       trust/                the fleet's bundle trust anchors (*.pem, revoked.txt)
///       bundles/              bundles the controller serves at /api/v1/bundles/NAME
///       fleet.sqlite          the store
///       admin.sock            the admin socket (0600: the owner is the administrator)
public struct DataDirectory: Sendable {
    public let path: String

    public init(path: String) {
        // An absolute path: the admin socket and bundles are named by it.
        if path.hasPrefix("/") {
            self.path = path
        } else {
            self.path = FileManager.default.currentDirectoryPath + "/" + path
        }
    }

    public var settingsFile: String { path + "/controller.json" }
    public var caCert: String { path + "/ca/ca.cert.pem" }
    public var caKey: String { path + "/ca/ca.key.pem" }
    public var serverCert: String { path + "/server/server.cert.pem" }
    public var serverKey: String { path + "/server/server.key.pem" }
    public var configDir: String { path + "/config" }
    public var onboardCert: String { configDir + "/onboard.cert.pem" }
    public var trustDir: String { path + "/trust" }
    public var bundlesDir: String { path + "/bundles" }
    public var database: String { path + "/fleet.sqlite" }
    public var adminSocket: String { path + "/admin.sock" }

    /// Settings written by `init`.
    public struct Settings: Codable, Sendable, Equatable {
        /// The URL devices reach the controller at (CONFIG's controller-url).
        public var url: String
        /// The TCP port `serve` listens on unless --listen says otherwise.
        public var port: Int
    }

    public func loadSettings() throws(ControllerError) -> Settings {
        guard let data = FileManager.default.contents(atPath: settingsFile) else {
            throw .dataDirectory(path: path, reason: "no controller.json (make one with `outpost-controller init`)")
        }
        do { return try JSONDecoder().decode(Settings.self, from: data) } catch {
            throw .dataDirectory(path: path, reason: "controller.json is not valid (\(error))")
        }
    }

    /// Reads a file the data directory must have, naming it when missing.
    public func readPublic(_ file: String) throws(ControllerError) -> Data { try read(file) }

    func read(_ file: String) throws(ControllerError) -> Data {
        guard let data = FileManager.default.contents(atPath: file) else {
            throw .dataDirectory(path: path, reason: "cannot read \(file)")
        }
        return data
    }
}

/// Writes `data` to `path` through a temporary file and rename, with `mode`.
func writeFile(_ path: String, _ data: Data, mode: mode_t = 0o644) throws(ControllerError) {
    let tmp = path + ".tmp"
    guard FileManager.default.createFile(atPath: tmp, contents: data, attributes: [.posixPermissions: Int(mode)]) else {
        throw .io(path: tmp, reason: "cannot create the file")
    }
    guard chmod(tmp, mode) == 0, rename(tmp, path) == 0 else {
        let e = errno
        unlink(tmp)
        throw .io(path: path, reason: errnoString(e))
    }
}

func makeDirectory(_ path: String, mode: mode_t = 0o755) throws(ControllerError) {
    do { try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true) } catch {
        throw .io(path: path, reason: "cannot create the directory (\(error.localizedDescription))")
    }
    guard chmod(path, mode) == 0 else { throw .io(path: path, reason: errnoString(errno)) }
}
