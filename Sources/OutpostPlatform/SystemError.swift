// The one system-call error and the one EINTR loop on the device.
//
// Every wrapper in Disk, Bundle, Update, HTTP, Network and the agent goes
// through `systemCall`, so a signal (PID 1 gets many) never surfaces as a
// spurious failure, and every failure renders the same way on the console:
//
//   open /persist/update/state.json: No such file or directory (errno 2)

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
@_exported import SystemPackage

/// A failed system call: which call, on what object (a path, an fd, an
/// interface, a peer), and the errno. One line, so a console or a status
/// document can show it without a stack trace.
public struct SystemError: Error, Equatable, Hashable, Sendable, CustomStringConvertible {
    /// The call that failed, as a person would look it up: "open", "mount(MS_MOVE)".
    public var call: String
    /// What the call acted on; empty when it acted on nothing nameable.
    public var object: String
    /// The errno the call returned (swift-system's typed value).
    public var errno: Errno

    public init(call: String, object: String, errno: Errno) {
        self.call = call
        self.object = object
        self.errno = errno
    }

    /// For calls that return the error number instead of setting errno (pthread_*).
    public init(call: String, object: String, code: Int32) {
        self.init(call: call, object: object, errno: Errno(rawValue: code))
    }

    /// The raw errno value, for comparisons with Glibc constants.
    public var code: Int32 { errno.rawValue }

    /// `call object: strerror text (errno N)`.
    public var description: String {
        let subject = object.isEmpty ? call : "\(call) \(object)"
        return "\(subject): \(errno.description) (errno \(errno.rawValue))"
    }

    /// The error for the calling thread's current errno.
    public static func current(_ call: String, _ object: String) -> SystemError {
        SystemError(call: call, object: object, errno: Errno(rawValue: Glibc.errno))
    }
}

/// Runs a system call until it is not interrupted by a signal. A negative
/// result becomes a `SystemError` naming `call` and `object`; anything else is
/// returned. This is the only EINTR loop the device code has.
///
/// Not for close(2): on Linux the descriptor is gone even when it reports
/// EINTR, so a retry could close a descriptor another thread just opened.
@discardableResult
@inlinable
public func systemCall<T: FixedWidthInteger>(
    _ call: String, _ object: @autoclosure () -> String, _ body: () -> T
) throws(SystemError) -> T {
    while true {
        let result = body()
        if result >= 0 { return result }
        let code = Glibc.errno
        if code == EINTR { continue }
        throw SystemError(call: call, object: object(), errno: Errno(rawValue: code))
    }
}

/// `systemCall` for callers that expect certain errors as ordinary outcomes
/// (EAGAIN on a non-blocking socket, ENOENT for an optional file): those come
/// back as `.failure`, everything else is thrown.
@inlinable
public func systemCall<T: FixedWidthInteger>(
    _ call: String, _ object: @autoclosure () -> String, expecting expected: Set<Errno>, _ body: () -> T
) throws(SystemError) -> Result<T, SystemError> {
    do {
        return .success(try systemCall(call, object(), body))
    } catch {
        if expected.contains(error.errno) { return .failure(error) }
        throw error
    }
}

/// poll(2) for the device's event loops: waits up to `timeout` (nil: no
/// limit) for any of `fds`, and returns how many are ready (0: timed out).
/// A signal neither ends the wait early nor stretches it: `systemCall`
/// retries, and each retry polls for the time that is left.
public func pollDescriptors(_ fds: inout [pollfd], timeout: Duration?, object: @autoclosure () -> String) throws(SystemError) -> Int {
    let deadline = timeout.map { Deadline(after: $0) }
    let count = nfds_t(fds.count)
    return Int(try systemCall("poll", object()) { () -> Int32 in
        let milliseconds = deadline.map { $0.hasPassed ? 0 : $0.pollMilliseconds } ?? -1
        return poll(&fds, count, milliseconds)
    })
}

extension Result where Failure == SystemError {
    /// The value, or `fallback` for an expected error from `systemCall(_:_:expecting:_:)`.
    @inlinable
    public func get(orElse fallback: Success) -> Success {
        if case .success(let value) = self { return value }
        return fallback
    }
}
