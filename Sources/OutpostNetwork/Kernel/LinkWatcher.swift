import CNetlink
import FoundationEssentials
#if canImport(Glibc)
import Glibc
#endif
import OutpostPlatform

/// Why talking to the kernel failed; names the libnl or system call and its error.
public enum NetlinkError: Error, Equatable, CustomStringConvertible {
    case libnl(call: String, code: Int32)
    case system(SystemError)

    public var description: String {
        switch self {
        case .libnl(let call, let code): return "netlink: \(call): \(String(cString: nl_geterror(code)))"
        case .system(let error): return error.description
        }
    }
}

/// The link facts the port selector needs, as the kernel last reported them.
public struct LinkState: Equatable, Sendable {
    /// IFF_LOWER_UP: the driver reports L1 up (for veth: the peer is up).
    public var carrier = false
    /// IPv4 addresses currently on the link, as text.
    public var ipv4: Set<String> = []
}

/// Watches links and IPv4 addresses through a NETLINK_ROUTE socket subscribed to
/// RTNLGRP_LINK and RTNLGRP_IPV4_IFADDR. The kernel pushes every change; nothing polls.
/// The socket is non-blocking: the owner waits on `fileDescriptor` (with its own wake-up
/// pipe) and calls `drain()` when it is readable. Not thread-safe: one thread owns it.
public final class LinkWatcher {
    private let socket: OpaquePointer
    private var names: [Int32: String] = [:]
    public private(set) var links: [String: LinkState] = [:]
    /// Message type being parsed; cache dumps report RTM_NEW*.
    private var messageType = Int32(RTM_NEWLINK)
    private var changed: Set<String> = []
    /// Links reported without carrier, or whose carrier-change counter moved while the
    /// carrier looked the same, during the current drain.
    private var lostCarrier: Set<String> = []
    /// IFLA_CARRIER_CHANGES per link as last reported: the kernel counts every transition,
    /// even those its link-event batching never reports one by one.
    private var carrierChanges: [String: UInt32] = [:]
    /// After `drain()`: links that lost carrier and got it back within that one batch of
    /// events, or whose loss the kernel folded away entirely (a 50 ms cut reported only as
    /// "still up", with the counter two higher). Their final state looks unchanged, but the
    /// link bounced, and a selector that never saw the loss would count a flapping link as
    /// stable.
    public private(set) var bounced: Set<String> = []

    /// Opens, subscribes and then dumps the current state, so no change between the two is lost.
    /// Must run in the network namespace to watch: the socket binds to the caller's namespace.
    public init() throws(NetlinkError) {
        guard let sk = nl_socket_alloc() else { throw .libnl(call: "nl_socket_alloc", code: -NLE_NOMEM) }
        socket = sk
        nl_socket_disable_seq_check(sk)
        var rc = nl_connect(sk, NETLINK_ROUTE)
        guard rc == 0 else { nl_socket_free(sk); throw .libnl(call: "nl_connect(NETLINK_ROUTE)", code: rc) }
        for group in [RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR] {
            rc = nl_socket_add_membership(sk, Int32(group.rawValue))
            guard rc == 0 else { nl_socket_free(sk); throw .libnl(call: "nl_socket_add_membership(\(group.rawValue))", code: rc) }
        }
        rc = nl_socket_set_nonblocking(sk)
        guard rc == 0 else { nl_socket_free(sk); throw .libnl(call: "nl_socket_set_nonblocking", code: rc) }
        // The callback gets an unretained self: the socket never outlives this object.
        let context = Unmanaged.passUnretained(self).toOpaque()
        nl_socket_modify_cb(sk, NL_CB_VALID, NL_CB_CUSTOM, { msg, arg in
            guard let msg, let arg else { return Int32(NL_OK.rawValue) }
            let watcher = Unmanaged<LinkWatcher>.fromOpaque(arg).takeUnretainedValue()
            watcher.messageType = Int32(nlmsg_hdr(msg).pointee.nlmsg_type)
            nl_msg_parse(msg, LinkWatcher.parseObject, arg)
            return Int32(NL_OK.rawValue)
        }, context)
        try dumpCurrentState()
    }

    deinit { nl_socket_free(socket) }

    /// The descriptor to poll for readability.
    public var fileDescriptor: Int32 { nl_socket_get_fd(socket) }

