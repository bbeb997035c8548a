/// Why assembling a slot's root or initramfs failed.
public enum SlotAssemblyError: Error, CustomStringConvertible {
    case fileMissing(what: String, path: String)
    case unknownModule(name: String, kernel: String)
    case badListLine(file: String, line: Int, text: String)
    case packageNotFound(String)

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
        }
    }
}
