import Foundation
import OutpostTestSupport
import Testing
@testable import OutpostNetwork

private let mac: [UInt8] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]

private func ack(lease: UInt32? = 120, t1: UInt32? = nil, t2: UInt32? = nil) -> DHCPMessage {
    var o = DHCPOptions(messageType: .ack)
    o.subnetMask = IPv4("255.255.255.0")
    o.routers = [IPv4("10.1.0.1")!]
    o.dnsServers = [IPv4("10.1.0.53")!, IPv4("10.1.0.54")!]
    o.serverIdentifier = IPv4("10.1.0.1")
    o.leaseSeconds = lease
    o.renewalSeconds = t1
    o.rebindingSeconds = t2
    var m = DHCPMessage(op: DHCPMessage.bootReply, xid: 0xDEADBEEF, chaddr: mac, options: o)
    m.yiaddr = IPv4("10.1.0.100")!
    return m
}

@Test func discoverHasTheRFC2131LayoutBroadcastFlagAndParameterList() {
    var d = DHCPMessage(op: DHCPMessage.bootRequest, xid: 0x01020304, chaddr: mac, options: DHCPOptions(messageType: .discover))
    d.flags = DHCPMessage.broadcastFlag
    d.options.parameterRequest = DHCPMessage.requestedParameters
    let b = d.encoded()
    #expect(b.count == 300)
    #expect(Array(b[0..<4]) == [1, 1, 6, 0])                 // BOOTREQUEST, Ethernet, hlen 6, hops 0
    #expect(Array(b[4..<8]) == [1, 2, 3, 4])                 // xid, big-endian
    #expect(Array(b[10..<12]) == [0x80, 0x00])               // BROADCAST flag
    #expect(Array(b[28..<34]) == mac)                        // chaddr
    #expect(b[34..<44].allSatisfy { $0 == 0 })               // chaddr padding
    #expect(Array(b[236..<240]) == [99, 130, 83, 99])        // magic cookie
    #expect(Array(b[240..<243]) == [53, 1, 1])               // DHCPDISCOVER
    #expect(Array(b[243..<252]) == [55, 7, 1, 3, 6, 51, 54, 58, 59])
    #expect(b[252] == 255)
}

@Test func ackRoundTripsThroughEncodeAndDecode() throws {
    let m = ack(lease: 3600, t1: 1000, t2: 3000)
    let decoded = try DHCPMessage(decoding: m.encoded())
    #expect(decoded == m)
}

@Test func leaseTimersDefaultToHalfAndSevenEighthsAndPhasesFollow() throws {
    let t0 = ContinuousClock.now
    let lease = try #require(DHCPLease(ack: ack(lease: 120), at: t0))
    #expect(lease.prefixLength == 24 && lease.router == IPv4("10.1.0.1") && lease.dns.count == 2)
    #expect(lease.renewAfter == .seconds(60) && lease.rebindAfter == .seconds(105))
    #expect(lease.phase(at: t0 + .seconds(59)) == .bound)
    #expect(lease.phase(at: t0 + .seconds(60)) == .renewing)
    #expect(lease.phase(at: t0 + .seconds(105)) == .rebinding)
    #expect(lease.phase(at: t0 + .seconds(120)) == .expired)
    #expect(lease.nextDeadline(at: t0) == t0 + .seconds(60))
    #expect(lease.secondsLeft(at: t0 + .seconds(20)) == 100)
}

@Test func serverTimersAreKeptOnlyWhenOrdered() throws {
    let t0 = ContinuousClock.now
    let good = try #require(DHCPLease(ack: ack(lease: 100, t1: 10, t2: 20), at: t0))
    #expect(good.renewAfter == .seconds(10) && good.rebindAfter == .seconds(20))
    let bad = try #require(DHCPLease(ack: ack(lease: 100, t1: 90, t2: 500), at: t0))
    #expect(bad.rebindAfter == .seconds(87.5) && bad.renewAfter! <= bad.rebindAfter!)
    let infinite = try #require(DHCPLease(ack: ack(lease: .max), at: t0))
    #expect(infinite.phase(at: t0 + .seconds(1_000_000)) == .bound && infinite.nextDeadline(at: t0) == nil)
}

@Test func ackWithoutServerIdentifierIsNotALease() {
    var m = ack()
    m.options.serverIdentifier = nil
    #expect(DHCPLease(ack: m, at: .now) == nil)
}

/// Damaged variants of a valid ACK, each with the words its error must contain.
private func damaged(_ name: String) -> [UInt8] {
    var b = ack().encoded()
    switch name {
    case "short": b = Array(b.prefix(100))
    case "cookie": b[236] = 0
    case "htype": b[1] = 6
    case "overrun": b = Array(b.prefix(243)) + [3, 200, 10]
    case "router length": b = Array(b.prefix(243)) + [3, 3, 10, 0, 0, 255]
    case "no type": b = Array(b.prefix(240)) + [255]
    case "bad type": b[242] = 99
    default: break
    }
    return b
}

@Test(arguments: [
    ("short", "shorter than the 240-byte header"),
    ("cookie", "magic cookie"),
    ("htype", "htype"),
    ("overrun", "runs past the end"),
    ("router length", "option 3 has invalid length 3"),
    ("no type", "no message type"),
    ("bad type", "unknown message type 99"),
])
func malformedMessageIsAOneLineErrorNamingTheProblem(name: String, expected: String) {
    do {
        _ = try DHCPMessage(decoding: damaged(name))
        Issue.record("\(name): accepted")
    } catch {
        #expect(error.description.contains(expected), "\(name): \(error)")
        #expect(error.description.hasPrefix("dhcp: ") && !error.description.contains("\n"))
    }
}

/// Every hundredth round decodes the unmutated ACK, which must succeed: a decoder that
/// refused everything fails here.
@Test func randomAndMutatedBytesNeverCrashTheDecoder() {
    var rng = SplitMix64.forTest()
    let base = ack(lease: 3600, t1: 100, t2: 200).encoded()
    var accepted = 0
    for i in 0..<5000 {
        var bytes: [UInt8]
        if i % 100 == 0 {
            bytes = base
        } else if i % 2 == 0 {
            bytes = base
            for _ in 0..<Int.random(in: 1...16, using: &rng) {
                bytes[Int.random(in: 236..<bytes.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
            }
            bytes = Array(bytes.prefix(Int.random(in: 0...bytes.count, using: &rng)))
        } else {
            bytes = (0..<Int.random(in: 0...600, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        }
        if let m = try? DHCPMessage(decoding: bytes) {
            accepted += 1
            _ = DHCPLease(ack: m, at: .now)
        } else if i % 100 == 0 {
            Issue.record("the unmutated ACK was refused (seed \(rng.seed))")
        }
    }
    #expect(accepted < 5000)
    #expect(accepted >= 50, "accepted \(accepted) (seed \(rng.seed))")
}
