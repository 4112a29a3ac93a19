// A small, strict TOML 1.0 parser that remembers the line of every key and table, so that
// configuration problems found later can name the line they come from.
//
// Supported: comments, tables, dotted and quoted keys, arrays of tables, all four string forms,
// integers (decimal, hex, octal, binary), floats, booleans, arrays and inline tables.
// Not supported: dates and times (reported as an error rather than misread).
// Anything the parser does not understand is a `TOMLSyntaxError`; it never guesses.

/// A value in a parsed TOML document.
public indirect enum TOMLValue: Sendable, Equatable {
    case string(String)
    case integer(Int64)
    case float(Double)
    case boolean(Bool)
    case array([TOMLValue])
    case table(TOMLTable)
}

/// One `key = value` (or a sub-table) with the line it was defined on (1-based).
public struct TOMLEntry: Sendable, Equatable {
    public var key: String
    public var value: TOMLValue
    public var line: Int

    public init(key: String, value: TOMLValue, line: Int) {
        self.key = key
        self.value = value
        self.line = line
    }
}

/// A table keeps its entries in document order.
public struct TOMLTable: Sendable, Equatable {
    public var entries: [TOMLEntry]
    /// Line of the `[header]` / `[[header]]` that opened this table (0 for the root, line of `{` for inline tables).
    public var line: Int

    public init(entries: [TOMLEntry] = [], line: Int = 0) {
        self.entries = entries
        self.line = line
    }

    /// The entry named `key`; keys are unique within a table, so a linear search is unambiguous.
    public subscript(key: String) -> TOMLEntry? {
        entries.first { $0.key == key }
    }
}

public struct TOMLSyntaxError: Error, Sendable, Equatable, CustomStringConvertible {
    /// 1-based line of the problem.
    public var line: Int
    /// 1-based column, counted in Unicode scalars.
    public var column: Int
    public var message: String

    public init(line: Int, column: Int, message: String) {
        self.line = line
        self.column = column
        self.message = message
    }

    public var description: String { "line \(line), column \(column): \(message)" }
}

public enum TOML {
    /// Parses a whole document. The first problem found is thrown; nothing is recovered.
    public static func parse(_ text: String) throws(TOMLSyntaxError) -> TOMLTable {
        var parser = TOMLParser(text)
        return try parser.parseDocument()
    }
}

// MARK: - Parse-time tree

/// A table under construction. A class so that `[headers]` and dotted keys can walk the tree and
/// extend tables in place; it never escapes the parser, which converts it to a `TOMLTable` at the end.
private final class TableBuilder {
    /// How the table came into existence; this decides which later definitions are legal.
    enum Origin {
        case root
        /// An intermediate of a header such as `[a.b]` (here `a`); `[a]` may still define it later.
        case implicit
        /// Defined by its own `[header]` or `[[header]]`.
        case header
        /// Created (or first given keys) by a dotted key such as `a.b = 1`; headers may add
        /// sub-tables to it but not define it.
        case dotted
        /// An inline table `{ ... }`; closed once its `}` is read.
        case inline
    }

    var origin: Origin
    var line: Int
    /// Nesting depth from the root, bounded so that hostile input cannot exhaust the stack.
    let depth: Int
    private var order: [String] = []
    private var slots: [String: Slot] = [:]

    init(origin: Origin, line: Int, depth: Int) {
        self.origin = origin
        self.line = line
        self.depth = depth
    }

    subscript(key: String) -> Slot? { slots[key] }

    /// Adds or replaces `key`; a new key goes to the end so entries keep document order.
    func set(_ key: String, _ slot: Slot) {
        if slots.updateValue(slot, forKey: key) == nil { order.append(key) }
    }

    func build() -> TOMLTable {
        let entries = order.compactMap { key in
            slots[key].map { TOMLEntry(key: key, value: $0.item.value, line: $0.line) }
        }
        return TOMLTable(entries: entries, line: line)
    }
}

private struct Slot {
    var line: Int
    var item: Item
}

private enum Item {
    /// Any finished value, including static arrays and inline tables, which can never be extended.
    case value(TOMLValue)
    case table(TableBuilder)
    /// `[[name]]`; always holds at least one table.
    case tableArray(TableArrayBuilder)

    var value: TOMLValue {
        switch self {
        case .value(let v): return v
        case .table(let t): return .table(t.build())
        case .tableArray(let array): return .array(array.elements.map { .table($0.build()) })
        }
    }
}

/// The tables of one `[[name]]`, shared by reference so that appending does not copy them.
private final class TableArrayBuilder {
    var elements: [TableBuilder]

    init(_ first: TableBuilder) { elements = [first] }
}

