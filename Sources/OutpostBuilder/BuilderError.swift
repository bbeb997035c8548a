/// Everything that stops an image build, each with the file or field at fault
/// so the one line a user sees says what was wrong and where.
public enum BuilderError: Error, CustomStringConvertible, Equatable {
    case layout(file: String, field: String, message: String)
    case missingInput(path: String, what: String)
    case invalidInput(path: String, message: String)
    case tool(command: String, status: Int32, stderr: String)
    case toolMissing(String)
    case io(path: String, message: String)

    public var description: String {
        switch self {
        case let .layout(file, field, message): return "\(file): \(field): \(message)"
        case let .missingInput(path, what): return "\(path): missing \(what)"
        case let .invalidInput(path, message): return "\(path): \(message)"
        case let .tool(command, status, stderr):
            let detail = stderr.split(separator: "\n").last.map(String.init) ?? ""
            return "\(command) exited with status \(status)\(detail.isEmpty ? "" : ": \(detail)")"
        case let .toolMissing(name): return "required tool '\(name)' not found in PATH (run ./build.sh to install it)"
        case let .io(path, message): return "\(path): \(message)"
        }
    }
}
