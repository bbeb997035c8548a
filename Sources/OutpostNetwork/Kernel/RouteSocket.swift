import CNetlink
import FoundationEssentials
#if canImport(Glibc)
import Glibc
#endif
import OutpostPlatform

/// Why a change to links, addresses or routes failed: the libnl call, its target, the error.
public enum NetworkApplyError: Error, Equatable, CustomStringConvertible {
    case netlink(call: String, target: String, code: Int32)
    case noSuchLink(name: String)
    case nameTaken(name: String, mac: String)
    case file(SystemError)

    public var description: String {
        switch self {
        case .netlink(let call, let target, let code): return "\(call) \(target): \(String(cString: nl_geterror(code)))"
        case .noSuchLink(let name): return "link \(name): no such interface"
        case .nameTaken(let name, let mac): return "rename \(mac) to \(name): another link is already called \(name)"
        case .file(let e): return "\(e)"
        }
    }
}

/// One NETLINK_ROUTE socket for changing the kernel's links, IPv4 addresses and routes. Links
/// and addresses go through libnl-route's objects (rtnl_link_change, rtnl_addr_add/delete).
/// Routes are RTM_NEWROUTE/RTM_DELROUTE messages built with libnl's message API (nlmsg_append,
/// nla_put) and sent with nl_send_sync, which waits for the kernel's acknowledgement: the
/// CNetlink module map does not include <netlink/route/route.h>, so rtnl_route_* is not
/// visible to Swift; the messages are the same ones rtnl_route_add/delete would send.
/// The socket belongs to the namespace of the thread that created it; one thread owns it.
final class RouteSocket {
    private let socket: OpaquePointer

    init() throws(NetworkApplyError) {
        guard let sk = nl_socket_alloc() else { throw .netlink(call: "nl_socket_alloc", target: "", code: -NLE_NOMEM) }
        let rc = nl_connect(sk, NETLINK_ROUTE)
        guard rc == 0 else { nl_socket_free(sk); throw .netlink(call: "nl_connect", target: "NETLINK_ROUTE", code: rc) }
        socket = sk
    }

    deinit { nl_socket_free(socket) }

    // MARK: links

    /// The kernel's current object for `name`; the caller puts it back.
    private func link(_ name: String) throws(NetworkApplyError) -> OpaquePointer {
        var link: OpaquePointer?
        let rc = rtnl_link_get_kernel(socket, 0, name, &link)
        if rc == -NLE_OBJ_NOTFOUND || rc == -NLE_NODEV { throw .noSuchLink(name: name) }
        guard rc == 0, let link else { throw .netlink(call: "rtnl_link_get_kernel", target: name, code: rc) }
        return link
    }

    func ifindex(_ name: String) throws(NetworkApplyError) -> Int32 {
        let l = try link(name)
        defer { rtnl_link_put(l) }
        return rtnl_link_get_ifindex(l)
    }

    /// Sets or clears IFF_UP; `rename` also renames (the kernel only renames a link that is down).
    func setLink(_ name: String, up: Bool, rename: String? = nil) throws(NetworkApplyError) {
        let current = try link(name)
        defer { rtnl_link_put(current) }
        guard let change = rtnl_link_alloc() else { throw .netlink(call: "rtnl_link_alloc", target: name, code: -NLE_NOMEM) }
        defer { rtnl_link_put(change) }
        // IFF_UP is 0x1 in <linux/if.h>; the enum clashes with <net/if.h> in Swift's Glibc import.
        if up { rtnl_link_set_flags(change, 0x1) } else { rtnl_link_unset_flags(change, 0x1) }
        if let rename { rtnl_link_set_name(change, rename) }
        let rc = rtnl_link_change(socket, current, change, 0)
        guard rc == 0 else {
            throw .netlink(call: "rtnl_link_change", target: "\(name) \(up ? "up" : "down")\(rename.map { " name \($0)" } ?? "")", code: rc)
        }
    }

    /// The link's hardware address bytes (six for Ethernet), for DHCP's chaddr.
    func hardwareAddress(_ name: String) throws(NetworkApplyError) -> [UInt8] {
        let l = try link(name)
        defer { rtnl_link_put(l) }
        guard let addr = rtnl_link_get_addr(l), let bytes = nl_addr_get_binary_addr(addr) else { return [] }
        let length = Int(nl_addr_get_len(addr))
        return Array(UnsafeRawBufferPointer(start: bytes, count: length))
    }