private struct KeyPart {
    var name: String
    /// Index of the key's first character, for error positions.
    var start: Int
}

// MARK: - Parser

private struct TOMLParser {
    /// Limit on nested tables and arrays; real configurations use a handful of levels.
    static let maxDepth = 64

    /// Unicode scalars rather than Characters: "\r\n" must stay two units, and columns count scalars.
    let text: [Unicode.Scalar]
    /// Index of the first scalar of each line, for turning an index into line and column.
    let lineStarts: [Int]
    var pos = 0
    let root = TableBuilder(origin: .root, line: 0, depth: 0)
    /// The table that `key = value` lines go into: the root, or the last `[header]`.
    var current: TableBuilder

    init(_ source: String) {
        var scalars = Array(source.unicodeScalars)
        // A byte-order mark is an encoding artefact, not content.
        if scalars.first == "\u{FEFF}" { scalars.removeFirst() }
        text = scalars
        var starts = [0]
        for (i, c) in scalars.enumerated() where c == "\n" { starts.append(i + 1) }
        lineStarts = starts
        current = root
    }

    // MARK: Positions and errors

    func location(_ index: Int) -> (line: Int, column: Int) {
        // Binary search for the last line starting at or before `index`.
        var lo = 0
        var hi = lineStarts.count - 1
        while lo < hi {
            let mid = (lo + hi + 1) / 2
            if lineStarts[mid] <= index { lo = mid } else { hi = mid - 1 }
        }
        return (lo + 1, index - lineStarts[lo] + 1)
    }

    func lineNumber(_ index: Int) -> Int { location(index).line }

    func error(_ message: String, at index: Int) -> TOMLSyntaxError {
        let (line, column) = location(index)
        return TOMLSyntaxError(line: line, column: column, message: message)
    }

    // MARK: Low-level scanning

    func peek(_ offset: Int = 0) -> Unicode.Scalar? {
        let i = pos + offset
        return i < text.count ? text[i] : nil
    }

    mutating func skipWhitespace() {
        while let c = peek(), c == " " || c == "\t" { pos += 1 }
    }

    /// Consumes LF or CRLF. A CR on its own is not a line ending in TOML.
    mutating func consumeNewline() throws(TOMLSyntaxError) -> Bool {
        switch peek() {
        case "\n":
            pos += 1
            return true
        case "\r":
            guard peek(1) == "\n" else {
                throw error("bare carriage return; lines must end with LF or CRLF", at: pos)
            }
            pos += 2
            return true
        default:
            return false
        }
    }

    /// Skips a `#` comment up to (not including) the line ending.
    mutating func skipComment() throws(TOMLSyntaxError) {
        guard peek() == "#" else { return }
        pos += 1
        while let c = peek(), c != "\n", c != "\r" {
            if isForbiddenControl(c) {
                throw error("control character \(codePoint(c)) is not allowed in comments", at: pos)
            }
            pos += 1
        }
    }

    /// Skips whitespace, comments and line endings: what may separate array elements.
    mutating func skipBlankSpace() throws(TOMLSyntaxError) {
        while true {
            skipWhitespace()
            try skipComment()
            if !(try consumeNewline()) { return }
        }
    }

    /// After a value or a header only whitespace and a comment may follow on the same line.
    mutating func expectLineEnd(after what: String) throws(TOMLSyntaxError) {
        skipWhitespace()
        try skipComment()
        if pos >= text.count { return }
        if try consumeNewline() { return }
        var end = pos
        while end < text.count, end - pos < 30, !" \t\r\n#".unicodeScalars.contains(text[end]) { end += 1 }
        let word = end > pos ? string(pos..<end) : String(text[pos])
        throw error("unexpected \(quoted(word)) after \(what); expected the end of the line or a comment", at: pos)
    }

    func string(_ range: Range<Int>) -> String {
        String(String.UnicodeScalarView(text[range]))
    }

    // MARK: Document structure

    mutating func parseDocument() throws(TOMLSyntaxError) -> TOMLTable {
        while true {
            skipWhitespace()
            guard let c = peek() else { break }
            if c == "#" {
                try skipComment()
            } else if try consumeNewline() {
                continue
            } else if c == "[" {
                try parseHeader()
                try expectLineEnd(after: "the table header")
            } else {
                try parseKeyValue(into: current)
                try expectLineEnd(after: "the value")
            }
        }
        return root.build()
    }

