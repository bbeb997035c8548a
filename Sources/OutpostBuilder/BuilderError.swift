/// Everything that stops an image build, each with the file or field at fault
/// so the one line a user sees says what was wrong and where.
public enum BuilderError: Error, CustomStringConvertible, Equatable {
    case layout(file: String, field: String, message: String)
    case missingInput(path: String, what: String)
    case invalidInput(path: String, message: String)
    case io(path: String, message: String)

    public var description: String {
        switch self {
        case let .layout(file, field, message): return "\(file): \(field): \(message)"
        case let .missingInput(path, what): return "\(path): missing \(what)"
        case let .invalidInput(path, message): return "\(path): \(message)"
        case let .io(path, message): return "\(path): \(message)"
        }
    }
}
