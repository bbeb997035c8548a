import Foundation

/// The CONFIG partition's inputs: identity and bootstrap. Checked before any
/// byte of the image is written, so a missing or malformed file never leaves
/// a half-built image behind.
public struct ConfigInputs: Sendable {
    /// The files every device needs to find and authenticate to its controller.
    public static let required: [(name: String, what: String)] = [
        ("root-ca.pem", "controller root CA certificate"),
        ("onboard.cert.pem", "onboarding certificate"),
        ("onboard.key.pem", "onboarding private key"),
        ("network.json", "bootstrap network configuration"),
    ]

    /// Checked when present: the controller's URL (`outpost-controller init` writes it).
    public static let optional = ["controller-url"]

    public var directory: String
    /// Regular files to copy, by name, sorted so the image is reproducible.
    public var files: [String]

    /// Validates the directory's contents and lists what goes onto CONFIG.
    public static func load(directory: String) throws -> ConfigInputs {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDir), isDir.boolValue else {
            throw BuilderError.missingInput(path: directory, what: "config directory")
        }
        for (name, what) in required {
            let p = directory + "/" + name
            guard let data = FileManager.default.contents(atPath: p) else {
                throw BuilderError.missingInput(path: p, what: "CONFIG file (\(what))")
            }
            try check(name: name, data: data, path: p)
        }
        // Optional: with no controller-url the device is unmanaged (a development
        // image); one that is there must be a URL the device can use.
        for name in optional {
            let p = directory + "/" + name
            if let data = FileManager.default.contents(atPath: p) { try check(name: name, data: data, path: p) }
        }
        let names = try FileManager.default.contentsOfDirectory(atPath: directory).filter { n in
            var d: ObjCBool = false
            return !n.hasPrefix(".") && FileManager.default.fileExists(atPath: directory + "/" + n, isDirectory: &d) && !d.boolValue
        }.sorted()
        for n in names where n.utf8.count > 64 || n.contains(" ") {
            throw BuilderError.invalidInput(path: directory + "/" + n, message: "CONFIG file names must be short and without spaces")
        }
        return ConfigInputs(directory: directory, files: names)
    }

    private static func check(name: String, data: Data, path: String) throws {
        let text = String(decoding: data, as: UTF8.self)
        switch name {
        case "controller-url":
            let url = text.trimmingCharacters(in: .whitespacesAndNewlines)
            guard url.hasPrefix("https://") || url.hasPrefix("http://"), URL(string: url)?.host != nil else {
                throw BuilderError.invalidInput(path: path, message: "'\(url)' is not an http(s) URL")
            }
        case "root-ca.pem", "onboard.cert.pem":
            guard text.contains("-----BEGIN CERTIFICATE-----") else {
                throw BuilderError.invalidInput(path: path, message: "not a PEM certificate")
            }
        case "onboard.key.pem":
            guard text.contains("-----BEGIN") && text.contains("PRIVATE KEY-----") else {
                throw BuilderError.invalidInput(path: path, message: "not a PEM private key")
            }
        case "network.json":
            guard (try? JSONSerialization.jsonObject(with: data)) is [String: Any] else {
                throw BuilderError.invalidInput(path: path, message: "not a JSON object")
            }
        default:
            break
        }
    }
}
