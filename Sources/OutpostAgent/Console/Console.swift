// The console is the only user interface early boot has: every outcome is
// exactly one line starting with "outpost: ".

#if canImport(Glibc)
import Glibc
#endif

/// Writes whole lines to the console with one write(2) each, so kernel
/// messages cannot split a line that a test or an operator looks for.
public enum Console {
    /// Makes sure fds 0–2 exist. The kernel opens /dev/console for init only
    /// when the initramfs has that node; if it had none, devtmpfs provides it.
    public static func attachIfNeeded() {
        guard fcntl(1, F_GETFD) == -1 else { return }
        let fd = Glibc.open("/dev/console", O_RDWR | O_NOCTTY)
        guard fd >= 0 else { return }
        for target: Int32 in 0...2 where fcntl(target, F_GETFD) == -1 {
            dup2(fd, target)
        }
        if fd > 2 { Glibc.close(fd) }
    }

    /// Prints `outpost: <message>` as one line.
    public static func line(_ message: String) {
        let bytes = Array("outpost: \(message)\n".utf8)
        // Console output is best effort: there is nobody to report a failure to.
        try? Sys.writeAll(1, bytes, target: "console")
    }
}
