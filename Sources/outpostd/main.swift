// outpostd: the device agent. Early boot's own binary (outpost-init, the
// initramfs's /init) execs it from the verified root as PID 1, where it stays
// as the supervisor; an image built without outpost-init has outpostd as /init,
// which runs early boot first. See OutpostEarlyBoot/StageHandoff.swift and
// OutpostAgent/Supervisor/InitProcess.swift. PID 1
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
    InitProcess.runAsPID1()
}

exit(Outpostd.run(Array(CommandLine.arguments.dropFirst())))
