import Foundation
import Testing

/// PID 1's supervision in the real image: the i6300esb watchdog resets a hung
/// main loop, crashes back off and escalate, orphans are reaped, and every
/// boot names why the previous one ended. Fault injection comes from
/// out/outpost-fault.img (outpostd built with -DOUTPOST_FAULT_INJECTION); the
/// release image must ignore the fault file.
extension QEMU {
    @Suite("Supervisor and watchdog in QEMU", .serialized)
    struct SupervisorTests {
        /// The watchdog timeout and the PID 1 loop's liveness deadline (Agent.Timing).
        static let watchdogTimeout = 15.0, initDeadline = 10.0

        /// The JSON object in `text` (a console line or a file), from its first "{" to its last "}".
        static func jsonObject(_ text: String) -> [String: Any]? {
            guard let start = text.firstIndex(of: "{"), let end = text.lastIndex(of: "}") else { return nil }
            return (try? JSONSerialization.jsonObject(with: Data(text[start...end].utf8))) as? [String: Any]
        }

        func readyLine(_ boot: Harness.Boot) -> String {
            // Split on scalars: the serial console ends lines with "\r\n", one Character in Swift.
            boot.console.components(separatedBy: .newlines).first { $0.contains("outpost: ready ") }
                ?? "no ready line:\n\(boot.console.suffix(3000))"
        }

        @Test func aPowerCutIsPowerLossThePowerButtonIsUserAndTheReleaseImageIgnoresFaults() throws {
            let h = try Harness("sup-release")
            defer { h.cleanup() }
            let first = try h.boot()
            #expect(readyLine(first).hasSuffix("last-boot=first-boot"), "\(readyLine(first))")

            // `outpost run` stopped QEMU at the ready line: a power cut. Arm a hang
            // that a debug image would act on; the release image must not.
            try h.writePersistFile("/debug/fault", "hang init\nstop-watchdog\n")
            let live = try Harness.LiveBoot(h, timeout: 400)
            let ready = live.wait(for: "outpost: ready ", timeout: 240)
            #expect(ready?.text.hasSuffix("last-boot=power-loss") == true, "\(ready?.text ?? live.console.suffix(3000).description)")
            #expect(live.wait(for: "last boot: power-loss", timeout: 5) != nil)
            // Longer than deadline + timeout: a hang would have reset the machine by now.
            Thread.sleep(forTimeInterval: Self.initDeadline + Self.watchdogTimeout + 8)
            try live.monitorCommand("system_powerdown")
            let halted = live.wait(for: "outpost: halt: powering off", after: ready?.index ?? 0, timeout: 60)
            #expect(halted != nil, "no orderly power-off:\n\(live.console.suffix(3000))")
            #expect(live.waitForExit(timeout: 60), "QEMU did not exit after power-off")
            #expect(live.lines.filter { $0.text.contains("outpost-grub: booting") }.count == 1, "the machine reset")
            #expect(!live.console.contains("debug: fault"), "the release image acted on the fault file")
            #expect(live.console.contains("stopping: reason=user component=power-button"))

            let third = try h.boot()
            #expect(readyLine(third).hasSuffix("last-boot=user"), "\(readyLine(third))")
            #expect(try h.persistFile("/debug/fault").contains("hang init"), "the release image took the fault file")
            let status = try h.persistFile("/status/last-status.json")
            #expect(status.contains(#""identity":"i6300ESB timer""#) && status.contains(#""timeoutSeconds":15"#), "\(status)")
            // Keys are sorted (JSONEncoder), so "kind" comes before "name": read the document.
            let components = (Self.jsonObject(status)?["components"] as? [[String: Any]]) ?? []
            #expect(components.contains { $0["name"] as? String == "power-button" && $0["kind"] as? String == "task" },
                    "\(status)")

            // And the release binary has no fault injection compiled in.
            let strings = try Harness.sh(["strings", Harness.out + "/bin/outpostd"]).stdout
            #expect(!strings.contains("outpost-fault-injection") && !strings.contains("/persist/debug/fault"))
        }

