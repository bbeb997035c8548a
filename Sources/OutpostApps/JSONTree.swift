// A JSON document as a tree of values, walked by hand with the path of every
// node ("apps[0].manifest.images[1].maxsize"), so that each refusal names the
// field in one line. FoundationEssentials' JSONDecoder does the lexing (and
// bounds the nesting depth); nothing here trusts the document's shape.

import OutpostPlatform

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// One JSON value. Integers are kept apart from fractions so that a size is
/// never rounded through a Double.
enum JSONValue: Decodable, Equatable {
    case null
    case bool(Bool)
    case integer(Int64)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    init(from decoder: any Decoder) throws {
        if var list = try? decoder.unkeyedContainer() {
            var items: [JSONValue] = []
            while !list.isAtEnd { items.append(try list.decode(JSONValue.self)) }
            self = .array(items)
            return
        }
        if let object = try? decoder.container(keyedBy: AnyKey.self) {
            var fields: [String: JSONValue] = [:]
            for key in object.allKeys { fields[key.stringValue] = try object.decode(JSONValue.self, forKey: key) }
            self = .object(fields)
            return
        }
        let single = try decoder.singleValueContainer()
        if single.decodeNil() { self = .null }
        else if let value = try? single.decode(Bool.self) { self = .bool(value) }
        else if let value = try? single.decode(Int64.self) { self = .integer(value) }
        else if let value = try? single.decode(Double.self) { self = .number(value) }
        else { self = .string(try single.decode(String.self)) }
    }

    /// Parses a whole document; `document` names it in the error ("apps.json").
    static func parse(_ bytes: [UInt8], document: String, limit: Int = 4 << 20) throws(AppsError) -> JSONValue {
        guard bytes.count <= limit else { throw .malformedJSON(document: document, detail: "larger than \(limit) bytes") }
        do { return try JSONDecoder().decode(JSONValue.self, from: Data(bytes)) } catch {
            throw .malformedJSON(document: document, detail: summary(of: error))
        }
    }

    /// The decoder's complaint without its nested context dump.
    private static func summary(of error: any Error) -> String {
        let text: String
        switch error {
        case let DecodingError.dataCorrupted(context): text = context.underlyingError.map { "\($0)" } ?? context.debugDescription
        case let DecodingError.typeMismatch(_, context), let DecodingError.valueNotFound(_, context):
            text = context.debugDescription
        default: text = "\(error)"
        }
        return oneLine(text, limit: 160)
    }

    /// The value as an error message shows it: strings quoted, lists and objects by kind.
    var rendered: String {
        switch self {
        case .null: return "null"
        case let .bool(value): return String(value)
        case let .integer(value): return String(value)
        case let .number(value): return String(value)
        case let .string(value): return "\"" + oneLine(value, limit: 60) + "\""
        case .array: return "(a list)"
        case .object: return "(an object)"
        }
    }
}

/// Any object key, so that every key of an object can be read and unknown ones named.
struct AnyKey: CodingKey {
    let stringValue: String
    var intValue: Int? { nil }
    init?(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}

/// Text squeezed onto one line and cut at `limit` characters, for error messages.
func oneLine(_ text: String, limit: Int) -> String {
    let flat = text.flattenedToOneLine
    return flat.count <= limit ? flat : String(flat.prefix(limit)) + "..."
}

/// A value and where it sits in the document. The typed accessors throw
/// `AppsError.invalid` naming this path.
struct JSONNode {
    let value: JSONValue
    let path: String

    /// The path of a field; a key is shown on one line however the document spelt it.
    func child(_ key: String) -> String {
        let shown = oneLine(key, limit: 60)
        return path.isEmpty ? shown : "\(path).\(shown)"
    }

    func fail(_ reason: String) -> AppsError { .invalid(field: path.isEmpty ? "(root)" : path, reason: reason) }

    var string: String {
        get throws(AppsError) {
            guard case let .string(text) = value else { throw fail("\(value.rendered) is not a string") }
            return text
        }
    }

    var bool: Bool {
        get throws(AppsError) {
            guard case let .bool(flag) = value else { throw fail("\(value.rendered) is not true or false") }
            return flag
        }
    }

    /// A whole number within `range`.
    func integer(in range: ClosedRange<Int64>) throws(AppsError) -> Int64 {
        guard case let .integer(number) = value else { throw fail("\(value.rendered) is not a whole number") }
        guard range.contains(number) else { throw fail("\(number) is not within \(range.lowerBound)...\(range.upperBound)") }
        return number
    }

    /// A string that must be one of `choices`, spelled exactly.
    func choice(_ choices: [String]) throws(AppsError) -> String {
        let text = try string
        guard choices.contains(text) else { throw fail("\(value.rendered) is not one of \(choices.joined(separator: ", "))") }
        return text
    }

    var array: [JSONNode] {
        get throws(AppsError) {
            guard case let .array(items) = value else { throw fail("\(value.rendered) is not a list") }
            return items.enumerated().map { JSONNode(value: $1, path: "\(path)[\($0)]") }
        }
    }

    /// The object's fields; a key outside `known` is refused, so a misspelt
    /// setting is named instead of silently ignored.
    func object(known: [String]) throws(AppsError) -> JSONObject {
        guard case let .object(fields) = value else { throw fail("\(value.rendered) is not an object") }
        for key in fields.keys.sorted() where !known.contains(key) {
            throw AppsError.invalid(field: child(key), reason: "is not a known field (\(known.joined(separator: ", ")))")
        }
        return JSONObject(fields: fields, node: self)
    }
}

/// An object's fields with their paths.
struct JSONObject {
    let fields: [String: JSONValue]
    let node: JSONNode

    /// The field, or nil when it is absent or null.
    func optional(_ key: String) -> JSONNode? {
        guard let value = fields[key], value != .null else { return nil }
        return JSONNode(value: value, path: node.child(key))
    }

    func required(_ key: String) throws(AppsError) -> JSONNode {
        guard let field = optional(key) else { throw AppsError.missing(field: node.child(key)) }
        return field
    }
}

/// `text` as a JSON string literal: quotes, backslashes and control characters escaped, so
/// the document stays JSON whatever the text holds (the QMP client's commands, the controller's
/// apps section turned back into apps.json).
public func jsonStringLiteral(_ text: String) -> String {
    var out = "\""
    for scalar in text.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        default:
            if scalar.value < 0x20 {
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
    }
    return out + "\""
}