    /// `[a.b]` or `[[a.b]]`; makes the named table the target of the following keys.
    mutating func parseHeader() throws(TOMLSyntaxError) {
        let start = pos
        let isArray = peek(1) == "["
        pos += isArray ? 2 : 1
        skipWhitespace()
        if peek() == "]" { throw error("empty table name in header", at: pos) }
        let parts = try parseKey()
        skipWhitespace()
        let name = displayKey(parts)
        if isArray {
            guard peek() == "]", peek(1) == "]" else {
                throw error("expected ']]' to close the header [[\(name)]]", at: pos)
            }
            pos += 2
        } else {
            guard peek() == "]" else { throw error("expected ']' to close the header [\(name)]", at: pos) }
            pos += 1
        }

        let line = lineNumber(start)
        let shown = isArray ? "[[\(name)]]" : "[\(name)]"
        var table = root
        for part in parts.dropLast() {
            table = try descendForHeader(table, part, header: shown, line: line)
        }
        guard let last = parts.last else { return }  // parseKey always yields at least one part
        if isArray {
            current = try appendToTableArray(table, last, name: name, line: line)
        } else {
            current = try defineTable(table, last, name: name, line: line)
        }
    }

    /// Steps through `part` on the way to a header's table, creating it implicitly if needed.
    mutating func descendForHeader(_ table: TableBuilder, _ part: KeyPart, header: String, line: Int)
        throws(TOMLSyntaxError) -> TableBuilder
    {
        guard let slot = table[part.name] else {
            let child = try makeTable(.implicit, line: line, in: table, at: part.start)
            table.set(part.name, Slot(line: line, item: .table(child)))
            return child
        }
        switch slot.item {
        case .table(let child):
            // Headers may add sub-tables to any table, including ones made by dotted keys.
            return child
        case .tableArray(let array):
            // `[a.b]` after `[[a]]` refers to the most recently appended `a`.
            guard let last = array.elements.last else {
                throw error("internal error: empty array of tables", at: part.start)
            }
            return last
        case .value(.table):
            throw error(
                "cannot define \(header): \(quoted(part.name)) is an inline table (line \(slot.line)) and cannot be extended",
                at: part.start)
        case .value:
            throw error(
                "cannot define \(header): \(quoted(part.name)) is already a value (defined on line \(slot.line))",
                at: part.start)
        }
    }

    mutating func defineTable(_ table: TableBuilder, _ last: KeyPart, name: String, line: Int)
        throws(TOMLSyntaxError) -> TableBuilder
    {
        guard let slot = table[last.name] else {
            let child = try makeTable(.header, line: line, in: table, at: last.start)
            table.set(last.name, Slot(line: line, item: .table(child)))
            return child
        }
        switch slot.item {
        case .table(let child):
            switch child.origin {
            case .implicit:
                // `[a.b]` came first and created `a` on the way; `[a]` now defines it properly.
                child.origin = .header
                child.line = line
                table.set(last.name, Slot(line: line, item: slot.item))
                return child
            case .dotted:
                throw error("table [\(name)] is already defined by dotted keys on line \(slot.line)", at: last.start)
            case .root, .header, .inline:
                throw error("table [\(name)] is already defined on line \(slot.line)", at: last.start)
            }
        case .tableArray:
            throw error(
                "cannot define [\(name)] as a table: it is already an array of tables (first [[\(name)]] on line \(slot.line))",
                at: last.start)
        case .value(.table):
            throw error("table [\(name)] is already defined as an inline table on line \(slot.line)", at: last.start)
        case .value:
            throw error(
                "cannot define table [\(name)]: \(quoted(last.name)) is already a value (defined on line \(slot.line))",
                at: last.start)
        }
    }

    mutating func appendToTableArray(_ table: TableBuilder, _ last: KeyPart, name: String, line: Int)
        throws(TOMLSyntaxError) -> TableBuilder
    {
        let element = try makeTable(.header, line: line, in: table, at: last.start)
        guard let slot = table[last.name] else {
            table.set(last.name, Slot(line: line, item: .tableArray(TableArrayBuilder(element))))
            return element
        }
        switch slot.item {
        case .tableArray(let array):
            // The entry keeps the line of the first `[[name]]`; the new table has its own.
            array.elements.append(element)
            return element
        case .table:
            throw error(
                "cannot append [[\(name)]]: \(quoted(last.name)) is already a table (defined on line \(slot.line))",
                at: last.start)
        case .value(.array):
            throw error(
                "cannot append [[\(name)]]: \(quoted(last.name)) is a static array (defined on line \(slot.line)) and cannot be extended",
                at: last.start)
        case .value:
            throw error(
                "cannot append [[\(name)]]: \(quoted(last.name)) is already a value (defined on line \(slot.line))",
                at: last.start)
        }
    }

