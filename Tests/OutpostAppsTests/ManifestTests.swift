import Foundation
import OutpostTestSupport
import Testing
@testable import OutpostApps

/// The seed's example manifest (../shared/reference/vmmanifest-example.json), as written.
let seedExample = #"""
{
  "acKind": "VMManifest",
  "acVersion": "1.1.1",
  "name": "xenial2intf",
  "owner": {},
  "enablevnc": true,
  "vmmode": "HV_HVM",
  "images": [
    {
      "imagename": "xenial-amd64-docker-20180725",
      "maxsize": 1195376,
      "readonly": false,
      "preserve": true,
      "target": "Disk",
      "drvtype": "HDD",
      "maxsizeUnit": "GB",
      "maxsizeDisplayUnit": "GB"
    }
  ],
  "interfaces": [
    {
      "name": "indirect",
      "directattach": false,
      "acls": [ { "matches": [ { "type": "host", "value": "amazonaws.com" } ] } ]
    },
    {
      "name": "direct",
      "directattach": false,
      "acls": [ { "matches": [ { "type": "ip", "value": "0.0.0.0/0" } ] } ]
    }
  ],
  "resources": [
    { "name": "cpus", "value": 2 },
    { "name": "memory", "value": 512000 },
    { "name": "storage", "value": 3145728 }
  ]
}
"""#

/// The example with one change made through JSONSerialization: `edit` gets the top-level object.
func editedExample(_ edit: (inout [String: Any]) -> Void) throws -> [UInt8] {
    var object = try #require(try JSONSerialization.jsonObject(with: Data(seedExample.utf8)) as? [String: Any])
    edit(&object)
    return Array(try JSONSerialization.data(withJSONObject: object))
}

/// The refusal's one line, or a test failure when the input was accepted.
/// (Untyped: closures inside #expect do not infer a typed throw.)
func refusal(_ body: () throws -> Void) -> String {
    do { try body() } catch let error as AppsError { return error.description } catch {
        Issue.record("not an AppsError: \(error)")
        return "\(error)"
    }
    Issue.record("accepted")
    return ""
}

@Suite("VMManifest: the seed's format")
struct ManifestTests {
    @Test func theSeedsExampleParsesAsWritten() throws {
        let manifest = try VMManifest(json: Array(seedExample.utf8))
        #expect(manifest.name == "xenial2intf")
        #expect(manifest.acVersion == "1.1.1")
        #expect(manifest.enableVNC)
        #expect(manifest.mode == .hvm)
        #expect(manifest.cpus == 2)
        #expect(manifest.memoryBytes == 512_000 * 1024)
        #expect(manifest.storageBytes == 3_145_728 * 1024)
        #expect(manifest.images == [VMManifest.Image(
            imageName: "xenial-amd64-docker-20180725", maxSizeBytes: 1_195_376 * 1024, maxSizeUnit: "GB", maxSizeDisplayUnit: "GB",
            readOnly: false, preserve: true, target: .disk, driveType: .hdd)])
        #expect(manifest.interfaces.map(\.name) == ["indirect", "direct"])
        #expect(manifest.interfaces[0].acls == [.init(matches: [.host("amazonaws.com")], name: "acl0")])
        #expect(manifest.interfaces[1].acls == [.init(matches: [.ip(try #require(IPRange("0.0.0.0/0")))], name: "acl0")])
    }

    @Test func aWrongUnitIsNamedWithItsPathAndTheSeedsSpellings() throws {
        let bytes = try editedExample { root in
            var images = root["images"] as? [[String: Any]] ?? []
            images.append(["imagename": "data", "maxsizeUnit": "gb"])
            root["images"] = images
        }
        #expect(refusal { _ = try VMManifest(json: bytes) } == #"images[1].maxsizeUnit: "gb" is not one of KB, MB, GB, TB"#)
    }

    @Test(arguments: [
        ("acKind", "\"AppManifest\"", #"acKind: "AppManifest" is not one of VMManifest"#),
        ("vmmode", "\"HV_XEN\"", #"vmmode: "HV_XEN" is not one of HV_HVM, HV_PV, HV_FML, HV_LEGACY"#),
        ("enablevnc", "\"yes\"", #"enablevnc: "yes" is not true or false"#),
        ("name", "\"\"", "name: must be 1 to 256 characters"),
        ("images", "[]", "images: is empty; an app needs at least one image"),
        ("images", "{}", "images: (an object) is not a list"),
        ("resources", "[{\"name\": \"cpus\", \"value\": 1.5}, {\"name\": \"memory\", \"value\": 65536}]", "resources[0].value: 1.5 is not a whole number"),
        ("resources", "[{\"name\": \"cpus\", \"value\": 0}, {\"name\": \"memory\", \"value\": 65536}]", "resources[0].value: 0 is not within 1...64"),
        ("resources", "[{\"name\": \"cpus\", \"value\": 1}]", #"resources: has no "memory" entry"#),
        ("resources", "[{\"name\": \"cpus\", \"value\": 1}, {\"name\": \"cpus\", \"value\": 2}]", #"resources[1].name: "cpus" is given twice"#),
        ("resources", "[{\"name\": \"gpus\", \"value\": 1}]", #"resources[0].name: "gpus" is not one of cpus, memory, storage"#),
        ("interfaces", "[{\"name\": \"a\", \"acls\": [{\"matches\": [{\"type\": \"ip\", \"value\": \"10.0.0.0/33\"}]}]}]",
         #"interfaces[0].acls[0].matches[0].value: "10.0.0.0/33" is not an address or address/prefix"#),
        ("interfaces", "[{\"name\": \"a\", \"acls\": [{\"matches\": [{\"type\": \"host\", \"value\": \"bad host\"}]}]}]",
         #"interfaces[0].acls[0].matches[0].value: "bad host" is not a host name"#),
        ("interfaces", "[{\"name\": \"a\", \"acls\": [{\"matches\": [{\"type\": \"port\", \"value\": \"80\"}]}]}]",
         #"interfaces[0].acls[0].matches[0].type: "port" is not one of host, ip"#),
        ("interfaces", "[{\"name\": \"a\"}, {\"name\": \"a\"}]", #"interfaces[1].name: "a" names two interfaces"#),
        ("interfaces", "[{\"name\": \"a\", \"acls\": [{\"matches\": [{\"type\": \"ip\", \"value\": \"10.0.0.1\"}], \"actions\": [{\"limit\": true}]}]}]",
         "interfaces[0].acls[0].actions[0].limit: is not a known field (drop)"),
        ("interfaces", "[{\"name\": \"a\", \"acls\": [{\"matches\": [{\"type\": \"ip\", \"value\": \"10.0.0.1\"}], \"actions\": [{\"drop\": \"yes\"}]}]}]",
         #"interfaces[0].acls[0].actions[0].drop: "yes" is not true or false"#),
        ("interfaces", "[{\"name\": \"a\", \"acls\": [{\"matches\": [{\"type\": \"ip\", \"value\": \"10.0.0.1\"}], \"name\": \"no way\"}]}]",
         #"interfaces[0].acls[0].name: "no way" is not a rule name (1 to 32 letters, digits, - or _)"#),
        ("interfaces", "[{\"name\": \"a\", \"acls\": [{\"matches\": [{\"type\": \"ip\", \"value\": \"10.0.0.1\"}], \"name\": \"r\"}, {\"matches\": [{\"type\": \"ip\", \"value\": \"10.0.0.2\"}], \"name\": \"r\"}]}]",
         #"interfaces[0].acls[1]: rule name "r" is used twice"#),
        ("interfaces", "[{\"name\": \"a\", \"acls\": [{\"matches\": []}]}]", "interfaces[0].acls[0]: has no matches"),
        ("readOnly", "true", "readOnly: is not a known field (acKind, acVersion, name, owner, enablevnc, vmmode, images, interfaces, resources)"),
    ])
    func eachBadFieldIsRefusedInOneLineNamingIt(key: String, json: String, expected: String) throws {
        let value = try JSONSerialization.jsonObject(with: Data(json.utf8), options: .fragmentsAllowed)
        let bytes = try editedExample { $0[key] = value }
        let message = refusal { _ = try VMManifest(json: bytes) }
        #expect(message == expected)
        #expect(!message.contains("\n"))
    }

    @Test func imageFieldsAreCheckedWithTheirIndex() throws {
        func image(_ fields: [String: Any]) throws -> String {
            let bytes = try editedExample { $0["images"] = [["imagename": "a"], fields] }
            return refusal { _ = try VMManifest(json: bytes) }
        }
        #expect(try image(["imagename": "b", "maxsize": -1]) == "images[1].maxsize: -1 is not within 0...1099511627776")
        #expect(try image(["imagename": "b", "readonly": 1]) == "images[1].readonly: 1 is not true or false")
        #expect(try image(["imagename": "b", "target": "disk"]) == #"images[1].target: "disk" is not one of Disk, Kernel, Initrd, RamDisk"#)
        #expect(try image(["imagename": "b", "drvtype": "SSD"]) == #"images[1].drvtype: "SSD" is not one of HDD, CDROM"#)
        #expect(try image(["maxsize": 1]) == "images[1].imagename: missing")
        #expect(try image(["imagename": "b", "readOnly": true]).hasPrefix("images[1].readOnly: is not a known field"))
    }

    @Test func missingMandatoryFieldsAreNamed() throws {
        for key in ["acKind", "name", "images", "resources"] {
            let bytes = try editedExample { $0.removeValue(forKey: key) }
            #expect(refusal { _ = try VMManifest(json: bytes) } == "\(key): missing")
        }
    }

    @Test func ipRangesAreNormalisedToTheirNetwork() throws {
        #expect(IPRange("10.1.2.3/8")?.description == "10.0.0.0/8")
        #expect(IPRange("192.168.1.7")?.description == "192.168.1.7/32")
        #expect(IPRange("2001:db8::1/32")?.description == "2001:db8::/32")
        #expect(IPRange("10.0.0.0/") == nil)
        #expect(IPRange("10.0.0.0/+8") == nil)
        #expect(IPRange("10.0.0") == nil)
    }

    /// Random mutations of the example (bytes flipped, cut, spliced) and random JSON trees:
    /// every one parses or is refused in one line, none crashes.
    @Test func randomInputsEndInAOneLineErrorNeverACrash() throws {
        var rng = SplitMix64.forTest()
        let base = Array(seedExample.utf8)
        var refused = 0
        for round in 0..<3000 {
            var bytes = base
            switch round % 4 {
            case 0:
                for _ in 0..<Int.random(in: 1...8, using: &rng) {
                    bytes[Int.random(in: 0..<bytes.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
                }
            case 1:
                bytes = Array(bytes.prefix(Int.random(in: 0..<bytes.count, using: &rng)))
            case 2:
                let at = Int.random(in: 0..<bytes.count, using: &rng)
                let piece = ["[", "{", "\"", "null", "-1", "1e999", "\"\\u0000\"", "]]]", "true", "{}"].randomElement(using: &rng) ?? ""
                bytes.insert(contentsOf: Array(piece.utf8), at: at)
            default:
                bytes = Array(randomJSON(depth: 0, rng: &rng).utf8)
            }
            do { _ = try VMManifest(json: bytes) } catch {
                refused += 1
                #expect(!error.description.contains("\n"), "round \(round): \(error.description)")
                #expect(!error.description.isEmpty)
            }
        }
        #expect(refused > 2000)
    }

    @Test func deepNestingIsRefusedNotACrash() {
        let deep = String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)
        #expect(refusal { _ = try VMManifest(json: Array(deep.utf8)) }.hasPrefix("manifest: not valid JSON"))
    }
}

/// A random JSON text that uses the manifest's keys, so the walk goes deep.
func randomJSON(depth: Int, rng: inout SplitMix64) -> String {
    let keys = ["acKind", "name", "images", "resources", "interfaces", "imagename", "maxsize", "value", "matches", "type", "acls", "x"]
    let kind = depth > 4 ? Int.random(in: 0...3, using: &rng) : Int.random(in: 0...5, using: &rng)
    switch kind {
    case 0: return ["null", "true", "false"].randomElement(using: &rng) ?? "null"
    case 1: return String(Int64.random(in: -5...Int64.max, using: &rng))
    case 2: return ["\"VMManifest\"", "\"cpus\"", "\"memory\"", "\"ip\"", "\"host\"", "\"10.0.0.0/8\"", "\"\""].randomElement(using: &rng) ?? "\"\""
    case 3: return "1.5"
    case 4: return "[" + (0..<Int.random(in: 0...3, using: &rng)).map { _ in randomJSON(depth: depth + 1, rng: &rng) }.joined(separator: ",") + "]"
    default:
        let fields = (0..<Int.random(in: 0...5, using: &rng)).map { _ in
            "\"\(keys.randomElement(using: &rng) ?? "x")\": \(randomJSON(depth: depth + 1, rng: &rng))"
        }
        return "{" + fields.joined(separator: ",") + "}"
    }
}
