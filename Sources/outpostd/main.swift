// outpostd: the device agent. As PID 1 (/init of the initramfs) it runs
// early boot and then stays PID 1 as the supervisor; see
// OutpostAgent/EarlyBoot.swift and OutpostAgent/InitProcess.swift. Any other
// invocation is a client command (`outpostd status`), see AgentCommand.

#if canImport(Glibc)
import Glibc
#endif
import OutpostAgent

if getpid() == 1 {
    EarlyBoot.runAsInit()
}

exit(AgentCommand.main(CommandLine.arguments))