    func makeTable(_ origin: TableBuilder.Origin, line: Int, in parent: TableBuilder, at index: Int)
        throws(TOMLSyntaxError) -> TableBuilder
    {
        guard parent.depth < Self.maxDepth else {
            throw error("tables are nested too deeply (more than \(Self.maxDepth) levels)", at: index)
        }
        return TableBuilder(origin: origin, line: line, depth: parent.depth + 1)
    }

    // MARK: Keys

    /// `key = value`, where the key may be dotted; the value lands in `table` or a sub-table of it.
    mutating func parseKeyValue(into table: TableBuilder) throws(TOMLSyntaxError) {
        let keyStart = pos
        let parts = try parseKey()
        // Shown in messages inside quotes, so a lone key is shown as written, not re-quoted.
        let keyText = parts.count == 1 ? parts[0].name : displayKey(parts)
        skipWhitespace()
        guard peek() == "=" else { throw error("expected '=' after key \(quoted(keyText))", at: pos) }
        pos += 1
        skipWhitespace()
        if peek().map({ "\r\n#,]}".unicodeScalars.contains($0) }) ?? true {
            throw error("missing value for key \(quoted(keyText))", at: pos)
        }

        let line = lineNumber(keyStart)
        var target = table
        for part in parts.dropLast() {
            target = try descendForDottedKey(target, part, key: keyText, line: line)
        }
        guard let last = parts.last else { return }  // parseKey always yields at least one part
        if let existing = target[last.name] {
            throw error("duplicate key \(quoted(keyText)) (first defined on line \(existing.line))", at: keyStart)
        }
        let value = try parseValue(depth: target.depth + 1)
        target.set(last.name, Slot(line: line, item: .value(value)))
    }

    /// Steps through `part` of a dotted key, creating the table if needed.
    mutating func descendForDottedKey(_ table: TableBuilder, _ part: KeyPart, key: String, line: Int)
        throws(TOMLSyntaxError) -> TableBuilder
    {
        guard let slot = table[part.name] else {
            let child = try makeTable(.dotted, line: line, in: table, at: part.start)
            table.set(part.name, Slot(line: line, item: .table(child)))
            return child
        }
        switch slot.item {
        case .table(let child) where child.origin == .dotted:
            return child
        case .table(let child) where child.origin == .implicit:
            // Only passed through by a header (`[a.b.c]` then `[a]` with `b.d = 1`): the dotted
            // key defines it now, so a later `[a.b]` would be a redefinition.
            child.origin = .dotted
            child.line = line
            table.set(part.name, Slot(line: line, item: slot.item))
            return child
        case .table:
            // TOML forbids reopening a table defined by a header through dotted keys elsewhere.
            throw error(
                "cannot set \(quoted(key)) with a dotted key: table \(quoted(part.name)) was created by a header "
                    + "on line \(slot.line); set the key under that header instead",
                at: part.start)
        case .tableArray:
            throw error(
                "cannot set \(quoted(key)) with a dotted key: \(quoted(part.name)) is an array of tables (line \(slot.line))",
                at: part.start)
        case .value(.table):
            throw error(
                "cannot set \(quoted(key)): \(quoted(part.name)) is an inline table (line \(slot.line)) and cannot be extended",
                at: part.start)
        case .value:
            throw error(
                "cannot set \(quoted(key)): \(quoted(part.name)) is already a value (defined on line \(slot.line))",
                at: part.start)
        }
    }

    /// One or more simple keys joined by dots, with optional whitespace around the dots.
    mutating func parseKey() throws(TOMLSyntaxError) -> [KeyPart] {
        var parts = [try parseSimpleKey()]
        while true {
            let save = pos
            skipWhitespace()
            guard peek() == "." else {
                pos = save
                return parts
            }
            pos += 1
            skipWhitespace()
            parts.append(try parseSimpleKey())
        }
    }

    mutating func parseSimpleKey() throws(TOMLSyntaxError) -> KeyPart {
        let start = pos
        guard let first = peek() else { throw error("expected a key, found the end of the file", at: pos) }
        if first == "\"" || first == "'" {
            if peek(1) == first, peek(2) == first {
                throw error("multi-line strings cannot be used as keys", at: pos)
            }
            let name: String
            if first == "\"" { name = try parseBasicString() } else { name = try parseLiteralString() }
            return KeyPart(name: name, start: start)
        }
        while let c = peek(), isBareKeyScalar(c) { pos += 1 }
        // A character that would continue a word (e.g. `a@b`, `wéight`) is a bad key, not a missing '='.
        if let c = peek(), continuesWord(c) {
            var end = pos
            while end < text.count, end - start < 40, continuesWord(text[end]) || isBareKeyScalar(text[end]) {
                end += 1
            }
            let word = quoted(string(start..<end))
            throw error(
                "invalid character \(describe(c)) in bare key \(word); bare keys may only contain "
                    + "A-Z, a-z, 0-9, '_' and '-' (quote other keys, e.g. \(word))",
                at: pos)
        }
        guard pos > start else {
            throw error("expected a key, found \(peek().map(describe) ?? "the end of the file")", at: pos)
        }
        return KeyPart(name: string(start..<pos), start: start)
    }

