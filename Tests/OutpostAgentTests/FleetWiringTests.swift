import Foundation
import OutpostBundle
import OutpostDisk
import OutpostTestSupport
import OutpostUpdate
import Synchronization
import Testing
@testable import OutpostAgent
@testable import OutpostEarlyBoot

// The agent's side of the controller client: the console buffer that keeps
// early lines for the log store, the log tagging, the retry-counter rule for
// controller updates, and the status document's `fleet` object. The whole
// path runs in QEMU (OutpostSystemTests/FleetTests).

@Test func consoleLinesPrintedBeforeTheClientReachItInOrderAndTheBufferIsBounded() {
    var tap = Console.Tap()
    tap.limit = 3
    for i in 1...5 { #expect(tap.route(Console.Line(message: "line \(i)", timeUnixMs: UInt64(i))) == nil) }
    let seen = Mutex<[String]>([])
    let sink: Console.Sink = { line in seen.withLock { $0.append(line.message) } }
    let replay = tap.attach(sink, now: 99)
    #expect(replay.map(\.message) == ["line 1", "line 2", "line 3",
                                      "warning: 2 console lines printed before the controller client started were dropped"])
    #expect(replay.map(\.timeUnixMs) == [1, 2, 3, 99], "buffered lines keep the time they were printed")
    // Afterwards every line goes straight to the sink, nothing is buffered.
    let line = Console.Line(message: "after", timeUnixMs: 7)
    tap.route(line)?(line)
    #expect(seen.withLock { $0 } == ["after"])
    #expect(tap.buffer.isEmpty)
}

@Test func anUnmanagedDeviceStopsBufferingConsoleLines() {
    var tap = Console.Tap()
    _ = tap.route(Console.Line(message: "early", timeUnixMs: 1))
    tap.discard()
    for i in 0..<10 { #expect(tap.route(Console.Line(message: "\(i)", timeUnixMs: 0)) == nil) }
    #expect(tap.buffer.isEmpty && tap.dropped == 0)
}

@Test func consoleLinesAreTaggedByTheirComponentAndSeverity() {
    #expect(FleetComponent.classify("update: committed version=2.0.0 slot=IMGB") == ("update", .info, "committed version=2.0.0 slot=IMGB"))
    #expect(FleetComponent.classify("warning: network: no usable port") == ("network", .warning, "no usable port"))
    #expect(FleetComponent.classify("error: cannot mount PERSIST") == ("outpostd", .error, "cannot mount PERSIST"))
    #expect(FleetComponent.classify("app:counter: outpost-app: boot 1") == ("app:counter", .info, "outpost-app: boot 1"))
    #expect(FleetComponent.classify("warning: app:web-1: 3 console lines not sent") == ("app:web-1", .warning, "3 console lines not sent"))
    #expect(FleetComponent.classify("app:Bad Name: x") == ("outpostd", .info, "app:Bad Name: x"))
    #expect(FleetComponent.classify("apps: counter: running") == ("apps", .info, "counter: running"))
    #expect(FleetComponent.classify("ready slot=IMGA version=1.0.0 last-boot=first-boot")
            == ("outpostd", .info, "ready slot=IMGA version=1.0.0 last-boot=first-boot"))
    #expect(FleetComponent.classify("updated things") == ("outpostd", .info, "updated things"), "a word that only starts like a source")
    #expect(FleetComponent.classify("fleet:no space") == ("outpostd", .info, "fleet:no space"), "a source word needs ': '")
}

/// An update service over a throwaway disk file and state directory; the
/// engine's store says `failed` versions failed before.
private func serviceAndEngine(failed: [String]) throws -> (UpdateService, UpdateEngine, String) {
    let dir = try TemporaryDirectory.create("controller-updates")
    var paths = UpdatePaths()
    paths.stateDirectory = dir
    paths.vaultDirectory = dir + "/vault"
    let disk = dir + "/disk.img"
    FileManager.default.createFile(atPath: disk, contents: Data(count: 1 << 20))
    let service = UpdateService(diskPath: disk, bootedPartUUID: "", version: "1.0.0", paths: paths)
    var state = DeviceUpdateState()
    state.failed = failed.map { .init(version: $0, slot: "IMGB", reason: "test window: no controller") }
    let engine = UpdateEngine(device: try FileBlockDevice(path: disk, writable: false), store: MemoryStateStore(state),
                              trust: TrustStore(anchors: []), identity: OutpostUpdate.DeviceIdentity(board: "generic-efi", arch: "x86_64"))
    return (service, engine, dir)
}

@Test func aFailedVersionFromTheControllerWaitsForTheRetryCounterToChange() throws {
    let (service, engine, dir) = try serviceAndEngine(failed: ["3.0.0"])
    defer { try? FileManager.default.removeItem(atPath: dir) }
    func request(_ version: String, retry: UInt32) -> ControllerUpdateRequest {
        ControllerUpdateRequest(version: version, bundleURL: "https://10.0.2.2:8443/api/v1/bundles/x", activate: true,
                                retryCounter: retry, size: 0)
    }
    // A version that never failed: tried, not forced.
    #expect(try service.mayAttempt(request("2.0.0", retry: 0), engine: engine) == false)
    // 3.0.0 failed while counter 0 was current: skipped, and said so.
    #expect(try service.mayAttempt(request("3.0.0", retry: 0), engine: engine) == nil, "same counter: skipped")
    #expect(service.progress.step == .failed && service.progress.reason.contains("until the retry counter changes"))
    #expect(try service.mayAttempt(request("3.0.0", retry: 0), engine: engine) == nil, "and again")
    // The controller bumps the counter: tried again, forced past the engine's own refusal.
    #expect(try service.mayAttempt(request("3.0.0", retry: 1), engine: engine) == true)
    #expect(try service.mayAttempt(request("3.0.0", retry: 1), engine: engine) == nil, "failed again at counter 1: skipped")
}

@Test func aFailureFromOtherMediaBelongsToTheCurrentRetryCounter() throws {
    // 4.0.0 failed with no controller attempt on record (a USB bundle): the
    // controller's current counter does not retry it; the next one does.
    let (service, engine, dir) = try serviceAndEngine(failed: ["4.0.0"])
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let r5 = ControllerUpdateRequest(version: "4.0.0", bundleURL: "https://h/b", activate: true, retryCounter: 5, size: 0)
    #expect(try service.mayAttempt(r5, engine: engine) == nil)
    var r6 = r5
    r6.retryCounter = 6
    #expect(try service.mayAttempt(r6, engine: engine) == true)
}

@Test func theStatusDocumentSaysWhetherTheDeviceIsManaged() throws {
    let off = FleetStatusDocument(.off("unmanaged (no controller-url on CONFIG)"))
    let text = try JSONDocument.line(off)
    let object = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
    #expect(object["managed"] as? Bool == false && object["note"] as? String == "unmanaged (no controller-url on CONFIG)")
    for key in ["controller", "deviceId", "configHash", "secondsSinceContact", "lastError", "route", "identity", "attestation"] {
        #expect(object[key] is NSNull, "\(key) is null, not missing")
    }
    #expect(off.line == "fleet: unmanaged (no controller-url on CONFIG)")
}
