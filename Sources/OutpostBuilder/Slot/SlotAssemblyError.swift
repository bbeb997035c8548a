/// Why assembling a slot's root or initramfs failed.
public enum SlotAssemblyError: Error, CustomStringConvertible {
    case fileMissing(what: String, path: String)
    case unknownModule(name: String, kernel: String)
    case badListLine(file: String, line: Int, text: String)
    case packageNotFound(String)
    case badExecutable(path: String, reason: String)
    case leftOutNothing(file: String, line: Int, pattern: String)

    public var description: String {
        switch self {
        case .fileMissing(let what, let path):
            return "\(what) not found at \(path)"
        case .unknownModule(let name, let kernel):
            return "kernel module \(name) is neither a module nor built into \(kernel)"
        case .badListLine(let file, let line, let text):
            return "\(file):\(line): cannot parse '\(text)'"
        case .packageNotFound(let name):
            return "no Debian package \(name) (run apt-get update?)"
        case .badExecutable(let path, let reason):
            return "\(path): \(reason)"
        case .leftOutNothing(let file, let line, let pattern):
            return "\(file):\(line): '\(pattern)' matches nothing in the root (a package changed? mend the list)"
        }
    }
}