    // MARK: Values

    mutating func parseValue(depth: Int) throws(TOMLSyntaxError) -> TOMLValue {
        guard depth <= Self.maxDepth else {
            throw error("values are nested too deeply (more than \(Self.maxDepth) levels)", at: pos)
        }
        guard let c = peek() else { throw error("expected a value, found the end of the file", at: pos) }
        switch c {
        case "\"", "'":
            let tripled = peek(1) == c && peek(2) == c
            if tripled { return .string(try parseMultilineString(literal: c == "'")) }
            if c == "'" { return .string(try parseLiteralString()) }
            return .string(try parseBasicString())
        case "[":
            return try parseArray(depth: depth)
        case "{":
            return try parseInlineTable(depth: depth)
        default:
            return try parseBareValue()
        }
    }

    /// `[ v, v, ... ]`; may span lines and hold comments and a trailing comma.
    mutating func parseArray(depth: Int) throws(TOMLSyntaxError) -> TOMLValue {
        let open = pos
        pos += 1
        var items: [TOMLValue] = []
        while true {
            try skipBlankSpace()
            guard let c = peek() else { throw error("unterminated array (missing ']')", at: open) }
            if c == "]" {
                pos += 1
                return .array(items)
            }
            items.append(try parseValue(depth: depth + 1))
            try skipBlankSpace()
            switch peek() {
            case ",":
                pos += 1
            case "]":
                pos += 1
                return .array(items)
            case nil:
                throw error("unterminated array (missing ']')", at: open)
            case let other?:
                throw error("expected ',' or ']' after an array element, found \(describe(other))", at: pos)
            }
        }
    }

    /// `{ k = v, ... }`; TOML 1.0 keeps these on one line with no trailing comma.
    mutating func parseInlineTable(depth: Int) throws(TOMLSyntaxError) -> TOMLValue {
        let open = pos
        pos += 1
        let table = TableBuilder(origin: .inline, line: lineNumber(open), depth: depth)
        skipWhitespace()
        if peek() == "}" {
            pos += 1
            return .table(table.build())
        }
        while true {
            skipWhitespace()
            switch peek() {
            case nil:
                throw error("unterminated inline table (missing '}')", at: open)
            case "\n", "\r":
                throw error(
                    "newline inside an inline table; inline tables must be on one line (use a [table] instead)",
                    at: pos)
            case "}":
                throw error("trailing comma is not allowed in an inline table", at: pos)
            case "#":
                throw error("comment inside an inline table; inline tables must be on one line", at: pos)
            default:
                break
            }
            try parseKeyValue(into: table)
            skipWhitespace()
            switch peek() {
            case ",":
                pos += 1
            case "}":
                pos += 1
                return .table(table.build())
            case nil:
                throw error("unterminated inline table (missing '}')", at: open)
            case "\n", "\r":
                throw error(
                    "newline inside an inline table; inline tables must be on one line (use a [table] instead)",
                    at: pos)
            case let other?:
                throw error("expected ',' or '}' in inline table, found \(describe(other))", at: pos)
            }
        }
    }

    /// Booleans, numbers, and everything unquoted that is not one of them.
    mutating func parseBareValue() throws(TOMLSyntaxError) -> TOMLValue {
        let start = pos
        while let c = peek(), !" \t\r\n,[]{}#\"'".unicodeScalars.contains(c) { pos += 1 }
        guard pos > start else {
            throw error("expected a value, found \(peek().map(describe) ?? "the end of the file")", at: pos)
        }
        let scalars = Array(text[start..<pos])
        let token = string(start..<pos)
        switch token {
        case "true": return .boolean(true)
        case "false": return .boolean(false)
        case "inf", "+inf": return .float(.infinity)
        case "-inf": return .float(-.infinity)
        case "nan", "+nan", "-nan": return .float(.nan)
        default: break
        }
        if looksLikeDateTime(scalars) {
            throw error(
                "dates and times are not supported (found \(quoted(token))); quote it to use a string",
                at: start)
        }
        if looksNumeric(scalars) {
            return try parseNumber(scalars, token: token, at: start)
        }
        if token.lowercased() == "true" || token.lowercased() == "false" {
            throw error(
                "bare word \(quoted(token)); booleans are written true or false, and strings must be quoted, e.g. \(quoted(token))",
                at: start)
        }
        throw error("bare word \(quoted(token)); quote strings, e.g. \(quoted(token))", at: start)
    }