    /// Every link's name with its MAC address ("aa:bb:..."), for renaming by MAC.
    func linksByMAC() throws(NetworkApplyError) -> [(name: String, mac: String)] {
        var cache: OpaquePointer?
        let rc = rtnl_link_alloc_cache(socket, AF_UNSPEC, &cache)
        guard rc == 0, let cache else { throw .netlink(call: "rtnl_link_alloc_cache", target: "", code: rc) }
        defer { nl_cache_free(cache) }
        var result: [(String, String)] = []
        var object = nl_cache_get_first(cache)
        while let link = object {
            if let name = rtnl_link_get_name(link), let addr = rtnl_link_get_addr(link) {
                var buffer = [CChar](repeating: 0, count: 64)
                if let text = nl_addr2str(addr, &buffer, buffer.count) {
                    result.append((String(cString: name), String(cString: text).lowercased()))
                }
            }
            object = nl_cache_get_next(link)
        }
        return result
    }

    // MARK: addresses

    /// Adds (or refreshes) an IPv4 address without the kernel's automatic prefix route, so the
    /// caller's prefix route can carry a per-port metric. A lifetime makes the kernel drop a
    /// DHCP address by itself if the agent dies and nobody renews it.
    func addAddress(_ address: IPv4, prefixLength: Int, on name: String, lifetime: UInt32? = nil) throws(NetworkApplyError) {
        let index = try ifindex(name)
        let target = "\(address)/\(prefixLength) dev \(name)"
        guard let addr = rtnl_addr_alloc() else { throw .netlink(call: "rtnl_addr_alloc", target: target, code: -NLE_NOMEM) }
        defer { rtnl_addr_put(addr) }
        rtnl_addr_set_ifindex(addr, index)
        rtnl_addr_set_family(addr, AF_INET)
        let local = try nlAddress(address, prefixLength: prefixLength, target: target)
        defer { nl_addr_put(local) }
        var rc = rtnl_addr_set_local(addr, local)
        guard rc == 0 else { throw .netlink(call: "rtnl_addr_set_local", target: target, code: rc) }
        rtnl_addr_set_prefixlen(addr, Int32(prefixLength))
        rtnl_addr_set_flags(addr, UInt32(IFA_F_NOPREFIXROUTE))
        if let lifetime {
            rtnl_addr_set_valid_lifetime(addr, lifetime)
            rtnl_addr_set_preferred_lifetime(addr, lifetime)
        }
        rc = rtnl_addr_add(socket, addr, NLM_F_REPLACE)
        guard rc == 0 else { throw .netlink(call: "rtnl_addr_add", target: target, code: rc) }
    }

    /// Removes every IPv4 address on `name` except `keep`; routes using them go with them.
    func flushAddresses(on name: String, keeping keep: (IPv4, Int)? = nil) throws(NetworkApplyError) {
        let index = try ifindex(name)
        var cache: OpaquePointer?
        var rc = rtnl_addr_alloc_cache(socket, &cache)
        guard rc == 0, let cache else { throw .netlink(call: "rtnl_addr_alloc_cache", target: name, code: rc) }
        defer { nl_cache_free(cache) }
        var object = nl_cache_get_first(cache)
        while let addr = object {
            object = nl_cache_get_next(addr)
            guard rtnl_addr_get_family(addr) == AF_INET, rtnl_addr_get_ifindex(addr) == index else { continue }
            if let keep, let local = rtnl_addr_get_local(addr), nl_addr_get_len(local) == 4,
               let bytes = nl_addr_get_binary_addr(local) {
                let b = bytes.assumingMemoryBound(to: UInt8.self)
                if IPv4(value: UInt32(b[0]) << 24 | UInt32(b[1]) << 16 | UInt32(b[2]) << 8 | UInt32(b[3])) == keep.0,
                   rtnl_addr_get_prefixlen(addr) == Int32(keep.1) { continue }
            }
            rc = rtnl_addr_delete(socket, addr, 0)
            guard rc == 0 || rc == -NLE_NOADDR || rc == -NLE_OBJ_NOTFOUND else {
                throw .netlink(call: "rtnl_addr_delete", target: "dev \(name)", code: rc)
            }
        }
    }

    // MARK: routes