        @Test func aHungMainLoopIsResetByTheHardwareWatchdogAndNamedAtTheNextBoot() throws {
            let h = try Harness("sup-hang", imageNamed: "outpost-fault.img")
            defer { h.cleanup() }
            #expect(try Harness.sh(["strings", Harness.out + "/bin/outpostd-fault"]).stdout.contains("outpost-fault-injection"))
            _ = try h.boot() // first boot creates PERSIST
            try h.writePersistFile("/debug/fault", "sleep 3\nhang init\n")
            let live = try Harness.LiveBoot(h, timeout: 400)
            defer { _ = live.waitForExit(timeout: 0) }
            let hang = live.wait(for: "debug: fault: init hangs now", timeout: 240)
            #expect(hang != nil, "\(live.console.suffix(3000))")
            let stopped = live.wait(for: "watchdog: not feeding: init", after: hang?.index ?? 0, timeout: 60)
            let reset = live.wait(for: "outpost-grub: booting", after: hang?.index ?? 0, timeout: 120)
            guard let hang, let reset else {
                Issue.record("no reset after the hang:\n\(live.console.suffix(3000))")
                return
            }
            let seconds = reset.at.timeIntervalSince(hang.at)
            // The order, not the wall time (which includes OVMF's restart under TCG and is
            // printed below as a figure): the hang, then the agent naming the component it
            // stopped feeding for, then a reset with no orderly reboot in between.
            #expect(stopped != nil && stopped!.index < reset.index, "\(live.console.suffix(3000))")
            let between = live.lines(from: hang.index, to: reset.index)
            #expect(!between.contains { $0.contains("halt: rebooting") || $0.contains("halt: powering off") },
                    "the agent rebooted itself instead of the watchdog resetting it: \(between)")
            let ready = live.wait(for: "outpost: ready ", after: reset.index, timeout: 240)
            #expect(ready?.text.hasSuffix("last-boot=watchdog") == true, "\(ready?.text ?? live.console.suffix(2000).description)")
            let why = live.wait(for: "last boot: watchdog", after: reset.index, timeout: 10)
            #expect(why?.text.contains("component=init") == true, "\(why?.text ?? "no last-boot line")")
            print("watchdog reset \(String(format: "%.1f", seconds)) s after the hang (deadline \(Self.initDeadline) s + timeout \(Self.watchdogTimeout) s)")
        }

        @Test func crashesBackOffOrphansLeaveNoZombiesAndACrashLoopReboots() throws {
            let h = try Harness("sup-crash", imageNamed: "outpost-fault.img")
            defer { h.cleanup() }
            _ = try h.boot()
            try h.writePersistFile("/debug/fault", """
                crash control 2
                orphans 8
                sleep 15
                status
                status --json
                helper crashy exit 3
                """)
            let live = try Harness.LiveBoot(h, timeout: 500)
            defer { _ = live.waitForExit(timeout: 0) }
            let ready = live.wait(for: "outpost: ready ", timeout: 240)
            #expect(ready != nil)
            let first = live.wait(for: "component control failed", timeout: 60)
            #expect(first?.text.contains("restart 1 in 1000 ms") == true, "\(first?.text ?? live.console.suffix(2000).description)")
            let second = live.wait(for: "restart 2 in 2000 ms", timeout: 60)
            #expect(second?.text.contains("component control") == true)

            // The orphans' parent exited at once; PID 1 inherited and reaped them.
            #expect(live.wait(for: "debug: orphans: started 8", timeout: 60) != nil, "\(live.console.suffix(2000))")
            // A status sample may catch an orphan between its exit and PID 1's waitpid; what must
            // hold is that all 8 are reaped and no zombie stays: the sample after it shows none.
            let zombies = live.wait(for: "zombies=", timeout: 60)
            #expect(zombies?.text.contains("orphans-reaped=8") == true, "\(zombies?.text ?? live.console.suffix(2000).description)")
            if zombies?.text.contains("zombies=0 ") != true {
                let later = live.wait(for: "\"zombies\":", after: zombies?.index ?? 0, timeout: 30)
                #expect(later?.text.contains("\"zombies\":0") == true, "a zombie stayed: \(later?.text ?? live.console.suffix(2000).description)")
            }
            let control = live.wait(for: "  control ", timeout: 10)
            #expect(control?.text.contains("running") == true && control?.text.contains("restarts=2") == true,
                    "\(control?.text ?? "no control line in status")")
            let json = live.wait(for: #"{"agent":{"#, timeout: 30)
            let lastBoot = json.flatMap { Self.jsonObject($0.text)?["lastBoot"] as? [String: Any] }
            #expect(lastBoot?["reason"] as? String == "power-loss", "\(json?.text ?? "no JSON status")")

            // A helper that always fails: 1, 2, 4, 8, 16 s of backoff, then the sixth failure reboots.
            let loop = live.wait(for: "component crashy failed", timeout: 10)
            #expect(loop != nil)
            let escalated = live.wait(for: "crash loop (6 failures", timeout: 120)
            #expect(escalated?.text.contains("rebooting") == true, "\(escalated?.text ?? live.console.suffix(3000).description)")
            #expect(live.wait(for: "stopping: reason=crash-loop component=crashy", timeout: 30) != nil)
            let next = live.wait(for: "outpost: ready ", after: escalated?.index ?? 0, timeout: 240)
            #expect(next?.text.hasSuffix("last-boot=crash-loop") == true, "\(next?.text ?? live.console.suffix(2000).description)")
            let why = live.wait(for: "last boot: crash-loop", after: escalated?.index ?? 0, timeout: 10)
            #expect(why?.text.contains("component=crashy") == true, "\(why?.text ?? "no last-boot line")")
        }
    }
}
