import Foundation
import OutpostTestSupport
import OutpostHTTP
import OutpostPlatform
import Testing
@testable import OutpostFleet

@Suite("Fleet: controller link over mutual TLS")
struct LinkTests {
    @Test func deviceCertificateIsPresentedAndABrokenRouteFallsThroughToTheNext() throws {
        let tmp = try TemporaryDirectory("link")
        let (configuration, pki) = try makeConfigAndPKI(tmp.path, url: "https://127.0.0.1:9/")
        let identity = try SoftwareIdentity.loadOrCreate(directory: tmp.path + "/fleet", serial: "SN-LINK")
        // The server trusts exactly the device's self-signed certificate.
        let server = try MutualTLSEchoServer(dir: tmp.path, pki: pki, clientTrust: tmp.path + "/fleet/device.cert.pem")
        let url = try HTTPURL("https://127.0.0.1:\(server.port)/")
        let routes: [ControllerRoute] = [ControllerRoute(device: "nosuchport0"), .direct]
        let link = ControllerLink(baseURL: url, routes: { routes }, connectTimeout: .seconds(5), callTimeout: .seconds(10))
        let tls = try identity.tlsContext(trusting: [configuration.rootCAFile])
        let answer = try link.call(APIPath.ping, body: [1, 2, 3], tls: tls)
        #expect(answer.status == 200)
        #expect(String(decoding: answer.body, as: UTF8.self) == "SN-LINK")
        #expect(link.currentRoute == .direct)
        #expect(link.lastAnswered != nil)
        // The route that worked is tried first next time.
        #expect(link.orderedRoutes().first == .direct)

        // The onboarding certificate is not what this server trusts: refused
        // in the handshake, one line naming the endpoint.
        let onboarding = try TLSContext(caFiles: [configuration.rootCAFile], systemDefaults: false,
                                        client: TLSClientCertificate(certificatePEM: configuration.onboardingCertificatePEM,
                                                                     privateKeyPEM: configuration.onboardingKeyPEM, label: "onboarding"))
        do {
            _ = try link.call(APIPath.register, tls: onboarding)
            Issue.record("a certificate the server does not trust was accepted")
        } catch {
            #expect(error.description.contains(APIPath.register) && !error.description.contains("\n"), "\(error)")
        }

        // A server certificate from another CA is refused by the device.
        let distrusting = try identity.tlsContext(trusting: [pki.otherCA])
        do {
            _ = try link.call(APIPath.ping, tls: distrusting)
            Issue.record("a controller from another CA was trusted")
        } catch {
            #expect(error.description.contains("not trusted") || error.description.contains("certificate"), "\(error)")
        }
    }

    @Test func metricsFromThisHostHaveMemoryUptimeAndPorts() {
        let collector = MetricsCollector(persistPath: "/")
        _ = collector.sample(watchdog: nil)
        let sample = collector.sample(watchdog: nil)
        #expect(sample.memoryTotalBytes > 0 && sample.memoryUsedBytes <= sample.memoryTotalBytes)
        #expect(sample.uptimeS > 0)
        #expect(sample.persistTotalBytes > 0)
        #expect(sample.cpuPercent >= 0 && sample.cpuPercent <= 100)
        #expect(!sample.ports.contains { $0.name == "lo" })
    }
}
