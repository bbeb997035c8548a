// outpostd: the device agent. As PID 1 (/init of the initramfs) it runs
// early boot, then execs itself from the verified root (/sbin/outpostd),
// which stays PID 1 as the supervisor; see EarlyBoot/StageHandoff.swift,
// OutpostAgent/EarlyBoot/EarlyBoot.swift and OutpostAgent/Supervisor/InitProcess.swift. PID 1
// never parses a command line: the kernel passes init whatever words the
// boot loader left over, and none of them may turn PID 1 into a client.
// Any other invocation is a client command (`outpostd status`), parsed by
// swift-argument-parser in OutpostdCommand.swift.

#if canImport(Glibc)
import Glibc
#endif
import OutpostAgent
import OutpostShims

// Two malloc arenas instead of eight per core: outpostd's threads mostly sleep,
// and every arena keeps the pages its threads freed (bench/agent-footprint.sh).
OutpostShims_malloc_limit_arenas(2)

if getpid() == 1 {
    EarlyBoot.runAsPID1()
}

exit(Outpostd.run(Array(CommandLine.arguments.dropFirst())))
