// The seed system's app description, parsed as its controller writes it:
//
//   { "acKind": "VMManifest", "acVersion": "1.1.1", "name": "...", "owner": {},
//     "enablevnc": true, "vmmode": "HV_HVM",
//     "images": [ { "imagename": "...", "maxsize": 1195376, "maxsizeUnit": "GB",
//                   "maxsizeDisplayUnit": "GB", "readonly": false, "preserve": true,
//                   "target": "Disk", "drvtype": "HDD" } ],
//     "interfaces": [ { "name": "...", "directattach": false,
//                       "acls": [ { "matches": [ { "type": "host"|"ip", "value": "..." } ],
//                                   "actions": [ { "drop": true } ], "name": "..." } ] } ],
//     "resources": [ { "name": "cpus"|"memory"|"storage", "value": N } ] }
//
// Sizes are KiB, as in the seed (memory 512000 = 500 MiB, storage and maxsize
// too); `maxsizeUnit` and `maxsizeDisplayUnit` only say how a user interface
// shows maxsize and are checked against the seed's spellings. Unknown fields are
// refused by name, so a misspelt "readOnly" cannot silently leave a disk writable.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// One app as the seed describes it: its disks, its resources and its network interfaces.
public struct VMManifest: Equatable, Sendable {
    /// How the guest is booted; the seed's names with their `HV_` prefix.
    public enum Mode: String, Sendable, CaseIterable {
        /// Hardware virtualisation with SeaBIOS: ordinary disk images.
        case hvm = "HV_HVM"
        /// Paravirtualised: a kernel and initrd given as images with targets Kernel and Initrd.
        case pv = "HV_PV"
        /// Full virtualisation with UEFI firmware (OVMF).
        case fml = "HV_FML"
        /// Old guests without virtio: AHCI disks.
        case legacy = "HV_LEGACY"
    }

    /// A disk of the app; `imageName` ties it to an image source in the instance config.
    public struct Image: Equatable, Sendable {
        public enum Target: String, Sendable, CaseIterable { case disk = "Disk", kernel = "Kernel", initrd = "Initrd", ramDisk = "RamDisk" }
        public enum DriveType: String, Sendable, CaseIterable { case hdd = "HDD", cdrom = "CDROM" }
        /// The seed's spellings of maxsizeUnit and maxsizeDisplayUnit.
        public static let units = ["KB", "MB", "GB", "TB"]

        public var imageName: String
        /// The least virtual size of the instance's disk, in bytes (the manifest gives KiB);
        /// the disk is the image's size when that is larger.
        public var maxSizeBytes: UInt64
        public var maxSizeUnit: String?
        public var maxSizeDisplayUnit: String?
        public var readOnly: Bool
        /// Keep the instance's disk across a manifest change.
        public var preserve: Bool
        public var target: Target
        public var driveType: DriveType
    }

    /// What a traffic rule matches: a host name (resolved through the device's DNS) or an address range.
    public enum Match: Equatable, Sendable {
        case host(String)
        case ip(IPRange)
    }

    /// One rule of an interface's ACL. Rules apply in manifest order, the first whose
    /// matches all hold decides; traffic no rule allows is dropped (see AppNetwork).
    public struct ACL: Equatable, Sendable {
        /// Every match must hold for the rule to apply.
        public var matches: [Match]
        /// The seed's actions: none means allow, `{"drop": true}` drops.
        public var drop: Bool
        /// The rule's name in status and its counter (`name` in the manifest, or `acl<N>`).
        public var name: String

        public init(matches: [Match], drop: Bool = false, name: String) {
            self.matches = matches
            self.drop = drop
            self.name = name
        }
    }

    public struct Interface: Equatable, Sendable {
        public var name: String
        public var directAttach: Bool
        public var acls: [ACL]
    }

    public var acKind: String
    public var acVersion: String?
    public var name: String
    public var enableVNC: Bool
    public var mode: Mode
    public var images: [Image]
    public var interfaces: [Interface]
    public var cpus: Int
    /// The guest's memory in bytes (the manifest gives KiB).
    public var memoryBytes: UInt64
    /// The app's storage allowance in bytes, when the manifest gives one.
    public var storageBytes: UInt64?

    /// Parses a manifest document on its own (a file, a command's argument).
    public init(json: [UInt8]) throws(AppsError) {
        try self.init(node: JSONNode(value: try JSONValue.parse(json, document: "manifest"), path: ""))
    }

