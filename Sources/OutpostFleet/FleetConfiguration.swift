// Where the controller is and who may talk to it, read from the CONFIG
// partition that `outpost-controller init` writes:
//
//   CONFIG/controller-url      https://HOST:PORT (one line)
//   CONFIG/root-ca.pem         the controller's CA; the only trust anchor
//   CONFIG/onboard.cert.pem    the batch's onboarding certificate ...
//   CONFIG/onboard.key.pem     ... and its key (register only)
//   CONFIG/serial              optional: the device's serial number
//
// The client keeps its own state under PERSIST/fleet.

import OutpostHTTP

public struct FleetConfiguration: Sendable {
    /// The controller's base URL; its host is what the certificate must name.
    public var controllerURL: HTTPURL
    /// PEM file(s) of the controller CA.
    public var rootCAFile: String
    public var onboardingCertificatePEM: String
    public var onboardingKeyPEM: String
    /// CONFIG's serial, if it gives one; otherwise the identity makes one.
    public var serial: String?
    /// The client's directory on PERSIST (identity, last config, outbox, logs).
    public var stateDirectory: String
    /// The running OS version, reported at registration and in info.
    public var osVersion: String
    /// Defaults until the controller's config says otherwise.
    public var intervals = FleetIntervals()
    /// The log store's size on PERSIST.
    public var logQuotaBytes: Int = 16 << 20

    public init(controllerURL: HTTPURL, rootCAFile: String, onboardingCertificatePEM: String, onboardingKeyPEM: String,
                serial: String?, stateDirectory: String, osVersion: String) {
        self.controllerURL = controllerURL
        self.rootCAFile = rootCAFile
        self.onboardingCertificatePEM = onboardingCertificatePEM
        self.onboardingKeyPEM = onboardingKeyPEM
        self.serial = serial
        self.stateDirectory = stateDirectory
        self.osVersion = osVersion
    }

    /// Reads CONFIG; nil when it names no controller (an unmanaged device).
    public static func load(configDirectory: String, persistDirectory: String, osVersion: String) throws(FleetError) -> FleetConfiguration? {
        guard let urlText = try FleetFiles.readText(configDirectory + "/controller-url")?.trimmingWhitespace, !urlText.isEmpty else {
            return nil
        }
        let url: HTTPURL
        do { url = try HTTPURL(urlText) } catch { throw .configuration(item: "controller-url", reason: error.description) }
        guard url.scheme == .https else { throw .configuration(item: "controller-url", reason: "'\(urlText)' is not https://") }
        let ca = configDirectory + "/root-ca.pem"
        guard try FleetFiles.read(ca) != nil else { throw .configuration(item: "root-ca.pem", reason: "missing in \(configDirectory)") }
        guard let cert = try FleetFiles.readText(configDirectory + "/onboard.cert.pem") else {
            throw .configuration(item: "onboard.cert.pem", reason: "missing in \(configDirectory)")
        }
        guard let key = try FleetFiles.readText(configDirectory + "/onboard.key.pem") else {
            throw .configuration(item: "onboard.key.pem", reason: "missing in \(configDirectory)")
        }
        let serial = try FleetFiles.readText(configDirectory + "/serial")?.trimmingWhitespace
        return FleetConfiguration(controllerURL: url, rootCAFile: ca, onboardingCertificatePEM: cert, onboardingKeyPEM: key,
                                  serial: serial?.isEmpty == true ? nil : serial,
                                  stateDirectory: persistDirectory + "/fleet", osVersion: osVersion)
    }
}

/// The client's cadences; the controller's config overrides them.
public struct FleetIntervals: Sendable, Equatable {
    /// Config poll; each wait is jittered uniformly over 0.3–1× of it.
    public var config: Duration = .seconds(60)
    /// Metrics; jittered like config.
    public var metrics: Duration = .seconds(60)
    /// Full info at least this often, changed or not.
    public var info: Duration = .seconds(600)
    /// Log upload when the backlog is small; a large backlog goes at once.
    public var logs: Duration = .seconds(30)
    /// Retry bounds for info and logs after a failure, and for registration.
    public var retryMinimum: Duration = .seconds(5)
    public var retryMaximum: Duration = .seconds(900)

    public init() {}
}