    // MARK: Numbers

    /// Strict TOML numbers: `_` only between digits, no leading zeros, lowercase base prefixes.
    func parseNumber(_ s: [Unicode.Scalar], token: String, at start: Int) throws(TOMLSyntaxError) -> TOMLValue {
        func invalid(_ why: String) -> TOMLSyntaxError {
            error("invalid number \(quoted(token)): \(why)", at: start)
        }
        func overflow() -> TOMLSyntaxError {
            error("integer overflow: \(quoted(token)) does not fit in a 64-bit signed integer", at: start)
        }
        /// Scans digits of `radix` with single underscores between them; returns the end index.
        func scanDigits(from index: Int, radix: Int, missing: String) throws(TOMLSyntaxError) -> Int {
            guard index < s.count, digitValue(s[index], radix: radix) != nil else { throw invalid(missing) }
            var j = index
            while j < s.count {
                if digitValue(s[j], radix: radix) != nil {
                    j += 1
                } else if s[j] == "_" {
                    guard j + 1 < s.count, digitValue(s[j + 1], radix: radix) != nil else {
                        throw invalid("each '_' must be between two digits")
                    }
                    j += 1
                } else {
                    break
                }
            }
            return j
        }

        var i = 0
        let negative = s.first == "-"
        if s.first == "+" || s.first == "-" { i = 1 }

        // 0x / 0o / 0b integers.
        if s.count >= i + 2, s[i] == "0", let radix = radixOfPrefix(s[i + 1]) {
            guard "xob".unicodeScalars.contains(s[i + 1]) else {
                throw invalid("base prefixes must be lowercase (0x, 0o, 0b)")
            }
            guard i == 0 else { throw invalid("hexadecimal, octal and binary integers cannot have a sign") }
            let name = radix == 16 ? "hexadecimal" : radix == 8 ? "octal" : "binary"
            let missing = s.count > 2 && s[2] != "_"
                ? "\(describe(s[2])) is not a valid \(name) digit" : "expected \(name) digits after the prefix"
            let end = try scanDigits(from: 2, radix: radix, missing: missing)
            guard end == s.count else {
                throw invalid(s[end] == "_"
                    ? "each '_' must be between two digits" : "\(describe(s[end])) is not a valid \(name) digit")
            }
            var value: Int64 = 0
            for c in s[2...] {
                guard let d = digitValue(c, radix: radix) else { continue }  // skips '_'
                let (shifted, o1) = value.multipliedReportingOverflow(by: Int64(radix))
                let (sum, o2) = shifted.addingReportingOverflow(Int64(d))
                if o1 || o2 { throw overflow() }
                value = sum
            }
            return .integer(value)
        }

        // The integer part is shared by integers and floats and may not have leading zeros.
        let intEnd = try scanDigits(from: i, radix: 10, missing: "expected a digit before the decimal point")
        if intEnd - i > 1, s[i] == "0" { throw invalid("leading zeros are not allowed") }

        if intEnd == s.count {
            var value: Int64 = 0
            for c in s[i...] {
                guard let d = digitValue(c, radix: 10) else { continue }  // skips '_'
                // Accumulate towards the sign so that Int64.min is representable.
                let (shifted, o1) = value.multipliedReportingOverflow(by: 10)
                let (sum, o2) = negative
                    ? shifted.subtractingReportingOverflow(Int64(d))
                    : shifted.addingReportingOverflow(Int64(d))
                if o1 || o2 { throw overflow() }
                value = sum
            }
            return .integer(value)
        }

        var j = intEnd
        if s[j] == "." {
            j = try scanDigits(from: j + 1, radix: 10, missing: "expected a digit after the decimal point")
        }
        if j < s.count, s[j] == "e" || s[j] == "E" {
            j += 1
            if j < s.count, s[j] == "+" || s[j] == "-" { j += 1 }
            // Exponents may have leading zeros (TOML allows `1e06`).
            j = try scanDigits(from: j, radix: 10, missing: "expected digits in the exponent")
        }
        guard j == s.count else { throw invalid("unexpected \(describe(s[j]))") }
        let digits = String(String.UnicodeScalarView(s.filter { $0 != "_" }))
        guard let value = Double(digits), value.isFinite else {
            throw error("float \(quoted(token)) is out of range", at: start)
        }
        return .float(value)
    }

    // MARK: Strings

