// Error messages are one line: a technician reads them on a console, in a
// log, in `device show`. Values quoted in them come from outside (a URL in a
// config, a key in a manifest) and may hold newlines or other control
// characters; they are flattened here, once, for every module.

extension String {
    /// This text with every control character and every whitespace other than
    /// the space made a space, so that it cannot break a line.
    public var flattenedToOneLine: String {
        String(String.UnicodeScalarView(unicodeScalars.map { scalar in
            scalar.properties.generalCategory == .control || scalar.properties.isWhitespace && scalar != " " ? " " : scalar
        }))
    }
}
