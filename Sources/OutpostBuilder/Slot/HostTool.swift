// Runs the Debian tools slot assembly relies on (apt-get, dpkg-deb, depmod,
// gzip, ldd) and turns a failure into one line naming the command.

import Foundation

/// Why assembling a slot's root or initramfs failed.
public enum SlotAssemblyError: Error, CustomStringConvertible {
    case toolFailed(command: String, status: Int32, stderr: String)
    case toolMissing(String)
    case fileMissing(what: String, path: String)
    case unknownModule(name: String, kernel: String)
    case badListLine(file: String, line: Int, text: String)
    case packageNotFound(String)

    public var description: String {
        switch self {
        case .toolFailed(let command, let status, let stderr):
            let detail = stderr.split(separator: "\n").last.map { ": \($0)" } ?? ""
            return "\(command) exited with status \(status)\(detail)"
        case .toolMissing(let tool):
            return "\(tool) is not installed on the build host"
        case .fileMissing(let what, let path):
            return "\(what) not found at \(path)"
        case .unknownModule(let name, let kernel):
            return "kernel module \(name) is neither a module nor built into \(kernel)"
        case .badListLine(let file, let line, let text):
            return "\(file):\(line): cannot parse '\(text)'"
        case .packageNotFound(let name):
            return "no Debian package \(name) (run apt-get update?)"
        }
    }
}

enum HostTool {
    /// Runs `tool` (found on PATH) and returns its standard output.
    @discardableResult
    static func run(_ tool: String, _ arguments: [String], in directory: URL? = nil,
                    environment: [String: String]? = nil) throws -> String {
        guard let executable = find(tool) else { throw SlotAssemblyError.toolMissing(tool) }
        let process = Process()
        process.executableURL = executable
        process.arguments = arguments
        if let directory { process.currentDirectoryURL = directory }
        if let environment {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        try process.run()
        // Drain both pipes concurrently so a chatty tool cannot block on a full pipe.
        let errorData = ErrorCollector(err.fileHandleForReading)
        let output = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let stderr = errorData.finish()
        guard process.terminationStatus == 0 else {
            throw SlotAssemblyError.toolFailed(command: ([tool] + arguments).joined(separator: " "),
                                               status: process.terminationStatus, stderr: stderr)
        }
        return String(decoding: output, as: UTF8.self)
    }

    static func find(_ tool: String) -> URL? {
        if tool.hasPrefix("/") { return URL(fileURLWithPath: tool) }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        for dir in (path + ":/usr/sbin:/sbin").split(separator: ":") {
            let candidate = URL(fileURLWithPath: String(dir)).appendingPathComponent(tool)
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
        }
        return nil
    }
}

/// Reads a pipe on a background thread until end of file.
private final class ErrorCollector: @unchecked Sendable {
    private var data = Data()
    private let done = DispatchSemaphore(value: 0)

    init(_ handle: FileHandle) {
        Thread.detachNewThread { [self] in
            data = handle.readDataToEndOfFile()
            done.signal()
        }
    }

    func finish() -> String {
        done.wait()
        return String(decoding: data, as: UTF8.self)
    }
}
