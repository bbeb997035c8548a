import Foundation
import OutpostTestSupport
import Testing
@testable import OutpostApps

let digestA = String(repeating: "ab", count: 32)

/// An apps.json with one instance around the seed's example; `edit` changes the instance object.
func appsJSON(_ edit: (inout [String: Any]) -> Void = { _ in }) throws -> [UInt8] {
    let manifest = try JSONSerialization.jsonObject(with: Data(seedExample.utf8))
    var app: [String: Any] = [
        "name": "xenial",
        "manifest": manifest,
        "images": [["name": "xenial-amd64-docker-20180725", "url": "http://127.0.0.1:8080/xenial.qcow2",
                    "sha256": digestA.uppercased(), "size": 1_073_741_824]],
        "activate": true, "restart": 3, "purge": 1,
    ]
    edit(&app)
    return Array(try JSONSerialization.data(withJSONObject: ["apps": [app]]))
}

@Suite("apps.json: instances bound to manifests and image sources")
struct AppsConfigTests {
    @Test func anInstanceBindsTheManifestToItsSourcesAndCounters() throws {
        let config = try AppsConfig(json: try appsJSON())
        let app = try #require(config.apps.first)
        #expect(app.name == "xenial")
        #expect(app.manifest.name == "xenial2intf")
        #expect(app.activate)
        #expect(app.restartCounter == 3)
        #expect(app.purgeCounter == 1)
        let source = try #require(app.source(for: app.manifest.images[0]))
        #expect(source.sha256 == digestA, "digests are compared lower-case")
        #expect(source.size == 1 << 30)
        #expect(source.url.port == 8080)
    }

    @Test func badFieldsAreNamedWithTheirPath() throws {
        #expect(refusal { _ = try AppsConfig(json: try! appsJSON { $0["name"] = "Bad Name" }) }
            == #"apps[0].name: "Bad Name" is not 1 to 32 of a-z, 0-9 and '-' starting with a letter"#)
        #expect(refusal { _ = try AppsConfig(json: try! appsJSON { $0["images"] = [] }) }
            == #"apps[0].manifest.images[0].imagename: "xenial-amd64-docker-20180725" has no entry in apps[0].images"#)
        #expect(refusal { _ = try AppsConfig(json: try! appsJSON { $0["images"] = [["name": "xenial-amd64-docker-20180725", "url": "ftp://x/y", "sha256": digestA, "size": 1]] }) }
            == #"apps[0].images[0].url: 'ftp://x/y' is not a usable URL: scheme 'ftp' is not http or https"#)
        #expect(refusal { _ = try AppsConfig(json: try! appsJSON { $0["images"] = [["name": "xenial-amd64-docker-20180725", "url": "http://h/y", "sha256": "abc", "size": 1]] }) }
            == #"apps[0].images[0].sha256: "abc" is not 64 hex characters"#)
        #expect(refusal { _ = try AppsConfig(json: try! appsJSON { $0["images"] = [["name": "xenial-amd64-docker-20180725", "url": "http://h/y", "sha256": digestA, "size": 0]] }) }
            == "apps[0].images[0].size: 0 is not within 1...9223372036854775807")
        #expect(refusal { _ = try AppsConfig(json: try! appsJSON { $0["images"] = [["name": "other", "url": "http://h/y", "sha256": digestA, "size": 1]] }) }
            == #"apps[0].images[0].name: "other" is not an imagename of the manifest"#)
        #expect(refusal { _ = try AppsConfig(json: try! appsJSON { $0["restart"] = -1 }) }
            == "apps[0].restart: -1 is not within 0...9223372036854775807")
        #expect(refusal { _ = try AppsConfig(json: try! appsJSON { $0["activate"] = "no" }) } == #"apps[0].activate: "no" is not true or false"#)
        #expect(refusal { _ = try AppsConfig(json: try! appsJSON { $0["manifest"] = ["acKind": "VMManifest"] }) } == "apps[0].manifest.name: missing")
        #expect(refusal { _ = try AppsConfig(json: Array(#"{"apps": {}}"#.utf8)) } == "apps: (an object) is not a list")
        #expect(refusal { _ = try AppsConfig(json: Array(#"{"app": []}"#.utf8)) } == "app: is not a known field (apps, network)")
        #expect(refusal { _ = try AppsConfig(json: Array("[]".utf8)) } == "(root): (a list) is not an object")
        #expect(refusal { _ = try AppsConfig(json: Array("{".utf8)) }.hasPrefix("apps.json: not valid JSON: "))
    }

    @Test func theREADMEsExampleParses() throws {
        let readme = try String(contentsOfFile: #filePath.replacingOccurrences(of: "Tests/OutpostAppsTests/AppsConfigTests.swift", with: "README.md"), encoding: .utf8)
        let start = try #require(readme.range(of: "```json\n{ \"apps\""))
        let end = try #require(readme.range(of: "\n```", range: start.upperBound..<readme.endIndex))
        let json = String(readme[readme.index(start.lowerBound, offsetBy: 8)..<end.lowerBound])
            .replacingOccurrences(of: "<64 hex characters>", with: digestA)
        let app = try #require(try AppsConfig(json: Array(json.utf8)).apps.first)
        #expect(app.name == "counter")
        #expect(app.manifest.images[0].maxSizeBytes == 1 << 20)
        #expect(app.manifest.memoryBytes == 64 << 20)
    }

    @Test func twoInstancesOfOneNameAreRefused() throws {
        let one = try JSONSerialization.jsonObject(with: Data(try appsJSON())) as? [String: [Any]]
        let app = try #require(one?["apps"]?.first)
        let bytes = Array(try JSONSerialization.data(withJSONObject: ["apps": [app, app]]))
        #expect(refusal { _ = try AppsConfig(json: bytes) } == #"apps[1].name: "xenial" names two app instances"#)
    }

    @Test func configWithoutAppsJSONHasNoApps() throws {
        let tmp = try TemporaryDirectory("apps-config")
        #expect(try AppsConfig.load(configDirectory: tmp.path).apps.isEmpty)
        try Data(try appsJSON()).write(to: URL(fileURLWithPath: tmp.path + "/apps.json"))
        #expect(try AppsConfig.load(configDirectory: tmp.path).apps.map(\.name) == ["xenial"])
        try Data("{\"apps\": [1]}".utf8).write(to: URL(fileURLWithPath: tmp.path + "/apps.json"))
        #expect(refusal { _ = try AppsConfig.load(configDirectory: tmp.path) } == "apps[0]: 1 is not an object")
    }

    @Test func randomMutationsOfAppsJSONEndInAOneLineError() throws {
        var rng = SplitMix64.forTest()
        let base = try appsJSON()
        for round in 0..<1500 {
            var bytes = base
            for _ in 0..<Int.random(in: 1...6, using: &rng) {
                bytes[Int.random(in: 0..<bytes.count, using: &rng)] = UInt8.random(in: 0x20...0x7e, using: &rng)
            }
            do { _ = try AppsConfig(json: bytes) } catch {
                #expect(!error.description.contains("\n"), "round \(round): \(error.description)")
            }
        }
    }
}
