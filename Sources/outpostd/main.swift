// outpostd: the device agent. As PID 1 (/init of the initramfs) it runs
// early boot and then stays PID 1; see OutpostAgent/EarlyBoot.swift.

#if canImport(Glibc)
import Glibc
#endif
import OutpostAgent

if getpid() == 1 {
    EarlyBoot.runAsInit()
}

let message = "outpostd: early boot runs only as PID 1 (the initramfs /init)\n"
_ = message.withCString { write(2, $0, strlen($0)) }
exit(2)
