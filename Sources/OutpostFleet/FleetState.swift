// The client's small durable state on PERSIST, each file replaced atomically:
//
//   fleet/registration      the controller's device id once registered
//   fleet/config.pb         the last good ConfigResponse (config + hash)
//   fleet/handled.pb        HandledCounters: the last command counters acted on
//   fleet/network-push.pb   NetworkPushResult of the last pushed network config

import OutpostProto
import SwiftProtobuf

struct FleetState {
    let directory: String

    var registrationPath: String { directory + "/registration" }
    var configPath: String { directory + "/config.pb" }
    var handledPath: String { directory + "/handled.pb" }
    var networkPushPath: String { directory + "/network-push.pb" }

    func deviceID() throws(FleetError) -> String? {
        try FleetFiles.readText(registrationPath)?.trimmingWhitespace
    }

    func saveDeviceID(_ id: String) throws(FleetError) {
        try FleetFiles.write(Array((id + "\n").utf8), to: registrationPath)
    }

    func forgetRegistration() throws(FleetError) { try FleetFiles.remove(registrationPath) }

    func lastGoodConfig() throws(FleetError) -> Outpost_Api_V1_ConfigResponse? {
        try load(Outpost_Api_V1_ConfigResponse.self, configPath, what: "stored config")
    }

    func saveConfig(_ response: Outpost_Api_V1_ConfigResponse) throws(FleetError) { try save(response, configPath) }

    /// nil before the first config: counters are then recorded without acting.
    func handled() throws(FleetError) -> Outpost_Api_V1_HandledCounters? {
        try load(Outpost_Api_V1_HandledCounters.self, handledPath, what: "handled counters")
    }

    func saveHandled(_ counters: Outpost_Api_V1_HandledCounters) throws(FleetError) { try save(counters, handledPath) }

    func networkPush() throws(FleetError) -> Outpost_Api_V1_NetworkPushResult? {
        try load(Outpost_Api_V1_NetworkPushResult.self, networkPushPath, what: "network push result")
    }

    func saveNetworkPush(_ result: Outpost_Api_V1_NetworkPushResult) throws(FleetError) { try save(result, networkPushPath) }

    private func load<M: SwiftProtobuf.Message>(_ type: M.Type, _ path: String, what: String) throws(FleetError) -> M? {
        guard let bytes = try FleetFiles.read(path, limit: 8 << 20) else { return nil }
        do { return try M(serializedBytes: bytes) } catch { throw .malformed(what: "\(what) \(path)", detail: "\(error)") }
    }

    private func save(_ message: some SwiftProtobuf.Message, _ path: String) throws(FleetError) {
        let bytes: [UInt8]
        do { bytes = try message.serializedBytes() } catch { throw .malformed(what: path, detail: "\(error)") }
        try FleetFiles.write(bytes, to: path)
    }
}