    /// The largest KiB value taken: 2^40 KiB = 1 PiB, far beyond any edge disk, and safe to multiply by 1024.
    static let maxKiB: Int64 = 1 << 40

    init(node: JSONNode) throws(AppsError) {
        let root = try node.object(known: ["acKind", "acVersion", "name", "owner", "enablevnc", "vmmode", "images", "interfaces", "resources"])
        acKind = try root.required("acKind").choice(["VMManifest"])
        acVersion = try root.optional("acVersion")?.string
        name = try Self.name(root.required("name"))
        if let owner = root.optional("owner") {
            guard case .object = owner.value else { throw owner.fail("\(owner.value.rendered) is not an object") }
        }
        enableVNC = try root.optional("enablevnc")?.bool ?? false
        if let field = root.optional("vmmode") {
            guard let mode = Mode(rawValue: try field.choice(Mode.allCases.map(\.rawValue))) else { throw field.fail("unreachable") }
            self.mode = mode
        } else {
            mode = .hvm
        }

        let imageNodes = try root.required("images").array
        guard !imageNodes.isEmpty else { throw AppsError.invalid(field: "images", reason: "is empty; an app needs at least one image") }
        var images: [Image] = []
        for field in imageNodes { images.append(try Self.image(field)) }
        self.images = images

        var interfaces: [Interface] = []
        for field in try root.optional("interfaces")?.array ?? [] {
            let interface = try Self.interface(field)
            if interfaces.contains(where: { $0.name == interface.name }) {
                throw AppsError.invalid(field: field.child("name"), reason: "\"\(interface.name)\" names two interfaces")
            }
            interfaces.append(interface)
        }
        self.interfaces = interfaces

        var resources: [String: Int64] = [:]
        let resourceNodes = try root.required("resources").array
        for field in resourceNodes {
            let entry = try field.object(known: ["name", "value"])
            let nameField = try entry.required("name")
            let resource = try nameField.choice(["cpus", "memory", "storage"])
            guard resources[resource] == nil else { throw nameField.fail("\"\(resource)\" is given twice") }
            let range: ClosedRange<Int64> = resource == "cpus" ? 1...64 : (resource == "memory" ? 1024...Self.maxKiB : 0...Self.maxKiB)
            resources[resource] = try entry.required("value").integer(in: range)
        }
        guard let cpus = resources["cpus"] else { throw AppsError.invalid(field: "resources", reason: "has no \"cpus\" entry") }
        guard let memory = resources["memory"] else { throw AppsError.invalid(field: "resources", reason: "has no \"memory\" entry") }
        self.cpus = Int(cpus)
        memoryBytes = UInt64(memory) * 1024
        storageBytes = resources["storage"].map { UInt64($0) * 1024 }
    }

    /// A name: 1 to 256 printable characters.
    static func name(_ field: JSONNode) throws(AppsError) -> String {
        let text = try field.string
        guard !text.isEmpty, text.count <= 256 else { throw field.fail("must be 1 to 256 characters") }
        guard text.unicodeScalars.allSatisfy({ $0.value >= 0x20 && $0.value != 0x7f }) else { throw field.fail("has control characters") }
        return text
    }

    static func image(_ node: JSONNode) throws(AppsError) -> Image {
        let fields = try node.object(known: ["imagename", "maxsize", "maxsizeUnit", "maxsizeDisplayUnit", "readonly", "preserve", "target", "drvtype"])
        let target = try fields.optional("target").map { field throws(AppsError) in
            Image.Target(rawValue: try field.choice(Image.Target.allCases.map(\.rawValue))) ?? .disk
        } ?? .disk
        let driveType = try fields.optional("drvtype").map { field throws(AppsError) in
            Image.DriveType(rawValue: try field.choice(Image.DriveType.allCases.map(\.rawValue))) ?? .hdd
        } ?? .hdd
        return Image(imageName: try name(fields.required("imagename")),
                     maxSizeBytes: UInt64(try fields.optional("maxsize")?.integer(in: 0...maxKiB) ?? 0) * 1024,
                     maxSizeUnit: try fields.optional("maxsizeUnit")?.choice(Image.units),
                     maxSizeDisplayUnit: try fields.optional("maxsizeDisplayUnit")?.choice(Image.units),
                     readOnly: try fields.optional("readonly")?.bool ?? false,
                     preserve: try fields.optional("preserve")?.bool ?? false,
                     target: target, driveType: driveType)
    }

