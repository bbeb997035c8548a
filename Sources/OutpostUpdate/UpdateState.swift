#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

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
        guard let data = FileManager.default.contents(atPath: path) else {
            if FileManager.default.fileExists(atPath: path) { throw .state(path: path, reason: "cannot read the file") }
            return DeviceUpdateState()
        }
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
        try atomicWrite(bytes, to: path, directory: directory)
    }
}

/// Writes `bytes` to `path` so that a crash leaves the old or the new file, never a mix.
func atomicWrite(_ bytes: [UInt8], to path: String, directory: String) throws(UpdateError) {
    let tmp = path + ".tmp"
    var fd: Int32
    repeat { fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644) } while fd < 0 && errno == EINTR
    guard fd >= 0 else { throw .stateIO(call: "open", path: tmp, errno: errno) }
    var failure: UpdateError?
    bytes.withUnsafeBytes { raw in
        guard let base = raw.baseAddress else { return }
        var done = 0
        while done < bytes.count {
            let n = write(fd, base + done, bytes.count - done)
            if n < 0 {
                if errno == EINTR { continue }
                failure = .stateIO(call: "write", path: tmp, errno: errno)
                return
            }
            done += n
        }
    }
    if failure == nil { failure = fsyncRetrying(fd, path: tmp) }
    close(fd)
    if let failure { throw failure }
    guard rename(tmp, path) == 0 else { throw .stateIO(call: "rename", path: path, errno: errno) }
    var dfd: Int32
    repeat { dfd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC) } while dfd < 0 && errno == EINTR
    guard dfd >= 0 else { throw .stateIO(call: "open", path: directory, errno: errno) }
    defer { close(dfd) }
    if let e = fsyncRetrying(dfd, path: directory) { throw e }
}

private func fsyncRetrying(_ fd: Int32, path: String) -> UpdateError? {
    while fsync(fd) != 0 {
        if errno == EINTR { continue }
        return .stateIO(call: "fsync", path: path, errno: errno)
    }
    return nil
}
