import Foundation
import Testing
@testable import OutpostAgent
@testable import OutpostEarlyBoot

// `kernel log` on the console: the ring buffer's records without their priority,
// and only the exact two words select it (its lines are not sent to the controller).
@Test func kernelLogRecordsLoseTheirPriorityAndNothingElse() {
    let records = "<5>[    0.000000] Linux version 6.1.0-56-amd64\n<3>[    1.5] dm: <odd> text\nno prefix <7>\n<x>[ 2.0] kept\n"
    #expect(KernelLog.parse(Array(records.utf8)) == [
        "[    0.000000] Linux version 6.1.0-56-amd64", "[    1.5] dm: <odd> text", "no prefix <7>", "<x>[ 2.0] kept",
    ])
    #expect(KernelLog.parse([]) == [])
}

@Test func onlyKernelLogIsTheKernelLogCommand() {
    #expect(ConsoleCommands.words("kernel log") == KernelLog.command)
    #expect(ConsoleCommands.words("  kernel\tlog ") == KernelLog.command)
    #expect(ConsoleCommands.words("kernel") != KernelLog.command)
    #expect(ConsoleCommands.words("kernel log now") != KernelLog.command)
    #expect(ConsoleCommands.words("status") != KernelLog.command)
}

// The `boot:` line after the ready line: where the boot's time went, from the kernel's start.
@Test func theBootLineNamesEveryStepAndTheTimeToReady() {
    var clock = StepClock(enabled: false, now: 2910)
    clock.mark("modules", now: 3120)
    clock.mark("verity", detail: "62914560 bytes read", now: 5000)
    clock.mark("persist", now: 5004)
    #expect(clock.summary == "boot: kernel 2.91 s, modules 0.21 s, verity 1.88 s, persist 0.00 s; ready 5.00 s after the kernel started")
    #expect(clock.steps.map(\.name) == ["modules", "verity", "persist"])
}

// Early boot execs the root's outpostd as PID 1: what it established and the console lines
// owed to the controller's log travel in one file and come back whole; a damaged file is
// refused with the line that is wrong.
@Test func theStageHandoffCarriesTheOutcomeTheClockAndTheOwedConsoleLines() throws {
    var clock = StepClock(enabled: true, now: 1500)
    clock.mark("modules", now: 1900)
    clock.mark("persist", now: 2600)
    let outcome = BootOutcome(slotName: "IMGB", version: "2.0.0", rescueReason: "no-bootable-slot", persistMounted: true,
                              diskPath: "/dev/vda", slotPartUUID: "6a1b7c3e-0000-4000-8000-00000000a11b", clock: clock)
    let lines = [Console.Line(message: "warning: module not loaded: x \\ y\nz", timeUnixMs: 1_700_000_000_123),
                 Console.Line(message: "", timeUnixMs: 5)]
    let text = StageHandoff(outcome, consoleLines: lines, consoleDropped: 3).text
    #expect(text.hasPrefix("outpost-early-boot 1\nslot IMGB\n") && text.split(separator: "\n").count == 13, "\(text)")
    let back = try StageHandoff(parsing: text)
    #expect(back.outcome.slotName == "IMGB" && back.outcome.version == "2.0.0" && back.outcome.rescueReason == "no-bootable-slot")
    #expect(back.outcome.persistMounted && back.outcome.diskPath == "/dev/vda")
    #expect(back.outcome.slotPartUUID == "6a1b7c3e-0000-4000-8000-00000000a11b")
    #expect(back.outcome.clock.summary == clock.summary && back.outcome.clock.enabled)
    #expect(back.consoleLines.map(\.message) == lines.map(\.message) && back.consoleDropped == 3)
    #expect(back.consoleLines.map(\.timeUnixMs) == [1_700_000_000_123, 5])
    #expect(back.text == text)
    for (damaged, reason) in [("slot IMGA\n", "line 1: not"), (text.replacingOccurrences(of: "persist 1", with: "persist x"), "persist"),
                              (text.replacingOccurrences(of: "dropped 3\n", with: ""), "no dropped"),
                              (text + "colour blue\n", "line 14: unknown key \"colour\""),
                              (text.replacingOccurrences(of: "step 400", with: "step 4x0"), "line 9: step: not a number")] {
        #expect(throws: StageHandoff.ParseError.self) { try StageHandoff(parsing: damaged) }
        do { _ = try StageHandoff(parsing: damaged) } catch { #expect(error.description.contains(reason), "\(error)") }
    }
}

// PID 1 pages out only read-only mappings of real files: never a writable one (its contents
// exist nowhere else), an anonymous one, [vdso] or a deleted file.
@Test func onlyReadOnlyFileMappingsArePagedOut() {
    let maps = """
    55d0c0000000-55d0c1000000 r--p 00000000 fe:00 131                        /sbin/outpostd
    55d0c1000000-55d0c2000000 r-xp 01000000 fe:00 131                        /sbin/outpostd
    55d0c2000000-55d0c2100000 rw-p 02000000 fe:00 131                        /sbin/outpostd
    55d0c2100000-55d0c2200000 rw-p 00000000 00:00 0                          [heap]
    7f0000000000-7f0000100000 r-xp 00000000 fe:00 77                         /usr/lib/x86_64-linux-gnu/libcrypto.so.3
    7f0000100000-7f0000101000 r--p 00000000 00:01 9                          /memfd:x (deleted)
    7f0000200000-7f0000201000 r-xp 00000000 00:00 0                          [vdso]
    7f0000300000-7f0000301000 r--s 00000000 fe:00 80                         /persist/a file
    """
    #expect(MemoryTrim.pageableMappings(maps) == [
        .init(start: 0x55d0_c000_0000, end: 0x55d0_c100_0000, path: "/sbin/outpostd"),
        .init(start: 0x55d0_c100_0000, end: 0x55d0_c200_0000, path: "/sbin/outpostd"),
        .init(start: 0x7f00_0000_0000, end: 0x7f00_0010_0000, path: "/usr/lib/x86_64-linux-gnu/libcrypto.so.3"),
        .init(start: 0x7f00_0030_0000, end: 0x7f00_0030_1000, path: "/persist/a file"),
    ])
}