    /// `"..."` with escapes, on one line.
    mutating func parseBasicString() throws(TOMLSyntaxError) -> String {
        let open = pos
        pos += 1
        var out = String.UnicodeScalarView()
        while true {
            guard let c = peek() else { throw error("unterminated string (missing closing '\"')", at: open) }
            switch c {
            case "\"":
                pos += 1
                return String(out)
            case "\\":
                // A backslash cannot continue a single-line string onto the next line.
                if peek(1) == "\n" || peek(1) == "\r" { pos += 1; continue }
                out.append(try parseEscape(stringStart: open))
            case "\n", "\r":
                throw error(
                    "newline inside a single-line string (missing closing '\"'?); use \"\"\" for multi-line strings",
                    at: pos)
            default:
                try checkStringScalar(c)
                out.append(c)
                pos += 1
            }
        }
    }

    /// `'...'`: no escapes at all, on one line.
    mutating func parseLiteralString() throws(TOMLSyntaxError) -> String {
        let open = pos
        pos += 1
        let contentStart = pos
        while true {
            guard let c = peek() else { throw error("unterminated string (missing closing \"'\")", at: open) }
            switch c {
            case "'":
                let s = string(contentStart..<pos)
                pos += 1
                return s
            case "\n", "\r":
                throw error(
                    "newline inside a single-line string (missing closing \"'\"?); use ''' for multi-line strings",
                    at: pos)
            default:
                try checkStringScalar(c)
                pos += 1
            }
        }
    }

    /// `"""..."""` (with escapes) or `'''...'''` (without). Line endings are normalised to "\n".
    mutating func parseMultilineString(literal: Bool) throws(TOMLSyntaxError) -> String {
        let quote: Unicode.Scalar = literal ? "'" : "\""
        let delimiter = literal ? "'''" : "\"\"\""
        let open = pos
        pos += 3
        // A line ending straight after the opening delimiter is not part of the string.
        _ = try consumeNewline()
        var out = String.UnicodeScalarView()
        while true {
            guard let c = peek() else {
                throw error("unterminated multi-line string (missing closing \(delimiter))", at: open)
            }
            switch c {
            case quote:
                // Up to two quotes may sit directly before the closing delimiter.
                let runStart = pos
                while peek() == quote { pos += 1 }
                let run = pos - runStart
                if run < 3 {
                    for _ in 0..<run { out.append(quote) }
                } else if run <= 5 {
                    for _ in 0..<(run - 3) { out.append(quote) }
                    return String(out)
                } else {
                    throw error(
                        "too many quotes: at most two may come directly before the closing \(delimiter)",
                        at: runStart)
                }
            case "\\" where !literal:
                if try skipLineEndingBackslash() { continue }
                out.append(try parseEscape(stringStart: open))
            case "\n", "\r":
                _ = try consumeNewline()
                out.append("\n")
            default:
                try checkStringScalar(c)
                out.append(c)
                pos += 1
            }
        }
    }

    /// In `"""` strings a backslash that ends a line removes the line ending and the
    /// whitespace (including further blank lines) that follows it.
    mutating func skipLineEndingBackslash() throws(TOMLSyntaxError) -> Bool {
        var j = pos + 1
        while j < text.count, text[j] == " " || text[j] == "\t" { j += 1 }
        guard j < text.count, text[j] == "\n" || text[j] == "\r" else { return false }
        pos = j
        while true {
            skipWhitespace()
            if !(try consumeNewline()) { return true }
        }
    }

    /// Reads one escape sequence starting at the backslash.
    mutating func parseEscape(stringStart: Int) throws(TOMLSyntaxError) -> Unicode.Scalar {
        let start = pos
        pos += 1
        guard let c = peek() else { throw error("unterminated string (missing closing '\"')", at: stringStart) }
        pos += 1
        switch c {
        case "b": return "\u{08}"
        case "t": return "\t"
        case "n": return "\n"
        case "f": return "\u{0C}"
        case "r": return "\r"
        case "\"": return "\""
        case "\\": return "\\"
        case "u": return try parseUnicodeEscape(digits: 4, start: start)
        case "U": return try parseUnicodeEscape(digits: 8, start: start)
        default:
            let shown = isForbiddenControl(c) || c == " " || c == "\t" || c == "\n" || c == "\r"
                ? "'\\' followed by \(describe(c))" : "\\\(c)"
            throw error(
                "invalid escape sequence \(shown); valid escapes are \\b \\t \\n \\f \\r \\\" \\\\ \\uXXXX \\UXXXXXXXX",
                at: start)
        }
    }

    mutating func parseUnicodeEscape(digits: Int, start: Int) throws(TOMLSyntaxError) -> Unicode.Scalar {
        var value: UInt32 = 0
        for _ in 0..<digits {
            guard let c = peek(), let d = digitValue(c, radix: 16) else {
                throw error(
                    "invalid escape sequence: \\\(digits == 4 ? "u" : "U") needs exactly \(digits) hexadecimal digits",
                    at: start)
            }
            value = value &* 16 &+ UInt32(d)  // at most 8 digits, so this never wraps
            pos += 1
        }
        guard let scalar = Unicode.Scalar(value) else {
            throw error("invalid escape sequence \(string(start..<pos)): not a Unicode scalar value", at: start)
        }
        return scalar
    }

