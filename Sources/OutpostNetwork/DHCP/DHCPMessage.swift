// DHCPv4 messages (RFC 2131 §2, options from RFC 2132), encoded and decoded by hand so the
// wire format is explicit and every read is bounds-checked.
//
//     0      1      2      3
//     op     htype  hlen   hops          op 1 = BOOTREQUEST, 2 = BOOTREPLY; htype 1, hlen 6 (Ethernet)
//     xid (4)                            transaction id, chosen by the client, echoed by the server
//     secs (2)      flags (2)            flags bit 15 = BROADCAST: "I have no address yet, broadcast to me"
//     ciaddr (4)  yiaddr (4)  siaddr (4)  giaddr (4)
//     chaddr (16)  sname (64)  file (128)
//     magic cookie 99.130.83.99 (4)      offset 236
//     options: code, length, value ... 255 (end); 0 is a one-byte pad
//
// All multi-byte fields are big-endian (network order).

/// Why bytes are not a usable DHCP message; says what and at which offset.
public enum DHCPError: Error, Equatable, CustomStringConvertible {
    case truncated(length: Int)
    case badHeader(field: String, value: Int)
    case badMagicCookie
    case optionOverrun(code: UInt8, offset: Int)
    case badOptionLength(code: UInt8, length: Int)
    case missingMessageType
    case unknownMessageType(UInt8)

    public var description: String {
        switch self {
        case .truncated(let n): return "dhcp: message of \(n) bytes is shorter than the 240-byte header"
        case .badHeader(let field, let value): return "dhcp: header field \(field) is \(value)"
        case .badMagicCookie: return "dhcp: no magic cookie at offset 236"
        case .optionOverrun(let code, let offset): return "dhcp: option \(code) at offset \(offset) runs past the end"
        case .badOptionLength(let code, let length): return "dhcp: option \(code) has invalid length \(length)"
        case .missingMessageType: return "dhcp: no message type (option 53)"
        case .unknownMessageType(let t): return "dhcp: unknown message type \(t)"
        }
    }
}

/// Option 53.
public enum DHCPMessageType: UInt8, Sendable {
    case discover = 1, offer, request, decline, ack, nak, release, inform
}

/// The options this client sends or reads; others are skipped on decode.
public struct DHCPOptions: Equatable, Sendable {
    public var messageType: DHCPMessageType
    public var subnetMask: IPv4?            // 1
    public var routers: [IPv4] = []         // 3
    public var dnsServers: [IPv4] = []      // 6
    public var requestedAddress: IPv4?      // 50
    public var leaseSeconds: UInt32?        // 51
    public var serverIdentifier: IPv4?      // 54
    public var parameterRequest: [UInt8] = [] // 55
    public var renewalSeconds: UInt32?      // 58 (T1)
    public var rebindingSeconds: UInt32?    // 59 (T2)

    public init(messageType: DHCPMessageType) { self.messageType = messageType }
}

/// One DHCP message, either direction.
public struct DHCPMessage: Equatable, Sendable {
    public static let bootRequest: UInt8 = 1
    public static let bootReply: UInt8 = 2
    public static let broadcastFlag: UInt16 = 0x8000
    static let magicCookie: [UInt8] = [99, 130, 83, 99]
    /// Subnet mask, router, DNS, lease time, server id, T1, T2.
    public static let requestedParameters: [UInt8] = [1, 3, 6, 51, 54, 58, 59]

    public var op: UInt8
    public var xid: UInt32
    public var secs: UInt16 = 0
    public var flags: UInt16 = 0
    public var ciaddr = IPv4(value: 0)
    public var yiaddr = IPv4(value: 0)
    public var siaddr = IPv4(value: 0)
    public var giaddr = IPv4(value: 0)
    /// The client's hardware address (6 bytes for Ethernet).
    public var chaddr: [UInt8]
    public var options: DHCPOptions

    public init(op: UInt8, xid: UInt32, chaddr: [UInt8], options: DHCPOptions) {
        self.op = op
        self.xid = xid
        self.chaddr = chaddr
        self.options = options
    }

    // MARK: encode

    /// The wire bytes, padded to the 300-byte BOOTP minimum some servers insist on.
    public func encoded() -> [UInt8] {
        var b: [UInt8] = [op, 1, 6, 0]
        b.appendBigEndian(xid)
        b.appendBigEndian(secs)
        b.appendBigEndian(flags)
        for a in [ciaddr, yiaddr, siaddr, giaddr] { b += a.octets }
        var hw = Array(chaddr.prefix(16))
        hw += [UInt8](repeating: 0, count: 16 - hw.count)
        b += hw
        b += [UInt8](repeating: 0, count: 64 + 128)
        b += Self.magicCookie
        let o = options
        b += [53, 1, o.messageType.rawValue]
        if let v = o.requestedAddress { b += [50, 4] + v.octets }
        if let v = o.serverIdentifier { b += [54, 4] + v.octets }
        if !o.parameterRequest.isEmpty { b += [55, UInt8(min(o.parameterRequest.count, 255))] + o.parameterRequest.prefix(255) }
        if let v = o.subnetMask { b += [1, 4] + v.octets }
        if !o.routers.isEmpty { b += addressList(3, o.routers) }
        if !o.dnsServers.isEmpty { b += addressList(6, o.dnsServers) }
        for (code, value) in [(UInt8(51), o.leaseSeconds), (58, o.renewalSeconds), (59, o.rebindingSeconds)] {
            if let value { b += [code, 4]; b.appendBigEndian(value) }
        }
        b.append(255)
        if b.count < 300 { b += [UInt8](repeating: 0, count: 300 - b.count) }
        return b
    }