    /// Adds or replaces (NLM_F_REPLACE) the IPv4 route to `destination/prefixLength` with this
    /// metric in the main table: via `gateway`, or on-link when there is none.
    func replaceRoute(_ destination: IPv4, prefixLength: Int, gateway: IPv4?, device: String, metric: UInt32,
                      source: IPv4? = nil) throws(NetworkApplyError) {
        let target = "\(prefixLength == 0 ? "default" : "\(destination)/\(prefixLength)")\(gateway.map { " via \($0)" } ?? "") dev \(device) metric \(metric)"
        let index = try ifindex(device)
        try sendRoute(type: Int32(RTM_NEWROUTE), flags: NLM_F_CREATE | NLM_F_REPLACE, call: "RTM_NEWROUTE", target: target) { msg in
            var rtm = rtmsg()
            rtm.rtm_family = UInt8(AF_INET)
            rtm.rtm_dst_len = UInt8(prefixLength)
            rtm.rtm_table = UInt8(RT_TABLE_MAIN.rawValue)
            rtm.rtm_protocol = UInt8(RTPROT_STATIC)
            rtm.rtm_scope = UInt8(gateway == nil ? RT_SCOPE_LINK.rawValue : RT_SCOPE_UNIVERSE.rawValue)
            rtm.rtm_type = UInt8(RTN_UNICAST)
            return nlmsg_append(msg, &rtm, MemoryLayout<rtmsg>.size, Int32(NLMSG_ALIGNTO)) == 0
                && (prefixLength == 0 || putAddress(msg, Int32(RTA_DST.rawValue), destination))
                && (gateway.map { putAddress(msg, Int32(RTA_GATEWAY.rawValue), $0) } ?? true)
                && (source.map { putAddress(msg, Int32(RTA_PREFSRC.rawValue), $0) } ?? true)
                && nla_put_u32(msg, Int32(RTA_OIF.rawValue), UInt32(index)) == 0
                && nla_put_u32(msg, Int32(RTA_PRIORITY.rawValue), metric) == 0
        }
    }

    /// Deletes the route to `destination/prefixLength` with this metric (on `device` when given);
    /// a route that is already gone is not an error.
    func deleteRoute(_ destination: IPv4, prefixLength: Int, device: String?, metric: UInt32) throws(NetworkApplyError) {
        let target = "\(prefixLength == 0 ? "default" : "\(destination)/\(prefixLength)")\(device.map { " dev \($0)" } ?? "") metric \(metric)"
        var index: Int32?
        if let device {
            do { index = try ifindex(device) } catch .noSuchLink { return }
        }
        do {
            try sendRoute(type: Int32(RTM_DELROUTE), flags: 0, call: "RTM_DELROUTE", target: target) { msg in
                var rtm = rtmsg()
                rtm.rtm_family = UInt8(AF_INET)
                rtm.rtm_dst_len = UInt8(prefixLength)
                rtm.rtm_table = UInt8(RT_TABLE_MAIN.rawValue)
                rtm.rtm_scope = UInt8(RT_SCOPE_NOWHERE.rawValue)
                return nlmsg_append(msg, &rtm, MemoryLayout<rtmsg>.size, Int32(NLMSG_ALIGNTO)) == 0
                    && (prefixLength == 0 || putAddress(msg, Int32(RTA_DST.rawValue), destination))
                    && (index.map { nla_put_u32(msg, Int32(RTA_OIF.rawValue), UInt32($0)) == 0 } ?? true)
                    && nla_put_u32(msg, Int32(RTA_PRIORITY.rawValue), metric) == 0
            }
        } catch {
            if case .netlink(_, _, let code) = error, code == -NLE_OBJ_NOTFOUND { return }
            throw error
        }
    }

    private func sendRoute(type: Int32, flags: Int32, call: String, target: String,
                           _ build: (OpaquePointer) -> Bool) throws(NetworkApplyError) {
        guard let msg = nlmsg_alloc_simple(type, flags) else { throw .netlink(call: call, target: target, code: -NLE_NOMEM) }
        guard build(msg) else { nlmsg_free(msg); throw .netlink(call: call, target: target, code: -NLE_MSGSIZE) }
        // nl_send_sync frees the message and waits for the kernel's ACK or error.
        let rc = nl_send_sync(socket, msg)
        guard rc >= 0 else { throw .netlink(call: call, target: target, code: rc) }
    }

    private func nlAddress(_ address: IPv4, prefixLength: Int, target: String) throws(NetworkApplyError) -> OpaquePointer {
        var octets = address.octets
        guard let a = nl_addr_build(AF_INET, &octets, 4) else { throw .netlink(call: "nl_addr_build", target: target, code: -NLE_NOMEM) }
        nl_addr_set_prefixlen(a, Int32(prefixLength))
        return a
    }
}

private func putAddress(_ msg: OpaquePointer, _ attribute: Int32, _ address: IPv4) -> Bool {
    var octets = address.octets
    return nla_put(msg, attribute, 4, &octets) == 0
}
