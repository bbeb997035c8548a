// What `outpost run` owes the terminal it borrows: its settings back, and an
// orderly stop of QEMU when the user or the system signals `outpost` itself.

import Foundation
import Synchronization

/// The terminal's settings (termios) as they were before QEMU put it in raw
/// mode. QEMU restores them itself when it exits normally, but not when it is
/// killed; restoring them again after any exit is harmless.
struct SavedTerminal {
    let fd: Int32
    let settings: termios

    init?(fd: Int32) {
        guard isatty(fd) == 1 else { return nil }
        var current = termios()
        guard tcgetattr(fd, &current) == 0 else { return nil }
        self.fd = fd
        settings = current
    }

    func restore() {
        var saved = settings
        // Fails with EIO after a hang-up (the terminal is gone): nothing to restore then.
        _ = tcsetattr(fd, TCSANOW, &saved)
    }
}

/// The self-pipe's write end for `trapHandler`, which may only make
/// async-signal-safe calls (an atomic load and write(2) are).
private let trapPipe = Atomic<Int32>(-1)

private func trapHandler(_ signal: Int32) {
    let savedErrno = errno
    var byte = UInt8(truncatingIfNeeded: signal)
    _ = write(trapPipe.load(ordering: .relaxed), &byte, 1)
    errno = savedErrno
}

/// Catches SIGINT, SIGTERM and SIGHUP while QEMU runs and hands them to
/// `action` on a thread of its own, so `outpost run` can stop QEMU and clean up
/// instead of dying and leaving swtpm, temporary files and a raw terminal
/// behind. Children start with default dispositions (swift-subprocess resets
/// them), so QEMU still reacts to a terminal's SIGINT or SIGHUP itself.
final class SignalTrap: Sendable {
    static let signals = [SIGINT, SIGTERM, SIGHUP]
    private let readEnd: Int32
    private let writeEnd: Int32
    private let done = DispatchSemaphore(value: 0)

    init(_ action: @escaping @Sendable (Int32) -> Void) throws {
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else {
            throw QEMUError.io(path: "pipe", message: "cannot create the signal pipe: \(String(cString: strerror(errno)))")
        }
        readEnd = fds[0]
        writeEnd = fds[1]
        // Never inherited by swtpm or QEMU.
        _ = fcntl(readEnd, F_SETFD, FD_CLOEXEC)
        _ = fcntl(writeEnd, F_SETFD, FD_CLOEXEC)
        trapPipe.store(writeEnd, ordering: .relaxed)
        let reader = Thread { [readEnd, done] in
            var byte: UInt8 = 0
            while true {
                let n = read(readEnd, &byte, 1)
                if n < 0 && errno == EINTR { continue }
                // 0 is `remove()`'s stop byte; no signal has number 0.
                if n <= 0 || byte == 0 { break }
                action(Int32(byte))
            }
            done.signal()
        }
        reader.name = "outpost-signals"
        reader.start()
        for signal in Self.signals {
            var handler = sigaction()
            handler.__sigaction_handler.sa_handler = trapHandler
            handler.sa_flags = SA_RESTART
            sigemptyset(&handler.sa_mask)
            sigaction(signal, &handler, nil)
        }
    }

    /// Back to the default dispositions; stops the reader thread.
    func remove() {
        for signal in Self.signals {
            var fallback = sigaction()
            fallback.__sigaction_handler.sa_handler = SIG_DFL
            sigemptyset(&fallback.sa_mask)
            sigaction(signal, &fallback, nil)
        }
        var stop: UInt8 = 0
        _ = write(writeEnd, &stop, 1)
        _ = done.wait(timeout: .now() + 2)
        trapPipe.store(-1, ordering: .relaxed)
        close(writeEnd)
        close(readEnd)
    }
}
