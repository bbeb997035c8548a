// The app network's nftables ruleset, rendered from the instances' ACLs and
// applied in one `nft -f` transaction (the old tables are deleted in the same
// transaction, so there is never a moment without rules):
//
//   table bridge outpost_apps                     per tap, on what the app sends
//     counter <tap>.<rule> ... <tap>.drop-all      one named counter per rule, read back for status
//     set <tap>.<rule>.<n> { type ipv4_addr }      a `host` match's addresses, filled by dnsmasq's answers
//     chain input   (hook input:   app → device, and everything routed out)   iifname <tap> jump <tap>
//     chain forward (hook forward: app → app on the bridge)                   iifname <tap> jump <tap>
//     chain <tap>
//       ARP, DHCP to the server, DNS to the bridge address     accept (the implicit allows)
//       <matches> counter name "<tap>.<rule>" accept|drop      the manifest's rules, in order
//       counter name "<tap>.drop-all" drop
//
//   table ip outpost_apps_nat
//     chain postrouting (srcnat): ip saddr <subnet> oifname != <bridge> masquerade
//
// Masquerade names no uplink: whichever port the network manager made the
// default route is the one the packet leaves by, so a failover needs no rule change.

/// One rule as the ruleset names it: the tap it guards, the manifest's rule, its counter.
public struct ACLRule: Equatable, Sendable {
    public var tap: String
    public var acl: VMManifest.ACL

    /// The named counter's name: `<tap>.<rule>`; a rule name has no dot, so `drop-all` cannot collide.
    public var counterName: String { "\(tap).\(acl.name)" }
    /// The set a `host` match at `index` fills.
    public func setName(_ index: Int) -> String { "\(tap).\(acl.name).\(index)" }
}

/// The rules of one tap, in manifest order.
public struct TapACL: Equatable, Sendable {
    public var tap: String
    public var acls: [VMManifest.ACL]

    public var rules: [ACLRule] { acls.map { ACLRule(tap: tap, acl: $0) } }
    public var dropAllCounter: String { "\(tap).drop-all" }

    public init(tap: String, acls: [VMManifest.ACL]) {
        self.tap = tap
        self.acls = acls
    }
}

/// Renders the ruleset text `nft -f` takes.
public enum ACLRuleset {
    public static let filterTable = "outpost_apps"
    public static let natTable = "outpost_apps_nat"

    /// The whole ruleset for `taps` on the bridge `bridge` with address `gateway` in `subnet`.
    public static func render(bridge: String, gateway: String, subnet: IPRange, taps: [TapACL]) -> String {
        var lines: [String] = []
        // `add` then `delete` makes the delete succeed whether or not the table existed.
        lines.append("add table bridge \(filterTable)")
        lines.append("delete table bridge \(filterTable)")
        lines.append("add table ip \(natTable)")
        lines.append("delete table ip \(natTable)")
        lines.append("table bridge \(filterTable) {")
        for tap in taps {
            for rule in tap.rules {
                lines.append("    counter \(rule.counterName) {}")
                for (index, match) in rule.acl.matches.enumerated() {
                    if case .host = match { lines.append("    set \(rule.setName(index)) { type ipv4_addr; }") }
                }
            }
            lines.append("    counter \(tap.dropAllCounter) {}")
        }
        for hook in ["input", "forward"] {
            lines.append("    chain \(hook) {")
            lines.append("        type filter hook \(hook) priority 0; policy accept;")
            for tap in taps { lines.append("        iifname \(quote(tap.tap)) jump \(tap.tap)") }
            lines.append("    }")
        }
        for tap in taps {
            lines.append("    chain \(tap.tap) {")
            lines.append("        ether type arp accept")
            lines.append("        udp sport 68 udp dport 67 accept")
            lines.append("        ip daddr \(gateway) udp dport 53 accept")
            lines.append("        ip daddr \(gateway) tcp dport 53 accept")
            for rule in tap.rules {
                var expression: [String] = []
                for (index, match) in rule.acl.matches.enumerated() {
                    switch match {
                    case let .ip(range): expression.append("\(range.isIPv6 ? "ip6" : "ip") daddr \(range)")
                    case .host: expression.append("ip daddr @\(rule.setName(index))")
                    }
                }
                expression.append("counter name \(rule.counterName)")
                expression.append(rule.acl.drop ? "drop" : "accept")
                lines.append("        " + expression.joined(separator: " "))
            }
            lines.append("        counter name \(tap.dropAllCounter) drop")
            lines.append("    }")
        }
        lines.append("}")
        lines.append("table ip \(natTable) {")
        lines.append("    chain postrouting {")
        lines.append("        type nat hook postrouting priority srcnat; policy accept;")
        lines.append("        ip saddr \(subnet) oifname != \(quote(bridge)) masquerade")
        lines.append("    }")
        lines.append("}")
        return lines.joined(separator: "\n") + "\n"
    }