    /// Reads every queued event; returns the names of links whose state changed.
    public func drain() throws(NetlinkError) -> Set<String> {
        changed = []
        lostCarrier = []
        defer { bounced = lostCarrier.filter { links[$0]?.carrier == true } }
        while true {
            let rc = nl_recvmsgs_default(socket)
            if rc >= 0 { continue }
            if rc == -NLE_AGAIN { break }
            if rc == -NLE_INTR { continue }
            // An overrun loses events: re-dump so the state is right again.
            if rc == -NLE_NOMEM || rc == -NLE_DUMP_INTR { try dumpCurrentState(); break }
            throw .libnl(call: "nl_recvmsgs_default", code: rc)
        }
        return changed
    }

    private func dumpCurrentState() throws(NetlinkError) {
        guard let dumper = nl_socket_alloc() else { throw .libnl(call: "nl_socket_alloc", code: -NLE_NOMEM) }
        defer { nl_socket_free(dumper) }
        var rc = nl_connect(dumper, NETLINK_ROUTE)
        guard rc == 0 else { throw .libnl(call: "nl_connect(NETLINK_ROUTE)", code: rc) }
        let context = Unmanaged.passUnretained(self).toOpaque()
        var linkCache: OpaquePointer?
        rc = rtnl_link_alloc_cache(dumper, AF_UNSPEC, &linkCache)
        guard rc == 0, let linkCache else { throw .libnl(call: "rtnl_link_alloc_cache", code: rc) }
        defer { nl_cache_free(linkCache) }
        links = [:]
        names = [:]
        messageType = Int32(RTM_NEWLINK)
        nl_cache_foreach(linkCache, LinkWatcher.parseObject, context)
        var addrCache: OpaquePointer?
        rc = rtnl_addr_alloc_cache(dumper, &addrCache)
        guard rc == 0, let addrCache else { throw .libnl(call: "rtnl_addr_alloc_cache", code: rc) }
        defer { nl_cache_free(addrCache) }
        messageType = Int32(RTM_NEWADDR)
        nl_cache_foreach(addrCache, LinkWatcher.parseObject, context)
        changed = Set(links.keys)
    }

    /// libnl hands each parsed object here, whether from an event or a cache dump.
    private static let parseObject: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?) -> Void = { object, arg in
        guard let object, let arg, let type = nl_object_get_type(object) else { return }
        let watcher = Unmanaged<LinkWatcher>.fromOpaque(arg).takeUnretainedValue()
        switch String(cString: type) {
        case "route/link": watcher.handleLink(object)
        case "route/addr": watcher.handleAddress(object)
        default: break
        }
    }

    private func handleLink(_ link: OpaquePointer) {
        let index = rtnl_link_get_ifindex(link)
        guard let cName = rtnl_link_get_name(link) else { return }
        let name = String(cString: cName)
        if let old = names[index], old != name { links[old] = nil; changed.insert(old) }
        names[index] = name
        var state = links[name] ?? LinkState()
        if messageType == Int32(RTM_DELLINK) {
            state.carrier = false
            state.ipv4 = []
            names[index] = nil
        } else {
            state.carrier = rtnl_link_get_flags(link) & OutpostNetlink_IFF_LOWER_UP != 0
        }
        if !state.carrier { lostCarrier.insert(name) }
        var changes: UInt32 = 0
        if messageType != Int32(RTM_DELLINK), rtnl_link_get_carrier_changes(link, &changes) == 0 {
            // Carrier up now and unchanged since the last report, yet the counter moved: it
            // went down and came back in between.
            if let before = carrierChanges[name], changes != before, state.carrier, links[name]?.carrier == true {
                lostCarrier.insert(name)
            }
            carrierChanges[name] = changes
        } else if messageType == Int32(RTM_DELLINK) {
            carrierChanges[name] = nil
        }
        if links[name] != state { changed.insert(name) }
        links[name] = state
    }

    private func handleAddress(_ addr: OpaquePointer) {
        guard rtnl_addr_get_family(addr) == AF_INET, let name = names[rtnl_addr_get_ifindex(addr)],
              let local = rtnl_addr_get_local(addr) else { return }
        var buffer = [CChar](repeating: 0, count: 64)
        guard let text = nl_addr2str(local, &buffer, buffer.count) else { return }
        let address = String(cString: text)
        var state = links[name] ?? LinkState()
        if messageType == Int32(RTM_DELADDR) { state.ipv4.remove(address) } else { state.ipv4.insert(address) }
        if links[name] != state { changed.insert(name) }
        links[name] = state
    }
}