    private func addressList(_ code: UInt8, _ list: [IPv4]) -> [UInt8] {
        let capped = list.prefix(63)
        return [code, UInt8(capped.count * 4)] + capped.flatMap(\.octets)
    }

    // MARK: decode

    /// Parses a message; any inconsistency is an error, never a trap.
    public init(decoding bytes: [UInt8]) throws(DHCPError) {
        guard bytes.count >= 240 else { throw .truncated(length: bytes.count) }
        guard bytes[0] == Self.bootRequest || bytes[0] == Self.bootReply else { throw .badHeader(field: "op", value: Int(bytes[0])) }
        guard bytes[1] == 1 else { throw .badHeader(field: "htype", value: Int(bytes[1])) }
        guard bytes[2] == 6 else { throw .badHeader(field: "hlen", value: Int(bytes[2])) }
        guard Array(bytes[236..<240]) == Self.magicCookie else { throw .badMagicCookie }
        op = bytes[0]
        xid = bytes.bigEndianUInt32(at: 4)
        secs = UInt16(bytes[8]) << 8 | UInt16(bytes[9])
        flags = UInt16(bytes[10]) << 8 | UInt16(bytes[11])
        ciaddr = IPv4(value: bytes.bigEndianUInt32(at: 12))
        yiaddr = IPv4(value: bytes.bigEndianUInt32(at: 16))
        siaddr = IPv4(value: bytes.bigEndianUInt32(at: 20))
        giaddr = IPv4(value: bytes.bigEndianUInt32(at: 24))
        chaddr = Array(bytes[28..<34])

        var type: DHCPMessageType?
        var o = DHCPOptions(messageType: .discover)
        var i = 240
        while i < bytes.count {
            let code = bytes[i]
            if code == 0 { i += 1; continue }
            if code == 255 { break }
            guard i + 1 < bytes.count else { throw .optionOverrun(code: code, offset: i) }
            let length = Int(bytes[i + 1])
            guard i + 2 + length <= bytes.count else { throw .optionOverrun(code: code, offset: i) }
            let value = Array(bytes[(i + 2)..<(i + 2 + length)])
            func single() throws(DHCPError) -> IPv4 {
                guard length == 4 else { throw .badOptionLength(code: code, length: length) }
                return IPv4(value: value.bigEndianUInt32(at: 0))
            }
            func list() throws(DHCPError) -> [IPv4] {
                guard length >= 4, length % 4 == 0 else { throw .badOptionLength(code: code, length: length) }
                return stride(from: 0, to: length, by: 4).map { IPv4(value: value.bigEndianUInt32(at: $0)) }
            }
            func seconds() throws(DHCPError) -> UInt32 {
                guard length == 4 else { throw .badOptionLength(code: code, length: length) }
                return value.bigEndianUInt32(at: 0)
            }
            switch code {
            case 53:
                guard length == 1 else { throw .badOptionLength(code: code, length: length) }
                guard let t = DHCPMessageType(rawValue: value[0]) else { throw .unknownMessageType(value[0]) }
                type = t
            case 1: o.subnetMask = try single()
            case 3: o.routers = try list()
            case 6: o.dnsServers = try list()
            case 50: o.requestedAddress = try single()
            case 51: o.leaseSeconds = try seconds()
            case 54: o.serverIdentifier = try single()
            case 55: o.parameterRequest = value
            case 58: o.renewalSeconds = try seconds()
            case 59: o.rebindingSeconds = try seconds()
            default: break
            }
            i += 2 + length
        }
        guard let type else { throw .missingMessageType }
        o.messageType = type
        options = o
    }
}

extension [UInt8] {
    mutating func appendBigEndian<T: FixedWidthInteger>(_ value: T) {
        for shift in stride(from: T.bitWidth - 8, through: 0, by: -8) { append(UInt8(truncatingIfNeeded: value >> shift)) }
    }

    /// Callers check bounds first.
    func bigEndianUInt32(at offset: Int) -> UInt32 {
        UInt32(self[offset]) << 24 | UInt32(self[offset + 1]) << 16 | UInt32(self[offset + 2]) << 8 | UInt32(self[offset + 3])
    }
}
