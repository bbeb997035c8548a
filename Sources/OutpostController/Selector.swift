/// Device labels and the selectors that pick devices by them, for bulk commands and rollouts.
///
///     selector  := term ("," term)*
///     term      := KEY "=" VALUE      the label KEY is VALUE
///                | KEY "!=" VALUE     the label KEY is not VALUE (or the device has no KEY)
///                | KEY                the device has the label KEY
///                | "!" KEY            the device does not have the label KEY
///     KEY       := [A-Za-z0-9][A-Za-z0-9._/-]*   (at most 63 characters)
///     VALUE     := [A-Za-z0-9._/-]+              (at most 63 characters)
///
/// Every term must hold (AND). The empty selector matches every device. A parse error names the
/// 1-based character position where the selector stops making sense.
public struct LabelSelector: Sendable, Equatable, CustomStringConvertible {
    public enum Term: Sendable, Equatable {
        case equals(String, String)
        case notEquals(String, String)
        case has(String)
        case lacks(String)
    }

    public let terms: [Term]
    public let text: String

    public static let help = "k=v (label k is v), k!=v (k is not v, or absent), k (has k), !k (lacks k); comma-separated, all must hold"

    public var description: String { text }

    public func matches(_ labels: [String: String]) -> Bool {
        terms.allSatisfy { t in
            switch t {
            case let .equals(k, v): return labels[k] == v
            case let .notEquals(k, v): return labels[k] != v
            case let .has(k): return labels[k] != nil
            case let .lacks(k): return labels[k] == nil
            }
        }
    }

    static let maxLength = 63

    static func isKeyCharacter(_ c: Character) -> Bool {
        c.isASCII && (c.isLetter || c.isNumber || c == "." || c == "_" || c == "/" || c == "-")
    }

    /// Parses `text`; `what` names it in the error (e.g. "--select").
    public static func parse(_ text: String, what: String = "--select") throws(ControllerError) -> LabelSelector {
        let chars = Array(text)
        var i = 0
        var terms: [Term] = []
        func fail(_ at: Int, _ why: String) -> ControllerError {
            .invalidInput("\(what) '\(text)': at position \(at + 1): \(why) (\(help))")
        }
        func word(_ name: String) throws(ControllerError) -> String {
            let start = i
            while i < chars.count, isKeyCharacter(chars[i]) { i += 1 }
            guard i > start else {
                if i < chars.count, chars[i] != "," { throw fail(i, "'\(chars[i])' cannot start a \(name)") }
                throw fail(i, "a \(name) is missing")
            }
            guard i - start <= maxLength else { throw fail(start, "a \(name) is longer than \(maxLength) characters") }
            if name == "key", !(chars[start].isLetter || chars[start].isNumber) {
                throw fail(start, "a key starts with a letter or digit")
            }
            return String(chars[start..<i])
        }
        if chars.isEmpty { return LabelSelector(terms: [], text: text) }
        while true {
            if i < chars.count, chars[i] == "!" {
                i += 1
                terms.append(.lacks(try word("key")))
            } else {
                let key = try word("key")
                if i + 1 < chars.count, chars[i] == "!", chars[i + 1] == "=" {
                    i += 2
                    terms.append(.notEquals(key, try word("value")))
                } else if i < chars.count, chars[i] == "=" {
                    i += 1
                    terms.append(.equals(key, try word("value")))
                } else {
                    terms.append(.has(key))
                }
            }
            if i == chars.count { break }
            guard chars[i] == "," else { throw fail(i, "expected ',' or the end, found '\(chars[i])'") }
            i += 1
        }
        return LabelSelector(terms: terms, text: text)
    }

    /// `KEY=VALUE` (set) or `KEY-` (remove), as `device label` takes them.
    public enum LabelChange: Sendable, Equatable {
        case set(String, String)
        case remove(String)
    }

    public static func parseChange(_ text: String) throws(ControllerError) -> LabelChange {
        let bad = ControllerError.invalidInput("label '\(text)' is neither KEY=VALUE nor KEY- (keys [A-Za-z0-9][A-Za-z0-9._/-]*, values [A-Za-z0-9._/-]+, each at most \(maxLength) characters)")
        if text.hasSuffix("-"), !text.contains("=") {
            let key = String(text.dropLast())
            guard valid(key: key) else { throw bad }
            return .remove(key)
        }
        guard let eq = text.firstIndex(of: "=") else { throw bad }
        let key = String(text[..<eq]), value = String(text[text.index(after: eq)...])
        guard valid(key: key), !value.isEmpty, value.count <= maxLength, value.allSatisfy(isKeyCharacter) else { throw bad }
        return .set(key, value)
    }

    static func valid(key: String) -> Bool {
        guard let first = key.first, first.isASCII, first.isLetter || first.isNumber, key.count <= maxLength else { return false }
        return key.allSatisfy(isKeyCharacter)
    }
}