    /// TOML allows tab but no other control characters raw inside strings.
    func checkStringScalar(_ c: Unicode.Scalar) throws(TOMLSyntaxError) {
        if isForbiddenControl(c) {
            throw error("control character \(codePoint(c)) must be escaped in strings", at: pos)
        }
    }
}

// MARK: - Character classes and formatting

private func isBareKeyScalar(_ c: Unicode.Scalar) -> Bool {
    switch c {
    case "A"..."Z", "a"..."z", "0"..."9", "_", "-": return true
    default: return false
    }
}

/// Scalars that cannot end a bare key: they would be read as part of it by a person.
private func continuesWord(_ c: Unicode.Scalar) -> Bool {
    if isBareKeyScalar(c) { return false }
    if !c.isASCII { return true }
    return !" \t\r\n=.[]{},#\"':".unicodeScalars.contains(c)
}

/// Control characters other than tab (line endings are handled before this is asked).
private func isForbiddenControl(_ c: Unicode.Scalar) -> Bool {
    (c.value < 0x20 && c != "\t") || c.value == 0x7F
}

private func digitValue(_ c: Unicode.Scalar, radix: Int) -> Int? {
    let d: Int
    switch c {
    case "0"..."9": d = Int(c.value) - 0x30
    case "a"..."f": d = Int(c.value) - 0x61 + 10
    case "A"..."F": d = Int(c.value) - 0x41 + 10
    default: return nil
    }
    return d < radix ? d : nil
}

private func radixOfPrefix(_ c: Unicode.Scalar) -> Int? {
    switch c {
    case "x", "X": return 16
    case "o", "O": return 8
    case "b", "B": return 2
    default: return nil
    }
}

private func isDigit(_ c: Unicode.Scalar) -> Bool { ("0"..."9").contains(c) }

/// `1979-05-27...` or `07:32:00...`: recognised only to reject them clearly.
private func looksLikeDateTime(_ s: [Unicode.Scalar]) -> Bool {
    if s.count >= 5, s[0..<4].allSatisfy(isDigit), s[4] == "-" { return true }
    if s.count >= 3, s[0..<2].allSatisfy(isDigit), s[2] == ":" { return true }
    return false
}

/// Whether an unquoted token is meant as a number (and so gets number errors, not "bare word").
private func looksNumeric(_ s: [Unicode.Scalar]) -> Bool {
    var i = 0
    if s.first == "+" || s.first == "-" { i = 1 }
    guard i < s.count else { return false }
    if s[i] == "0", i + 1 < s.count, radixOfPrefix(s[i + 1]) != nil { return true }
    guard isDigit(s[i]) || s[i] == "." else { return false }
    return s[i...].contains(where: isDigit)
        && s[i...].allSatisfy { isDigit($0) || "_.eE+-".unicodeScalars.contains($0) }
}

private func codePoint(_ c: Unicode.Scalar) -> String {
    let hex = String(c.value, radix: 16, uppercase: true)
    return "U+" + String(repeating: "0", count: max(0, 4 - hex.count)) + hex
}

/// How a single character is named in messages.
private func describe(_ c: Unicode.Scalar) -> String {
    switch c {
    case "\n", "\r": return "the end of the line"
    case "\t": return "a tab"
    case "'": return "\"'\""
    default:
        if isForbiddenControl(c) { return "control character \(codePoint(c))" }
        // Invisible in a message otherwise, e.g. a no-break space pasted from a web page.
        if !c.isASCII, c.properties.isWhitespace { return "\(codePoint(c)) (a non-ASCII space)" }
        return "'\(c)'"
    }
}

/// A string in double quotes for messages, escaped so that the message stays on one line.
private func quoted(_ s: String) -> String {
    var out = "\""
    for c in s.unicodeScalars {
        switch c {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\t": out += "\\t"
        case "\r": out += "\\r"
        default: out += isForbiddenControl(c) ? "\\u{\(String(c.value, radix: 16))}" : String(c)
        }
    }
    return out + "\""
}

/// A dotted key as it could be written back: bare where possible, quoted otherwise.
private func displayKey(_ parts: [KeyPart]) -> String {
    parts.map { part in
        !part.name.isEmpty && part.name.unicodeScalars.allSatisfy(isBareKeyScalar) ? part.name : quoted(part.name)
    }.joined(separator: ".")
}
