import Foundation
import Testing
@testable import OutpostNetwork

/// libnl failures come back as one line naming the call and its target.
extension FailoverTests {
    @Test func kernelRefusalsAreOneLineErrorsNamingTheCallAndTarget() throws {
        let net = try NamespaceHarness(dhcpOn: [])
        defer { net.tearDown() }
        let messages = try NetworkNamespace.run(net.device) { () -> [String] in
            let socket = try RouteSocket()
            var out: [String] = []
            do { try socket.setLink("eth9", up: true) } catch { out.append("\(error)") }
            // An unreachable gateway: no address on eth0 yet, so the kernel refuses the nexthop.
            do {
                try socket.replaceRoute(IPv4(value: 0), prefixLength: 0, gateway: IPv4("10.77.0.1"), device: "eth0", metric: 5)
            } catch { out.append("\(error)") }
            // Deleting a route that is not there is not an error.
            try socket.deleteRoute(IPv4(value: 0), prefixLength: 0, device: "eth0", metric: 77)
            return out
        }
        #expect(messages.count == 2)
        #expect(messages.first == "link eth9: no such interface")
        #expect(messages.last?.hasPrefix("RTM_NEWROUTE default via 10.77.0.1 dev eth0 metric 5: ") == true, "\(messages)")
        #expect(messages.allSatisfy { !$0.contains("\n") })
    }
}