    static func interface(_ node: JSONNode) throws(AppsError) -> Interface {
        let fields = try node.object(known: ["name", "directattach", "acls"])
        var acls: [ACL] = []
        for (index, aclNode) in (try fields.optional("acls")?.array ?? []).enumerated() {
            let acl = try aclNode.object(known: ["matches", "actions", "name"])
            let matchNodes = try acl.required("matches").array
            guard !matchNodes.isEmpty else { throw aclNode.fail("has no matches") }
            var matches: [Match] = []
            for matchNode in matchNodes {
                let match = try matchNode.object(known: ["type", "value"])
                let type = try match.required("type").choice(["host", "ip"])
                let valueNode = try match.required("value")
                let value = try valueNode.string
                if type == "host" {
                    guard isHostName(value) else { throw valueNode.fail("\(valueNode.value.rendered) is not a host name") }
                    matches.append(.host(value.lowercased()))
                } else {
                    guard let range = IPRange(value) else {
                        throw valueNode.fail("\(valueNode.value.rendered) is not an address or address/prefix")
                    }
                    matches.append(.ip(range))
                }
            }
            // The seed's actions are objects with `drop`, `limit` or `portmap`; only `drop` is
            // built here, so the other two are refused by name rather than ignored.
            var drop = false
            for actionNode in try acl.optional("actions")?.array ?? [] {
                let action = try actionNode.object(known: ["drop"])
                if try action.optional("drop")?.bool == true { drop = true }
            }
            var ruleName = "acl\(index)"
            if let nameNode = acl.optional("name") {
                ruleName = try nameNode.string
                guard !ruleName.isEmpty, ruleName.utf8.count <= 32,
                      ruleName.unicodeScalars.allSatisfy({ $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || $0 == "-" || $0 == "_") })
                else { throw nameNode.fail("\(nameNode.value.rendered) is not a rule name (1 to 32 letters, digits, - or _)") }
            }
            if acls.contains(where: { $0.name == ruleName }) { throw aclNode.fail("rule name \"\(ruleName)\" is used twice") }
            acls.append(ACL(matches: matches, drop: drop, name: ruleName))
        }
        return Interface(name: try name(fields.required("name")),
                         directAttach: try fields.optional("directattach")?.bool ?? false, acls: acls)
    }

    /// A DNS name: labels of letters, digits and hyphens (underscores too, as
    /// service names use them), 1 to 63 characters each, 253 in all.
    static func isHostName(_ text: String) -> Bool {
        let name = text.hasSuffix(".") ? String(text.dropLast()) : text
        guard !name.isEmpty, name.utf8.count <= 253 else { return false }
        return name.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { label in
            !label.isEmpty && label.utf8.count <= 63 && label.first != "-" && label.last != "-"
                && label.unicodeScalars.allSatisfy { $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || $0 == "-" || $0 == "_") }
        }
    }
}

/// An IPv4 or IPv6 address range written as `address/prefix` (a bare address is a /32 or /128).
public struct IPRange: Equatable, Sendable, CustomStringConvertible {
    /// The network's address bytes (4 or 16), with the host bits cleared.
    public var address: [UInt8]
    public var prefix: Int

    public init?(_ text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2, let bytes = Self.parse(String(parts[0])) else { return nil }
        let bits = bytes.count * 8
        var prefix = bits
        if parts.count == 2 {
            guard let value = Int(parts[1]), (0...bits).contains(value), parts[1].allSatisfy(\.isNumber) else { return nil }
            prefix = value
        }
        // A range is its network: 10.1.2.3/8 means 10.0.0.0/8.
        address = bytes.enumerated().map { index, byte in
            let keep = max(0, min(8, prefix - index * 8))
            return keep == 8 ? byte : byte & ~(UInt8(0xff) >> keep)
        }
        self.prefix = prefix
    }

    public var isIPv6: Bool { address.count == 16 }

    public var description: String {
        var buffer = [CChar](repeating: 0, count: 64)
        let family = isIPv6 ? AF_INET6 : AF_INET
        let text = address.withUnsafeBytes { raw in
            inet_ntop(family, raw.baseAddress, &buffer, socklen_t(buffer.count)) != nil
                ? String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self) : "?"
        }
        return "\(text)/\(prefix)"
    }

    private static func parse(_ text: String) -> [UInt8]? {
        guard !text.isEmpty, text.utf8.count < 64 else { return nil }
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 { return withUnsafeBytes(of: v4) { Array($0) } }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 { return withUnsafeBytes(of: v6) { Array($0) } }
        return nil
    }
}
