// A QEMU Machine Protocol client over the instance's UNIX socket. QMP is one
// JSON object per line: QEMU greets ({"QMP": {...}}), the client must send
// qmp_capabilities, then each command gets one {"return": ...} or
// {"error": {"class", "desc"}}, with {"event": ...} lines interleaved at any
// time (POWERDOWN often arrives before system_powerdown's return). Every read
// is bounded by the caller's deadline; a server that stops answering is an
// error, never a hung thread. QEMU serves one QMP client at a time, so the
// runner connects per operation and closes again.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import OutpostPlatform

// File-scope names for the libc calls whose names the client's methods shadow.
private func closeDescriptor(_ fd: Int32) { _ = close(fd) }
private func connectSocket(_ fd: Int32, _ address: UnsafePointer<sockaddr>, _ length: socklen_t) -> Int32 { connect(fd, address, length) }

/// One open QMP session.
public final class QMPClient {
    public let socketPath: String
    private var fd: Int32
    private var pending: [UInt8] = []

    /// Connects (retrying while QEMU has not created the socket yet), reads the
    /// greeting and enters command mode, all before `deadline`.
    public init(socketPath: String, deadline: Deadline) throws(AppsError) {
        self.socketPath = socketPath
        fd = -1
        var lastError = "not tried"
        while true {
            do {
                fd = try Self.connect(socketPath)
                break
            } catch {
                lastError = error.description
            }
            if deadline.hasPassed { throw .qmp(socket: socketPath, command: "connect", reason: lastError) }
            MonotonicClock.sleep(for: .milliseconds(20))
        }
        do throws(AppsError) {
            let greeting = try readMessage(command: "greeting", deadline: deadline)
            guard case .object(let fields) = greeting, fields["QMP"] != nil else {
                throw AppsError.qmp(socket: socketPath, command: "greeting", reason: "not a QMP greeting: \(oneLine(greeting.rendered, limit: 120))")
            }
            _ = try execute("qmp_capabilities", deadline: deadline)
        } catch {
            close()
            throw error
        }
    }

    deinit { close() }

    public func close() {
        if fd >= 0 { closeDescriptor(fd) }
        fd = -1
    }

    /// Runs one command; `arguments` is a JSON object's text. Returns the `return` value.
    @discardableResult
    func execute(_ command: String, arguments: String? = nil, deadline: Deadline) throws(AppsError) -> JSONValue {
        var line = "{\"execute\":" + jsonStringLiteral(command)
        if let arguments { line += ",\"arguments\":" + arguments }
        line += "}\n"
        guard fd >= 0 else { throw .qmp(socket: socketPath, command: command, reason: "the session is closed") }
        do { try FileIO.writeAll(fd, Array(line.utf8), object: socketPath) } catch {
            throw .qmp(socket: socketPath, command: command, reason: error.description)
        }
        while true {
            let message = try readMessage(command: command, deadline: deadline)
            guard case .object(let fields) = message else { continue }
            if let value = fields["return"] { return value }
            if case .object(let error)? = fields["error"] {
                var reason = "error"
                if case .string(let desc)? = error["desc"] { reason = desc }
                if case .string(let kind)? = error["class"] { reason = kind + ": " + reason }
                throw .qmp(socket: socketPath, command: command, reason: oneLine(reason, limit: 200))
            }
            // An event ({"event": ...}): not the answer; keep reading.
        }
    }

    /// The run state: "running", "paused", "shutdown", "prelaunch", ...
    public func status(deadline: Deadline) throws(AppsError) -> String {
        guard case .object(let fields) = try execute("query-status", deadline: deadline),
              case .string(let status)? = fields["status"] else {
            throw .qmp(socket: socketPath, command: "query-status", reason: "the reply has no status")
        }
        return status
    }

    /// Presses the ACPI power button; a guest that listens shuts down, QEMU then exits.
    public func powerDown(deadline: Deadline) throws(AppsError) { try execute("system_powerdown", deadline: deadline) }

    /// Ends QEMU at once (the guest gets no say). QEMU may close the socket before or after
    /// its reply, so an end of stream after sending counts as done.
    public func quit(deadline: Deadline) throws(AppsError) {
        do { try execute("quit", deadline: deadline) } catch {
            if case .qmp(_, _, let reason) = error, reason == Self.endOfStream { return }
            throw error
        }
    }