    /// The tables' removal, for when the app network stops.
    public static func teardown() -> String {
        "add table bridge \(filterTable)\ndelete table bridge \(filterTable)\nadd table ip \(natTable)\ndelete table ip \(natTable)\n"
    }

    /// dnsmasq's `nftset` lines: each host name with every set its answers go into.
    public static func dnsmasqSets(taps: [TapACL]) -> [String] {
        var sets: [String: [String]] = [:]
        for tap in taps {
            for rule in tap.rules {
                for (index, match) in rule.acl.matches.enumerated() {
                    if case let .host(name) = match {
                        sets[name, default: []].append("4#bridge#\(filterTable)#\(rule.setName(index))")
                    }
                }
            }
        }
        return sets.keys.sorted().map { name in "nftset=/\(name)/" + (sets[name] ?? []).joined(separator: ",") }
    }

    /// Interface names are quoted strings. Object names (counters, sets, chains) cannot be
    /// quoted in nft 1.0's grammar; they are nft identifiers as written: a tap name starts
    /// with `oa`, and rule names are letters, digits, `-` and `_` (checked when the manifest
    /// is parsed), joined by dots.
    static func quote(_ name: String) -> String { "\"\(name)\"" }
}

/// A rule's counter as status shows it: which rule, what it does, what it counted.
public struct ACLCounter: Equatable, Sendable {
    public var tap: String
    /// The manifest's rule name, or `drop-all` for the final drop.
    public var rule: String
    public var action: String
    public var packets: UInt64
    public var bytes: UInt64

    public init(tap: String, rule: String, action: String, packets: UInt64, bytes: UInt64) {
        self.tap = tap
        self.rule = rule
        self.action = action
        self.packets = packets
        self.bytes = bytes
    }

    /// Reads `nft -j list counters table bridge outpost_apps` and maps each counter to its rule.
    static func parse(json: [UInt8], taps: [TapACL]) throws(AppsError) -> [ACLCounter] {
        guard case let .object(root) = try JSONValue.parse(json, document: "nft -j list counters"),
              case let .array(items)? = root["nftables"] else {
            throw .network(operation: "nft -j list counters", reason: "no \"nftables\" list in its output")
        }
        var found: [String: (UInt64, UInt64)] = [:]
        for item in items {
            guard case let .object(entry) = item, case let .object(counter)? = entry["counter"],
                  case let .string(name)? = counter["name"] else { continue }
            found[name] = (counter["packets"]?.unsigned ?? 0, counter["bytes"]?.unsigned ?? 0)
        }
        var counters: [ACLCounter] = []
        for tap in taps {
            for rule in tap.rules {
                let (packets, bytes) = found[rule.counterName] ?? (0, 0)
                counters.append(ACLCounter(tap: tap.tap, rule: rule.acl.name, action: rule.acl.drop ? "drop" : "allow",
                                           packets: packets, bytes: bytes))
            }
            let (packets, bytes) = found[tap.dropAllCounter] ?? (0, 0)
            counters.append(ACLCounter(tap: tap.tap, rule: "drop-all", action: "drop", packets: packets, bytes: bytes))
        }
        return counters
    }
}

extension JSONValue {
    /// A non-negative whole number, as nft's counters are.
    var unsigned: UInt64? {
        if case let .integer(value) = self, value >= 0 { return UInt64(value) }
        return nil
    }
}
