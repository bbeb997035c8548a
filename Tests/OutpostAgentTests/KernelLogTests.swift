import Testing
@testable import OutpostAgent

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
    #expect(KernelLog.isCommand("kernel log"))
    #expect(KernelLog.isCommand("  kernel\tlog "))
    #expect(!KernelLog.isCommand("kernel"))
    #expect(!KernelLog.isCommand("kernel log now"))
    #expect(!KernelLog.isCommand("status"))
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
