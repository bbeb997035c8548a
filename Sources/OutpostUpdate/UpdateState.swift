#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import OutpostPlatform

// The little the device must remember across reboots that the GPT cannot
// hold: the anti-rollback floor, the versions that failed, the update in
// flight, and the last result for `update status`. Lives on PERSIST.

/// The device's update bookkeeping (versioned JSON on disk).
public struct DeviceUpdateState: Codable, Equatable, Sendable {
    public static let currentFormat = 1

    /// An installed bundle waiting for its boot and commit.
    public struct Pending: Codable, Equatable, Sendable {
        public var version: String
        public var securityVersion: UInt64
        public var slot: String
        public var payloadSHA256: String
        public init(version: String, securityVersion: UInt64, slot: String, payloadSHA256: String) {
            self.version = version
            self.securityVersion = securityVersion
            self.slot = slot
            self.payloadSHA256 = payloadSHA256
        }
    }

    public struct Failed: Codable, Equatable, Sendable {
        public var version: String
        public var slot: String
        public var reason: String
        public init(version: String, slot: String, reason: String) {
            self.version = version
            self.slot = slot
            self.reason = reason
        }
    }

    public enum Outcome: String, Codable, Sendable {
        case installing, installed, committed, fellBack, refused, failed
    }

    public struct Result: Codable, Equatable, Sendable {
        public var outcome: Outcome
        public var version: String?
        public var reason: String?
        public init(outcome: Outcome, version: String?, reason: String?) {
            self.outcome = outcome
            self.version = version
            self.reason = reason
        }
    }

    public var format = DeviceUpdateState.currentFormat
    /// The highest security version committed; bundles below it are refused.
    public var securityFloor: UInt64 = 0
    public var committedVersion: String?
    public var pending: Pending?
    /// Set by the agent when the test window fails, read after the fallback boot.
    public var testFailure: Failed?
    public var failed: [Failed] = []
    public var lastResult: Result?

    public init() {}

    public func failure(of version: String) -> Failed? { failed.last { $0.version == version } }
}

/// Where the state lives: a directory on PERSIST on the device, memory in the simulator.
public protocol UpdateStateStore: AnyObject {
    func load() throws(UpdateError) -> DeviceUpdateState
    /// Replaces the state atomically: after a power cut either the old or the new state is read.
    func save(_ state: DeviceUpdateState) throws(UpdateError)
}

/// State kept in memory: the power-cut simulator and unit tests.
public final class MemoryStateStore: UpdateStateStore {
    public var state: DeviceUpdateState
    public init(_ state: DeviceUpdateState = DeviceUpdateState()) { self.state = state }
    public func load() throws(UpdateError) -> DeviceUpdateState { state }
    public func save(_ state: DeviceUpdateState) throws(UpdateError) { self.state = state }
}

/// `DIR/update-state.json`, replaced by write-temp, fsync, rename, fsync-directory.
public final class DirectoryStateStore: UpdateStateStore {
    public let directory: String
    public var path: String { directory + "/update-state.json" }

    public init(directory: String) { self.directory = directory }

    public func load() throws(UpdateError) -> DeviceUpdateState {
        let bytes: [UInt8]?
        do throws(SystemError) { bytes = try FileIO.readIfPresent(path) } catch { throw .stateIO(error) }
        guard let bytes else { return DeviceUpdateState() }
        let data = Data(bytes)
        let s: DeviceUpdateState
        do { s = try JSONDecoder().decode(DeviceUpdateState.self, from: data) } catch {
            throw .state(path: path, reason: "not valid update state (\(error))")
        }
        guard s.format == DeviceUpdateState.currentFormat else {
            throw .state(path: path, reason: "format \(s.format) is not \(DeviceUpdateState.currentFormat)")
        }
        return s
    }

    public func save(_ state: DeviceUpdateState) throws(UpdateError) {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        let bytes: [UInt8]
        do { bytes = Array(try enc.encode(state)) + [0x0A] } catch {
            throw .state(path: path, reason: "cannot encode (\(error))")
        }
        do throws(SystemError) { try FileIO.writeAtomically(bytes, to: path, mode: 0o644) } catch {
            throw .stateIO(error)
        }
    }
}