    /// A human-monitor command (savevm and friends have no stable QMP form in QEMU 7.2);
    /// returns the monitor's text output.
    public func humanMonitor(_ commandLine: String, deadline: Deadline) throws(AppsError) -> String {
        let result = try execute("human-monitor-command", arguments: "{\"command-line\":" + jsonStringLiteral(commandLine) + "}",
                                 deadline: deadline)
        guard case .string(let text) = result else { return "" }
        return text
    }

    /// Snapshot verbs print nothing on success and an "Error: ..." line otherwise.
    public func snapshot(_ verb: SnapshotVerb, name: String, deadline: Deadline) throws(AppsError) {
        try Self.checkSnapshotName(name, verb: verb, socket: socketPath)
        let output = try humanMonitor("\(verb.rawValue) \(name)", deadline: deadline)
        let text = output.split(whereSeparator: \.isNewline).map(String.init).filter { !$0.isEmpty }.joined(separator: "; ")
        if !text.isEmpty { throw .qmp(socket: socketPath, command: "\(verb.rawValue) \(name)", reason: oneLine(text, limit: 200)) }
    }

    /// The names of the VM snapshots (`info snapshots`: "ID TAG VM-SIZE DATE VM-CLOCK ..." rows).
    public func snapshotNames(deadline: Deadline) throws(AppsError) -> [String] {
        let text = try humanMonitor("info snapshots", deadline: deadline)
        var names: [String] = []
        var inTable = false
        for line in text.split(whereSeparator: \.isNewline) {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            if fields.first == "ID", fields.count > 1, fields[1] == "TAG" {
                inTable = true
                continue
            }
            // The ID column reads "--" for a snapshot present on every disk (the usual case).
            if inTable, fields.count >= 2 { names.append(String(fields[1])) }
        }
        return names
    }

    /// Snapshot names go into a monitor command line, so they are plain words.
    static func checkSnapshotName(_ name: String, verb: SnapshotVerb, socket: String) throws(AppsError) {
        guard !name.isEmpty, name.utf8.count <= 64,
              name.unicodeScalars.allSatisfy({ $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || $0 == "-" || $0 == "_") }) else {
            throw .qmp(socket: socket, command: verb.rawValue, reason: "snapshot name \"\(name)\" is not 1 to 64 of A-Z, a-z, 0-9, - and _")
        }
    }

    public enum SnapshotVerb: String, Sendable {
        case save = "savevm", load = "loadvm", delete = "delvm"
    }

    static let endOfStream = "QEMU closed the connection"

    /// One JSON line, waiting for more bytes until `deadline`.
    private func readMessage(command: String, deadline: Deadline) throws(AppsError) -> JSONValue {
        while true {
            if let newline = pending.firstIndex(of: 0x0a) {
                let line = Array(pending[..<newline])
                pending.removeSubrange(...newline)
                if line.allSatisfy({ $0 == 0x20 || $0 == 0x0d }) { continue }
                return try JSONValue.parse(line, document: "QMP reply to \(command)", limit: 1 << 20)
            }
            guard pending.count < 1 << 20 else { throw .qmp(socket: socketPath, command: command, reason: "a reply line over 1 MiB") }
            if deadline.hasPassed { throw .qmp(socket: socketPath, command: command, reason: "no reply in time") }
            var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0)]
            do { _ = try pollDescriptors(&fds, timeout: deadline.remaining, object: socketPath) } catch {
                throw .qmp(socket: socketPath, command: command, reason: error.description)
            }
            guard fds[0].revents != 0 else { continue }
            var buffer = [UInt8](repeating: 0, count: 4096)
            let count: Int
            do { count = try systemCall("read", socketPath) { read(fd, &buffer, buffer.count) } } catch {
                throw .qmp(socket: socketPath, command: command, reason: error.description)
            }
            if count == 0 { throw .qmp(socket: socketPath, command: command, reason: Self.endOfStream) }
            pending += buffer[..<count]
        }
    }

    private static func connect(_ path: String) throws(SystemError) -> Int32 {
        let fd = try systemCall("socket", path) { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            closeDescriptor(fd)
            throw SystemError(call: "connect", object: path, code: ENAMETOOLONG)
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in bytes.enumerated() { raw[index] = byte }
        }
        do {
            _ = try systemCall("connect", path) { () -> Int32 in
                withUnsafePointer(to: &address) { pointer in
                    pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        connectSocket(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                    }
                }
            }
        } catch {
            closeDescriptor(fd)
            throw error
        }
        return fd
    }
}
