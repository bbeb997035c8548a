// Named threads and the signals that wake them.
//
// Device components run on dedicated pthreads rather than Swift tasks: each
// blocks in poll(2), read(2) or a disk write, the cooperative pool has one
// thread per core (two on the reference hardware), and a hung component must
// stay visible as a hung, named thread (/proc/1/task/*/comm) instead of
// silently holding a pool thread. Shared state lives in a
// `Synchronization.Mutex`; the signals below are how a thread sleeps until
// something changes or it is told to stop, without a second kind of lock.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import OutpostShims
import Synchronization

/// A pthread with a name, running one closure. `start` makes a joinable
/// thread whose owner calls `join()`; `detach` makes one nobody waits for.
public final class NamedThread: Sendable {
    /// The name the kernel shows (at most 15 bytes; longer names are cut).
    public let name: String
    private let handle: Mutex<pthread_t?>

    private init(name: String, handle: pthread_t?) {
        self.name = name
        self.handle = Mutex(handle)
    }

    /// Starts `body` on a new joinable thread; the caller must `join()` it.
    public static func start(name: String, stackSize: Int = defaultStackSize,
                             _ body: @escaping @Sendable () -> Void) throws(SystemError) -> NamedThread {
        let thread = try create(name: name, stackSize: stackSize, detached: false, body)
        return NamedThread(name: String(name.utf8.prefix(15)) ?? name, handle: thread)
    }

    /// Starts `body` on a new detached thread, for work that lives as long as the process.
    public static func detach(name: String, stackSize: Int = defaultStackSize,
                              _ body: @escaping @Sendable () -> Void) throws(SystemError) {
        _ = try create(name: name, stackSize: stackSize, detached: true, body)
    }

    /// Waits for the thread's closure to return. Later calls return at once.
    public func join() {
        guard let thread = handle.withLock({ handle -> pthread_t? in
            defer { handle = nil }
            return handle
        }) else { return }
        pthread_join(thread, nil)
    }

    /// Components keep little on the stack; 512 KiB instead of glibc's 8 MiB
    /// keeps the address space (not RSS) of a dozen threads small.
    public static let defaultStackSize = 512 * 1024

    private final class Start {
        let name: String
        let body: @Sendable () -> Void
        init(_ name: String, _ body: @escaping @Sendable () -> Void) {
            self.name = name
            self.body = body
        }
    }

    private static func create(name: String, stackSize: Int, detached: Bool,
                               _ body: @escaping @Sendable () -> Void) throws(SystemError) -> pthread_t {
        let start = Unmanaged.passRetained(Start(name, body)).toOpaque()
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        defer { pthread_attr_destroy(&attributes) }
        pthread_attr_setdetachstate(&attributes, Int32(detached ? PTHREAD_CREATE_DETACHED : PTHREAD_CREATE_JOINABLE))
        pthread_attr_setstacksize(&attributes, max(stackSize, Int(PTHREAD_STACK_MIN)))
        var thread = pthread_t()
        let result = pthread_create(&thread, &attributes, { raw in
            guard let raw else { return nil }
            let start = Unmanaged<Start>.fromOpaque(raw).takeRetainedValue()
            // prctl(PR_SET_NAME) on the new thread itself: what pthread_setname_np
            // does for the calling thread, reachable from Swift through the shim.
            OutpostShims_set_thread_name(start.name)
            start.body()
            return nil
        }, start)
        guard result == 0 else {
            Unmanaged<Start>.fromOpaque(start).release()
            throw SystemError(call: "pthread_create", object: name, code: result)
        }
        return thread
    }
}

/// A one-way "stop now" flag that sleeping threads wake up for at once, so a
/// component between rounds stops now instead of at its next tick. Its
/// `fileDescriptor` turns readable when raised, so a thread blocked in poll(2)
/// on sockets can watch it too.
public final class StopSignal: Sendable {
    private let raised = Atomic<Bool>(false)
    /// An eventfd that becomes readable on `raise()` and stays so (never read).
    /// -1 when the process was out of descriptors at creation; the flag then
    /// still works and sleeps check it every `fallbackSlice`.
    public let fileDescriptor: Int32

    public init() {
        fileDescriptor = OutpostShims_eventfd()
    }

    deinit {
        if fileDescriptor >= 0 { _ = close(fileDescriptor) }
    }

    public var isRaised: Bool { raised.load(ordering: .acquiring) }

    /// Raises the signal and wakes every thread sleeping on it. Idempotent.
    public func raise() {
        raised.store(true, ordering: .releasing)
        if fileDescriptor >= 0 { EventFD.post(fileDescriptor) }
    }

    /// Sleeps up to `duration`. Returns true when the whole time passed,
    /// false as soon as the signal is (or already was) raised.
    public func sleep(for duration: Duration) -> Bool {
        let deadline = Deadline(after: duration)
        while !isRaised {
            if deadline.hasPassed { return true }
            if fileDescriptor >= 0 {
                _ = EventFD.waitReadable(fileDescriptor, timeout: deadline.remaining)
            } else {
                MonotonicClock.sleep(for: min(deadline.remaining, Self.fallbackSlice))
            }
        }
        return false
    }

    static let fallbackSlice = Duration.milliseconds(50)
}

/// An auto-reset event: `signal()` wakes one waiting round of `wait` (or the
/// next one, if nobody waits yet: a signal is never lost), and the wait
/// consumes it. The pattern with a `Mutex`: change the state under the lock,
/// then `signal()`; the waiter checks the state under the lock and `wait`s
/// when there is nothing to do. Its `fileDescriptor` can sit in a poll set.
public final class Wakeup: Sendable {
    /// The eventfd; readable while a signal is pending.
    public let fileDescriptor: Int32
    private let label: String

    /// `label` names the owner in the error when no descriptor is left.
    public init(label: String) throws(SystemError) {
        self.label = label
        fileDescriptor = try systemCall("eventfd", label) { OutpostShims_eventfd() }
    }

    deinit { _ = close(fileDescriptor) }

    public func signal() { EventFD.post(fileDescriptor) }

    /// Waits until signalled or `timeout` passes (nil: no limit). Returns true
    /// when a signal was pending or arrived, and consumes it.
    @discardableResult
    public func wait(timeout: Duration? = nil) -> Bool {
        let deadline = timeout.map { Deadline(after: $0) }
        while true {
            if consume() { return true }
            if let deadline, deadline.hasPassed { return false }
            _ = EventFD.waitReadable(fileDescriptor, timeout: deadline?.remaining)
        }
    }

    /// Takes a pending signal without waiting; true if there was one. For
    /// owners that poll `fileDescriptor` themselves.
    @discardableResult
    public func consume() -> Bool {
        var count: UInt64 = 0
        return (try? systemCall("read", label) { read(fileDescriptor, &count, 8) }) == 8
    }
}

/// The two eventfd operations both signals need.
enum EventFD {
    /// Adds 1 to the counter, making the fd readable. A full counter
    /// (EAGAIN after 2^64-2 posts) is still readable, so it is ignored.
    static func post(_ fd: Int32) {
        var one: UInt64 = 1
        _ = try? systemCall("write", "eventfd") { write(fd, &one, 8) }
    }

    /// Blocks until `fd` is readable or `timeout` (nil: none) passes.
    static func waitReadable(_ fd: Int32, timeout: Duration?) -> Bool {
        var entries = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0)]
        return ((try? pollDescriptors(&entries, timeout: timeout, object: "eventfd")) ?? 0) > 0
    }
}
