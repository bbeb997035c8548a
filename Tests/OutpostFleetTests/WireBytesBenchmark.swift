import Foundation
import OutpostHTTP
import OutpostPlatform
import OutpostTestSupport
import Testing
@testable import OutpostFleet

/// Counts the bytes a client and the controller exchange: a TCP relay on 127.0.0.1 between them
/// (python3, so the count is made outside the code being measured). It writes
/// "UP DOWN CONNECTIONS" to its counter file after every chunk.
private let relayScript = #"""
import asyncio, os, sys
target_port, port_file, counter = int(sys.argv[1]), sys.argv[2], sys.argv[3]
totals = [0, 0, 0]
def save():
    with open(counter + '.tmp', 'w') as f: f.write('%d %d %d' % tuple(totals))
    os.replace(counter + '.tmp', counter)
async def pump(reader, writer, index):
    try:
        while True:
            data = await reader.read(65536)
            if not data: break
            totals[index] += len(data)
            save()
            writer.write(data)
            await writer.drain()
    except Exception:
        pass
    finally:
        writer.close()
async def handle(client_reader, client_writer):
    totals[2] += 1
    upstream_reader, upstream_writer = await asyncio.open_connection('127.0.0.1', target_port)
    await asyncio.gather(pump(client_reader, upstream_writer, 0), pump(upstream_reader, client_writer, 1))
async def main():
    server = await asyncio.start_server(handle, '127.0.0.1', 0)
    with open(port_file + '.tmp', 'w') as f: f.write(str(server.sockets[0].getsockname()[1]))
    os.rename(port_file + '.tmp', port_file)
    await asyncio.sleep(3600)
asyncio.run(main())
"""#

@Suite("Fleet: bytes on the wire (benchmark)")
struct WireBytesBenchmark {
    /// Run by bench/fleet-bytes.sh. One client runs against the real controller through the
    /// counting relay with every interval divided by `scale` (config 60 s, metrics 60 s, info
    /// 600 s, logs 30 s at scale 1), so OUTPOST_BENCH_FLEET_SECONDS of it stand for
    /// seconds × scale at the default cadence. Registration and the first config are left out.
    /// The baseline, from the same run and the same relay: one config poll answered 304 on a
    /// fresh mutual-TLS connection, which is what each request costs while the client opens one
    /// connection per request.
    @Test(.enabled(if: ProcessInfo.processInfo.environment["OUTPOST_BENCH_FLEET_SECONDS"].flatMap(Int.init).map { $0 > 0 } == true,
                   "a benchmark: bench/fleet-bytes.sh sets OUTPOST_BENCH_FLEET_SECONDS"))
    func benchmarkBytesPerDeviceHour() async throws {
        let env = ProcessInfo.processInfo.environment
        let seconds = min(try #require(env["OUTPOST_BENCH_FLEET_SECONDS"].flatMap(Int.init)), 3600)
        let scale = max(1, min(env["OUTPOST_BENCH_FLEET_SCALE"].flatMap(Int.init) ?? 30, 600))
        let controller = try await ChildController(tag: "bytes")
        let tmp = try TemporaryDirectory("fleet-bytes")
        let counter = tmp.path + "/relay.count"
        let relay = try PythonServer(script: relayScript, in: tmp.path, name: "relay.py", arguments: ["\(controller.port)", tmp.path + "/relay.port", counter],
                                     portFile: tmp.path + "/relay.port")
        func counted() -> (up: Int, down: Int, connections: Int) {
            let parts = ((try? String(contentsOfFile: counter, encoding: .utf8)) ?? "0 0 0").split(separator: " ").compactMap { Int($0) }
            return parts.count == 3 ? (parts[0], parts[1], parts[2]) : (0, 0, 0)
        }

        var configuration = try controller.deviceConfiguration("bytes")
        configuration.controllerURL = try HTTPURL("https://127.0.0.1:\(relay.port)")
        func scaled(_ d: Duration) -> Duration { d / scale }
        configuration.intervals.config = scaled(.seconds(60))
        configuration.intervals.metrics = scaled(.seconds(60))
        configuration.intervals.info = scaled(.seconds(600))
        configuration.intervals.logs = scaled(.seconds(30))
        let device = RecordingDevice()
        let client = try FleetClient(configuration: configuration,
                                     dependencies: FleetDependencies(updater: device, network: device, power: device, state: device))

        // Baseline: one unchanged-config poll (304) on its own connection.
        let before = counted()
        let first = try await offPool { () throws -> Int in
            try client.register()
            return try client.pollConfig()
        }
        let afterRegister = counted()
        let unchanged = try await offPool { try client.pollConfig() }
        let afterPoll = counted()
        #expect(first == 200 && unchanged == 304, "config polls answered \(first), \(unchanged)")
        let pollBytes = (afterPoll.up + afterPoll.down) - (afterRegister.up + afterRegister.down)

        try client.start()
        try await Task.sleep(for: .seconds(3))
        let start = counted()
        try await Task.sleep(for: .seconds(seconds))
        let end = counted()
        client.stop()
        await controller.stop()

        let up = end.up - start.up, down = end.down - start.down, connections = end.connections - start.connections
        let factor = 3600.0 / Double(seconds * scale)
        let perHour = Double(up + down) * factor
        print("""
            fleet bytes: \(seconds) s at 1/\(scale) of the default intervals = \(seconds * scale / 60) min of a device's life
            fleet bytes: per device-hour: \(Int(Double(up) * factor)) B up, \(Int(Double(down) * factor)) B down, \
            \(Int(perHour)) B in all (\(String(format: "%.1f", perHour / 1024)) KiB), \(Int(Double(connections) * factor)) TLS connections
            fleet bytes: baseline: one 304 config poll on a fresh mutual-TLS connection = \(pollBytes) B; \
            a device-hour = \(String(format: "%.1f", perHour / Double(max(pollBytes, 1))))× that \
            (registration, not counted: \(afterRegister.up + afterRegister.down - before.up - before.down) B)
            """)
        #expect(connections > 0 && pollBytes > 0, "the relay saw no traffic")
        _ = relay
    }
}
