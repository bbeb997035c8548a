// outpost-init: the initramfs's /init. It does early boot only (modules, the
// slot by PARTUUID, dm-verity, CONFIG and PERSIST, switch root) and then execs
// /sbin/outpostd from the verified root as PID 1 (OutpostEarlyBoot/
// StageHandoff.swift). It links no Foundation, OpenSSL or TPM library, so the
// initramfs GRUB loads (and measures) and the kernel unpacks is a fraction of
// one that carries outpostd itself. PID 1 never parses a command line.

#if canImport(Glibc)
import Glibc
#endif
import CInitStart
import OutpostEarlyBoot

outpost_init_forget_runtime_settings()
guard getpid() == 1 else {
    let usage = "outpost-init: the initramfs's /init; it runs only as PID 1 (the agent's commands are outpostd's)\n"
    _ = usage.withCString { write(2, $0, strlen($0)) }
    exit(2)
}
PID1.blockSignals()
Console.attachIfNeeded()
EarlyBoot.runAsInit { _, failure in
    EarlyBoot.fail("cannot start the agent from the verified root: \(failure)")
}
