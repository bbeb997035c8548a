import Foundation
import OutpostPlatform
import OutpostTestSupport
import Testing
@testable import OutpostApps

/// Run by bench/app-start.sh: from the apps config arriving to the boot-counter app `running`,
/// through the agent's path (AppService: download from a local Range server, sha256, overlay,
/// admission, QEMU under the runner, first console line), stepped every half second as outpostd
/// steps it. The baseline, measured in the same run: the very same QEMU command line (read back
/// from /proc/PID/cmdline) started by hand to its first console line. Also QEMU's RSS once
/// running, against the app's memory and the modelled limit. Median of RUNS (default 3).
@Suite("App start: config to running against bare QEMU (benchmark)", .serialized)
struct AppStartBenchmark {
    static var runs: Int? {
        ProcessInfo.processInfo.environment["OUTPOST_BENCH_APP_START_RUNS"].flatMap(Int.init).flatMap { $0 > 0 ? min($0, 20) : nil }
    }

    static func seconds(since start: ContinuousClock.Instant) -> Double {
        let d = ContinuousClock.now - start
        return Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
    }

    static func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }

    @Test(.enabled(if: AppStartBenchmark.runs != nil, "a benchmark: bench/app-start.sh sets OUTPOST_BENCH_APP_START_RUNS"))
    func configToRunningAgainstBareQEMU() throws {
        let runs = try #require(Self.runs)
        var agent: [Double] = [], bare: [Double] = [], rss: [Double] = []
        var limit: UInt64 = 0
        for run in 0..<runs {
            let served = try AppServiceTests.serve()
            let persist = served.dir.path + "/persist"
            try FileManager.default.createDirectory(atPath: persist, withIntermediateDirectories: true)
            let service = try AppServiceTests.service(AppServiceTests.appsJSON(url: served.url, sha256: served.sha256, size: served.size),
                                                      persist: persist)
            defer { service.close() }

            // The config arrives: the service is made from it and stepped every 500 ms, as outpostd does.
            let start = ContinuousClock.now
            try service.prepare()
            var running = false
            for _ in 0..<120 where !running {
                service.step()
                for _ in 0..<50 where !running {
                    running = service.status().first?.state == "running"
                    if !running { usleep(10_000) }
                }
            }
            try #require(running, "never running: \(service.status().map(\.line))")
            agent.append(Self.seconds(since: start))
            let status = try #require(service.status().first)
            let pid = try #require(status.pid)
            limit = status.memoryLimitBytes ?? 0
            usleep(1_000_000)  // as the memory model was measured: a second after the first console line
            let instance = try #require(service.instance("counter"))
            rss.append(Double(try #require(instance.residentBytes)))
            let argv = try #require(try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8))
                .split(separator: "\0").map(String.init)
            _ = try service.perform(.stop, on: "counter")

            // The same command line, started by hand, to its first console line.
            try? FileManager.default.removeItem(atPath: instance.consoleLog)
            unlink(instance.directory + "/qmp.sock")
            let bareStart = ContinuousClock.now
            let qemu = try ChildProcess(argv)
            defer { qemu.terminate() }
            var printed = false
            for _ in 0..<3000 where !printed {
                printed = ((try? String(contentsOfFile: instance.consoleLog, encoding: .utf8)) ?? "").contains("outpost-app: boot")
                if !printed { usleep(10_000) }
            }
            try #require(printed, "the bare QEMU printed nothing")
            bare.append(Self.seconds(since: bareStart))
            print(String(format: "app-start: run %d: agent %.3f s, bare QEMU %.3f s, RSS %.1f MiB", run + 1, agent.last ?? 0,
                         bare.last ?? 0, (rss.last ?? 0) / 1_048_576))
        }
        let a = Self.median(agent), b = Self.median(bare), r = Self.median(rss)
        print(String(format: "app-start: config to running %.3f s; the same QEMU by hand to its first line %.3f s; agent/bare %.2fx; "
                     + "QEMU RSS %.1f MiB for a 64 MiB app (%.2fx the app's memory, %.0f%% of the %.0f MiB limit); median of %d",
                     a, b, a / b, r / 1_048_576, r / 67_108_864, 100 * r / Double(max(limit, 1)), Double(limit) / 1_048_576, runs))
    }
}
