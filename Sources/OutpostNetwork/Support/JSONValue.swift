import FoundationEssentials

/// A JSON document as a tree. FoundationEssentials has JSONDecoder but not JSONSerialization,
/// and a configuration validator must see the raw shape (a boolean where a number belongs, an
/// unknown key) to name the field that is wrong, which typed Decodable structs would hide.
public enum JSONValue: Equatable, Sendable, Codable, CustomStringConvertible {
    case null
    case bool(Bool)
    case integer(Int)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    /// Parses `data`; the error is one line without the decoder's nested context.
    public static func parse(_ data: Data) throws(JSONParseError) -> JSONValue {
        do { return try JSONDecoder().decode(JSONValue.self, from: data) } catch {
            throw JSONParseError(detail: Self.summary(of: error))
        }
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null; return }
        // Order matters: JSONDecoder refuses a number as Bool and a fraction as Int, so
        // each JSON token lands in exactly one case.
        if let b = try? c.decode(Bool.self) { self = .bool(b); return }
        if let i = try? c.decode(Int.self) { self = .integer(i); return }
        if let d = try? c.decode(Double.self) { self = .number(d); return }
        if let s = try? c.decode(String.self) { self = .string(s); return }
        if let a = try? c.decode([JSONValue].self) { self = .array(a); return }
        self = .object(try c.decode([String: JSONValue].self))
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .null: try c.encodeNil()
        case .bool(let b): try c.encode(b)
        case .integer(let i): try c.encode(i)
        case .number(let d): try c.encode(d)
        case .string(let s): try c.encode(s)
        case .array(let a): try c.encode(a)
        case .object(let o): try c.encode(o)
        }
    }

    /// Canonical bytes: sorted keys, so equal trees give equal bytes.
    public func encoded() -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? encoder.encode(self)) ?? Data("null".utf8)
    }

    /// A short rendering for error messages: long values are cut so the message stays one line.
    public var description: String {
        let text: String
        switch self {
        case .string(let s): text = s
        default: text = String(decoding: encoded(), as: UTF8.self)
        }
        let oneLine = text.map { $0.isNewline ? " " : $0 }
        return oneLine.count > 60 ? String(oneLine.prefix(57)) + "..." : String(oneLine)
    }

    private static func summary(of error: any Error) -> String {
        switch error {
        case DecodingError.dataCorrupted(let context):
            return context.underlyingError.map { "\($0)" }.flatMap { $0.isEmpty ? nil : $0 }.map(firstLine) ?? firstLine(context.debugDescription)
        case DecodingError.typeMismatch(_, let context), DecodingError.valueNotFound(_, let context):
            return firstLine(context.debugDescription)
        default:
            return firstLine("\(error)")
        }
    }

    private static func firstLine(_ s: String) -> String {
        let line = s.split(whereSeparator: \.isNewline).first.map(String.init) ?? s
        return line.count > 120 ? String(line.prefix(117)) + "..." : line
    }
}

/// Why bytes were not JSON, in one line.
public struct JSONParseError: Error, Equatable, CustomStringConvertible {
    public let detail: String
    public var description: String { detail }
}
