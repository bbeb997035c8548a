import Foundation
import OutpostApps
import OutpostProto

/// `device set-apps`: a file in the apps.json shape becomes the config's apps
/// section. It is checked with the device's own parser first, so a file the
/// device would refuse is refused here, in one line naming the field, and
/// nothing is stored.
public enum AppsSectionCodec {
    public static func section(fromAppsJSON bytes: Data) throws(ControllerError) -> Outpost_Api_V1_AppsSection {
        let parsed: AppsConfig
        do { parsed = try AppsConfig(json: Array(bytes), document: "the apps file") } catch {
            throw .invalidInput(error.description)
        }
        // The parser has accepted the document, so these casts hold; each manifest is kept as JSON
        // text (the device parses it again with VMManifest), in the order the file has the apps.
        guard let root = try? JSONSerialization.jsonObject(with: bytes) as? [String: Any],
              let entries = root["apps"] as? [[String: Any]], entries.count == parsed.apps.count else {
            throw .invalidInput("the apps file is not a JSON object with an apps list")
        }
        var section = Outpost_Api_V1_AppsSection()
        for (config, entry) in zip(parsed.apps, entries) {
            guard let manifest = entry["manifest"],
                  let text = try? JSONSerialization.data(withJSONObject: manifest, options: [.sortedKeys, .withoutEscapingSlashes]) else {
                throw .invalidInput("apps: \(config.name): the manifest cannot be re-encoded as JSON")
            }
            var app = Outpost_Api_V1_App()
            app.name = config.name
            app.manifestJson = String(decoding: text, as: UTF8.self)
            app.images = config.images.map { source in
                var image = Outpost_Api_V1_ImageSource()
                image.name = source.name
                image.url = source.url.description
                image.sha256 = source.sha256
                image.size = source.size
                return image
            }
            app.activate = config.activate
            app.restartCounter = config.restartCounter
            app.purgeCounter = config.purgeCounter
            app.vault = config.vault
            if let health = config.health {
                app.health.consoleMarker = health.consoleMarker ?? ""
                app.health.tcpPort = UInt32(health.tcpPort ?? 0)
                app.health.httpPath = health.httpPath ?? ""
                app.health.timeoutSeconds = UInt32(health.timeoutSeconds)
                app.health.graceSeconds = UInt32(health.graceSeconds)
            }
            section.instances.append(app)
        }
        // The network settings travel too (nothing in the file is dropped): as the file wrote them.
        if let network = root["network"] as? [String: Any] {
            section.network.bridge = network["bridge"] as? String ?? ""
            section.network.subnet = network["subnet"] as? String ?? ""
        }
        return section
    }
}
