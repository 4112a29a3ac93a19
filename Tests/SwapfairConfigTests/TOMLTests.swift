import Testing
@testable import SwapfairConfig

// MARK: - Helpers

/// Parses `text`, which is expected to fail, and returns the error (nil if it parsed).
private func syntaxError(_ text: String) -> TOMLSyntaxError? {
    do {
        _ = try TOML.parse(text)
        return nil
    } catch {
        return error
    }
}

/// The table inside a `.table` value, or nil.
private func tableValue(_ value: TOMLValue?) -> TOMLTable? {
    if case .table(let t)? = value { return t }
    return nil
}

/// The elements of an `.array` value, or nil.
private func arrayValue(_ value: TOMLValue?) -> [TOMLValue]? {
    if case .array(let a)? = value { return a }
    return nil
}

private func floatValue(_ value: TOMLValue?) -> Double? {
    if case .float(let f)? = value { return f }
    return nil
}

// MARK: - Documents, comments, lines

@Test func emptyDocumentIsAnEmptyRootOnLineZero() throws {
    let doc = try TOML.parse("")
    #expect(doc.entries.isEmpty)
    #expect(doc.line == 0)
    #expect(try TOML.parse("\n  \n# only a comment\n") == TOMLTable(entries: [], line: 0))
}

@Test func entriesKeepDocumentOrderAndTheirLines() throws {
    let doc = try TOML.parse("""
        zeta = 1

        alpha = "a"
        mid = true
        """)
    #expect(doc.entries.map(\.key) == ["zeta", "alpha", "mid"])
    #expect(doc.entries.map(\.line) == [1, 3, 4])
    #expect(doc["zeta"] == TOMLEntry(key: "zeta", value: .integer(1), line: 1))
    #expect(doc["alpha"]?.value == .string("a"))
    #expect(doc["missing"] == nil)
}

@Test func commentsAndBlankLinesAreIgnoredIncludingAfterValues() throws {
    let doc = try TOML.parse("""
        # leading comment
        \t
        a = 1 # trailing comment
        b = "# not a comment" # but this is
        [t] # comment after a header
        c = 2#no space needed
        """)
    #expect(doc["a"]?.value == .integer(1))
    #expect(doc["b"]?.value == .string("# not a comment"))
    #expect(tableValue(doc["t"]?.value)?["c"]?.value == .integer(2))
    #expect(doc["t"]?.line == 5)
}

@Test func crlfLineEndingsCountAsOneLineEach() throws {
    let doc = try TOML.parse("a = 1\r\n\r\nb = 'x'\r\n[t]\r\nc = [\r\n  1,\r\n]\r\nd = \"\"\"\r\nhi\r\n\"\"\"\r\n")
    #expect(doc["a"]?.line == 1)
    #expect(doc["b"]?.line == 3)
    #expect(doc["t"]?.line == 4)
    let t = try #require(tableValue(doc["t"]?.value))
    #expect(t["c"] == TOMLEntry(key: "c", value: .array([.integer(1)]), line: 5))
    // Line endings inside multi-line strings are normalised to "\n".
    #expect(t["d"] == TOMLEntry(key: "d", value: .string("hi\n"), line: 8))
}

@Test func errorDescriptionNamesLineAndColumn() {
    let error = TOMLSyntaxError(line: 3, column: 9, message: "expected '=' after key \"weight\"")
    #expect(error.description == "line 3, column 9: expected '=' after key \"weight\"")
}

// MARK: - Keys

@Test func bareQuotedAndLiteralKeysAreAccepted() throws {
    let doc = try TOML.parse("""
        bare_key-1 = 1
        "quoted key" = 2
        'literal "key"' = 3
        "" = 4
        "\\u00e9t\\u00e9" = 5
        1234 = 6
        """)
    #expect(doc.entries.map(\.key) == ["bare_key-1", "quoted key", "literal \"key\"", "", "été", "1234"])
    #expect(doc["1234"]?.value == .integer(6))
}

@Test func dottedKeysCreateSubTablesOnTheKeyLine() throws {
    let doc = try TOML.parse("""
        name = "x"
        limits.memory = 1
        limits . "swap max" = 2
        a.b.c = true
        """)
    let limits = try #require(tableValue(doc["limits"]?.value))
    #expect(doc["limits"]?.line == 2)
    #expect(limits.line == 2)
    #expect(limits.entries == [
        TOMLEntry(key: "memory", value: .integer(1), line: 2),
        TOMLEntry(key: "swap max", value: .integer(2), line: 3),
    ])
    let b = tableValue(tableValue(doc["a"]?.value)?["b"]?.value)
    #expect(b?["c"] == TOMLEntry(key: "c", value: .boolean(true), line: 4))
}

// MARK: - Tables

@Test func tableHeadersOpenTablesOnTheirHeaderLine() throws {
    let doc = try TOML.parse("""
        top = 1

        [host]
        budget = 10
        [ "other table" ]
        x = 'y'
        """)
    #expect(doc.entries.map(\.key) == ["top", "host", "other table"])
    let host = try #require(tableValue(doc["host"]?.value))
    #expect(host.line == 3)
    #expect(doc["host"]?.line == 3)
    #expect(host["budget"] == TOMLEntry(key: "budget", value: .integer(10), line: 4))
    #expect(tableValue(doc["other table"]?.value)?.line == 5)
}

@Test func dottedHeaderCreatesIntermediateTablesThatMayBeDefinedLater() throws {
    let doc = try TOML.parse("""
        [a.b.c]
        x = 1
        [a]
        y = 2
        [a.b.d]
        """)
    let a = try #require(tableValue(doc["a"]?.value))
    // [a] defines the table that [a.b.c] created on the way, so it takes [a]'s line.
    #expect(a.line == 3)
    #expect(doc["a"]?.line == 3)
    #expect(a.entries.map(\.key) == ["b", "y"])
    let b = try #require(tableValue(a["b"]?.value))
    #expect(b.line == 1)
    #expect(tableValue(b["c"]?.value)?["x"]?.value == .integer(1))
    #expect(tableValue(b["d"]?.value)?.line == 5)
}

@Test func headersMayAddSubTablesToDottedKeyTables() throws {
    let doc = try TOML.parse("""
        [fruit]
        apple.color = "red"
        [fruit.apple.texture]
        smooth = true
        """)
    let apple = tableValue(tableValue(doc["fruit"]?.value)?["apple"]?.value)
    #expect(apple?["color"]?.value == .string("red"))
    #expect(tableValue(apple?["texture"]?.value)?["smooth"] == TOMLEntry(key: "smooth", value: .boolean(true), line: 4))
}

@Test func arrayOfTablesAppendsOneTablePerHeaderWithItsOwnLine() throws {
    let doc = try TOML.parse("""
        [[vm]]
        name = "a"

        [[vm]]
        name = "b"
        [[vm]]
        """)
    let entry = try #require(doc["vm"])
    #expect(entry.line == 1)
    let vms = try #require(arrayValue(entry.value)).map(tableValue)
    #expect(vms.map { $0?.line } == [1, 4, 6])
    #expect(vms[0]?["name"] == TOMLEntry(key: "name", value: .string("a"), line: 2))
    #expect(vms[1]?["name"] == TOMLEntry(key: "name", value: .string("b"), line: 5))
    #expect(vms[2]?.entries == [])
}

@Test func subTableHeaderAfterArrayOfTablesBelongsToTheLastElement() throws {
    let doc = try TOML.parse("""
        [[vm]]
        [vm.limits]
        max = 1
        [[vm]]
        [vm.limits]
        max = 2
        [[vm.disks]]
        path = "/d"
        """)
    let vms = try #require(arrayValue(doc["vm"]?.value)).map(tableValue)
    #expect(tableValue(vms[0]?["limits"]?.value)?["max"]?.value == .integer(1))
    #expect(tableValue(vms[1]?["limits"]?.value)?["max"]?.value == .integer(2))
    #expect(tableValue(vms[1]?["limits"]?.value)?.line == 5)
    let disks = try #require(arrayValue(vms[1]?["disks"]?.value))
    #expect(tableValue(disks.first)?["path"]?.value == .string("/d"))
    #expect(vms[0]?["disks"] == nil)
}

// MARK: - Strings

@Test func basicStringsDecodeEveryEscape() throws {
    let doc = try TOML.parse(#"s = "q\" b\\ n\n t\t r\r b\b f\f e\u00e9 smile\U0001F600""#)
    #expect(doc["s"]?.value == .string("q\" b\\ n\n t\t r\r b\u{08} f\u{0C} eé smile\u{1F600}"))
}

@Test func literalStringsKeepBackslashesAndAllowDoubleQuotes() throws {
    let doc = try TOML.parse(#"path = 'C:\Users\n "x"'"#)
    #expect(doc["path"]?.value == .string(#"C:\Users\n "x""#))
}

@Test func multilineBasicStringsTrimTheFirstNewlineAndAllowQuotes() throws {
    let doc = try TOML.parse("""
        s = \"\"\"
        one "two" ""three""
        \\tescaped\"\"\"
        t = \"\"\"x""\"\"\"
        after = 1
        """)
    #expect(doc["s"]?.value == .string("one \"two\" \"\"three\"\"\n\tescaped"))
    #expect(doc["t"]?.value == .string("x\"\""))
    #expect(doc["t"]?.line == 4)
    #expect(doc["after"]?.line == 5)
}

@Test func lineEndingBackslashJoinsLinesInMultilineBasicStrings() throws {
    let doc = try TOML.parse("s = \"\"\"\\\n  The quick \\   \n\n   brown fox.\\\n  \"\"\"\nnext = 2\n")
    #expect(doc["s"]?.value == .string("The quick brown fox."))
    #expect(doc["next"]?.line == 6)
}

@Test func multilineLiteralStringsAreRaw() throws {
    let doc = try TOML.parse("""
        re = '''
        \\d+ "quoted" 'single'
        end'''
        two = ''''x'''''
        """)
    #expect(doc["re"]?.value == .string("\\d+ \"quoted\" 'single'\nend"))
    #expect(doc["two"]?.value == .string("'x''"))
}

// MARK: - Numbers and booleans

@Test func decimalIntegersAcceptSignsAndUnderscoresBetweenDigits() throws {
    let doc = try TOML.parse("""
        a = 42
        b = +17
        c = -5
        d = 1_000_000
        e = 0
        f = -0
        max = 9223372036854775807
        min = -9223372036854775808
        """)
    let values = doc.entries.map(\.value)
    #expect(values == [.integer(42), .integer(17), .integer(-5), .integer(1_000_000), .integer(0), .integer(0),
                       .integer(.max), .integer(.min)])
}

@Test func hexOctalAndBinaryIntegersAreDecoded() throws {
    let doc = try TOML.parse("""
        h = 0xDEAD_beef
        o = 0o755
        b = 0b1101_0110
        z = 0x00
        big = 0x7FFFFFFFFFFFFFFF
        """)
    #expect(doc.entries.map(\.value) == [.integer(0xDEAD_BEEF), .integer(0o755), .integer(0b1101_0110), .integer(0),
                                          .integer(.max)])
}

@Test func floatsAcceptFractionsExponentsInfAndNan() throws {
    let doc = try TOML.parse("""
        a = 3.14
        b = -0.01
        c = 5e+22
        d = 1e06
        e = -2E-2
        f = 6.626e-34
        g = 9_224.617_5
        h = inf
        i = -inf
        j = +inf
        k = nan
        l = -nan
        """)
    #expect(floatValue(doc["a"]?.value) == 3.14)
    #expect(floatValue(doc["b"]?.value) == -0.01)
    #expect(floatValue(doc["c"]?.value) == 5e22)
    #expect(floatValue(doc["d"]?.value) == 1e6)
    #expect(floatValue(doc["e"]?.value) == -0.02)
    #expect(floatValue(doc["f"]?.value) == 6.626e-34)
    #expect(floatValue(doc["g"]?.value) == 9224.6175)
    #expect(floatValue(doc["h"]?.value) == .infinity)
    #expect(floatValue(doc["i"]?.value) == -.infinity)
    #expect(floatValue(doc["j"]?.value) == .infinity)
    #expect(floatValue(doc["k"]?.value)?.isNaN == true)
    #expect(floatValue(doc["l"]?.value)?.isNaN == true)
}

@Test func booleansAreLowercaseTrueAndFalse() throws {
    let doc = try TOML.parse("on = true\noff = false")
    #expect(doc["on"]?.value == .boolean(true))
    #expect(doc["off"]?.value == .boolean(false))
}

// MARK: - Arrays and inline tables

@Test func arraysMaySpanLinesWithCommentsAndATrailingComma() throws {
    let doc = try TOML.parse("""
        list = [
          1, # one
          # a comment on its own line
          "two",

          [3.5, [true]],
        ]
        empty = []
        after = 'x'
        """)
    #expect(doc["list"] == TOMLEntry(key: "list", value: .array([
        .integer(1), .string("two"), .array([.float(3.5), .array([.boolean(true)])]),
    ]), line: 1))
    #expect(doc["empty"]?.value == .array([]))
    #expect(doc["after"]?.line == 9)
}

@Test func inlineTablesRecordTheLineOfTheirBraceAndKeys() throws {
    let doc = try TOML.parse("""
        x = 0
        point = { x = 1, y = "two", nested.deep = true, list = [1,
          2] }
        empty = {}
        """)
    let point = try #require(tableValue(doc["point"]?.value))
    #expect(point.line == 2)
    #expect(point.entries.map(\.key) == ["x", "y", "nested", "list"])
    #expect(point["y"] == TOMLEntry(key: "y", value: .string("two"), line: 2))
    #expect(tableValue(point["nested"]?.value)?["deep"]?.value == .boolean(true))
    #expect(point["list"]?.value == .array([.integer(1), .integer(2)]))
    #expect(doc["empty"]?.value == .table(TOMLTable(entries: [], line: 4)))
}

@Test func arraysMayHoldInlineTables() throws {
    let doc = try TOML.parse("""
        disks = [
          { path = "/a" },
          { path = "/b" },
        ]
        """)
    let disks = try #require(arrayValue(doc["disks"]?.value)).map(tableValue)
    #expect(disks.map { $0?.line } == [2, 3])
    #expect(disks[1]?["path"] == TOMLEntry(key: "path", value: .string("/b"), line: 3))
}

// MARK: - Errors: keys and tables

@Test func duplicateKeyNamesBothLines() throws {
    let error = try #require(syntaxError("""
        [vm]
        name = "a"

        weight = 1
        weight = 2
        """))
    #expect(error == TOMLSyntaxError(line: 5, column: 1, message: "duplicate key \"weight\" (first defined on line 4)"))
}

@Test func duplicateKeyIsFoundThroughDottedKeysAndInsideInlineTables() throws {
    let dotted = try #require(syntaxError("a.b = 1\na.c = 2\na.b = 3"))
    #expect(dotted.line == 3)
    #expect(dotted.message == "duplicate key \"a.b\" (first defined on line 1)")

    let overTable = try #require(syntaxError("a.b = 1\na = 2"))
    #expect(overTable.line == 2)
    #expect(overTable.message == "duplicate key \"a\" (first defined on line 1)")

    let inline = try #require(syntaxError("t = { x = 1, x = 2 }"))
    #expect(inline == TOMLSyntaxError(line: 1, column: 14, message: "duplicate key \"x\" (first defined on line 1)"))
}

@Test func redefiningATableNamesTheFirstDefinition() throws {
    let error = try #require(syntaxError("""
        [host]
        a = 1

        [host]
        b = 2
        """))
    #expect(error == TOMLSyntaxError(line: 4, column: 2, message: "table [host] is already defined on line 1"))

    let implicitTwice = try #require(syntaxError("[a.b]\n[a]\n[a]"))
    #expect(implicitTwice.line == 3)
    #expect(implicitTwice.message == "table [a] is already defined on line 2")
}

@Test func headerCannotRedefineATableMadeByDottedKeys() throws {
    let error = try #require(syntaxError("""
        [fruit]
        apple.color = "red"
        [fruit.apple]
        """))
    #expect(error.line == 3)
    #expect(error.message == "table [fruit.apple] is already defined by dotted keys on line 2")
}

@Test func dottedKeyCannotReopenATableDefinedByAHeader() throws {
    let error = try #require(syntaxError("""
        [a.b]
        x = 1
        [a]
        b.y = 2
        """))
    #expect(error.line == 4)
    #expect(error.column == 1)
    #expect(error.message.contains("table \"b\" was created by a header on line 1"))
}

@Test func dottedKeysMayFillATableThatAHeaderOnlyPassedThrough() throws {
    // `[a.b.c]` creates `b` on the way without defining it, so `[a]` may give it keys.
    let doc = try TOML.parse("""
        [a.b.c]
        [a]
        b.d = 1
        """)
    let b = try #require(tableValue(tableValue(doc["a"]?.value)?["b"]?.value))
    #expect(b.entries.map(\.key) == ["c", "d"])
    #expect(b["d"] == TOMLEntry(key: "d", value: .integer(1), line: 3))

    // Once the dotted key has defined it, a header for it is a redefinition.
    let error = try #require(syntaxError("[a.b.c]\n[a]\nb.d = 1\n[a.b]"))
    #expect(error.line == 4)
    #expect(error.message == "table [a.b] is already defined by dotted keys on line 3")
}

@Test func tableHeaderOverAnExistingValueIsRejected() throws {
    let error = try #require(syntaxError("""
        vm = 1
        [vm]
        """))
    #expect(error == TOMLSyntaxError(
        line: 2, column: 2, message: "cannot define table [vm]: \"vm\" is already a value (defined on line 1)"))

    let intermediate = try #require(syntaxError("[a]\nb = 'x'\n[a.b.c]"))
    #expect(intermediate.line == 3)
    #expect(intermediate.message.contains("\"b\" is already a value (defined on line 2)"))

    let inline = try #require(syntaxError("t = { a = 1 }\n[t]"))
    #expect(inline.message == "table [t] is already defined as an inline table on line 1")
}

@Test func inlineTablesAndValuesCannotBeExtendedByDottedKeys() throws {
    let inline = try #require(syntaxError("t = { a = 1 }\nt.b = 2"))
    #expect(inline.line == 2)
    #expect(inline.message.contains("is an inline table (line 1) and cannot be extended"))

    let scalar = try #require(syntaxError("t = 1\nt.b = 2"))
    #expect(scalar.message.contains("\"t\" is already a value (defined on line 1)"))
}

@Test func appendingArrayOfTablesToAPlainTableIsRejected() throws {
    let error = try #require(syntaxError("""
        [vm]
        name = "a"
        [[vm]]
        """))
    #expect(error == TOMLSyntaxError(
        line: 3, column: 3, message: "cannot append [[vm]]: \"vm\" is already a table (defined on line 1)"))

    let staticArray = try #require(syntaxError("vm = []\n[[vm]]"))
    #expect(staticArray.message.contains("\"vm\" is a static array (defined on line 1)"))

    let tableAfterArray = try #require(syntaxError("[[vm]]\n[vm]"))
    #expect(tableAfterArray.line == 2)
    #expect(tableAfterArray.message.contains("it is already an array of tables (first [[vm]] on line 1)"))
}

@Test func keyWithoutValueIsRejected() throws {
    let error = try #require(syntaxError("a = 1\nweight =\nb = 2"))
    #expect(error == TOMLSyntaxError(line: 2, column: 9, message: "missing value for key \"weight\""))

    let commentOnly = try #require(syntaxError("weight = # later"))
    #expect(commentOnly.message == "missing value for key \"weight\"")
    #expect(syntaxError("weight =")?.line == 1)
    #expect(syntaxError("t = { a = }")?.message == "missing value for key \"a\"")
}

@Test func keyWithoutEqualsSignIsRejected() throws {
    let error = try #require(syntaxError("\n\n[vm]\nweight 5"))
    #expect(error == TOMLSyntaxError(line: 4, column: 8, message: "expected '=' after key \"weight\""))
    #expect(syntaxError("weight")?.message == "expected '=' after key \"weight\"")
    #expect(syntaxError("my key = 1")?.message == "expected '=' after key \"my\"")
}

@Test func bareKeyWithInvalidCharactersIsRejected() throws {
    let accent = try #require(syntaxError("x = 1\nwéight = 1"))
    #expect(accent.line == 2)
    #expect(accent.column == 2)
    #expect(accent.message.hasPrefix("invalid character 'é' in bare key \"wéight\""))

    let at = try #require(syntaxError("[a@b]"))
    #expect(at.message.hasPrefix("invalid character '@' in bare key \"a@b\""))
    let noBreakSpace = try #require(syntaxError("size\u{A0}= 1"))
    #expect(noBreakSpace.column == 5)
    #expect(noBreakSpace.message.hasPrefix("invalid character U+00A0 (a non-ASCII space) in bare key"))
    #expect(syntaxError("= 1")?.message == "expected a key, found '='")
    #expect(syntaxError("\"\"\"k\"\"\" = 1")?.message == "multi-line strings cannot be used as keys")
}

@Test func malformedHeadersAreRejected() throws {
    #expect(syntaxError("[]")?.message == "empty table name in header")
    #expect(syntaxError("[a")?.message == "expected ']' to close the header [a]")
    #expect(syntaxError("[[a]")?.message == "expected ']]' to close the header [[a]]")
    #expect(syntaxError("[a] b = 1")?.message.hasPrefix("unexpected \"b\" after the table header") == true)
}

// MARK: - Errors: values

@Test func bareWordValueSuggestsQuoting() throws {
    let error = try #require(syntaxError("[host]\nsize = 4G"))
    #expect(error == TOMLSyntaxError(line: 2, column: 8, message: "bare word \"4G\"; quote strings, e.g. \"4G\""))
    #expect(syntaxError("mode = fast")?.message == "bare word \"fast\"; quote strings, e.g. \"fast\"")
    #expect(syntaxError("on = True")?.message.hasPrefix("bare word \"True\"; booleans are written true or false") == true)
}

@Test func datesAndTimesAreRejected() throws {
    for text in ["d = 1979-05-27", "d = 1979-05-27T07:32:00Z", "t = 07:32:00", "d = 1979-05-27 07:32:00"] {
        let error = try #require(syntaxError(text))
        #expect(error.line == 1)
        #expect(error.column == 5)
        #expect(error.message.hasPrefix("dates and times are not supported"))
    }
    #expect(throws: TOMLSyntaxError.self) { try TOML.parse("when = [1979-05-27]") }
}

@Test func trailingGarbageAfterAValueIsRejected() throws {
    let error = try #require(syntaxError("a = 1\nsize = 4 GB\n"))
    #expect(error == TOMLSyntaxError(
        line: 2, column: 10, message: "unexpected \"GB\" after the value; expected the end of the line or a comment"))
    #expect(syntaxError("s = \"x\" \"y\"")?.column == 9)
    #expect(syntaxError("a = [1] 2")?.line == 1)
    #expect(syntaxError("a = 1 b = 2")?.message.hasPrefix("unexpected \"b\" after the value") == true)
}

@Test func integerOverflowIsRejected() throws {
    for text in ["n = 9223372036854775808", "n = -9223372036854775809", "n = 0x8000000000000000",
                 "n = 99999999999999999999999"] {
        let error = try #require(syntaxError(text))
        #expect(error.line == 1)
        #expect(error.message.hasPrefix("integer overflow"))
    }
}

@Test func malformedNumbersAreRejected() throws {
    let cases: [(String, String)] = [
        ("1__0", "each '_' must be between two digits"),
        ("1_", "each '_' must be between two digits"),
        ("012", "leading zeros are not allowed"),
        ("-01", "leading zeros are not allowed"),
        ("01.5", "leading zeros are not allowed"),
        ("1.", "expected a digit after the decimal point"),
        (".5", "expected a digit before the decimal point"),
        ("1e", "expected digits in the exponent"),
        ("1.0.0", "unexpected '.'"),
        ("0x", "expected hexadecimal digits after the prefix"),
        ("0b102", "'2' is not a valid binary digit"),
        ("0o9", "'9' is not a valid octal digit"),
        ("+0x1", "hexadecimal, octal and binary integers cannot have a sign"),
        ("0X1F", "base prefixes must be lowercase (0x, 0o, 0b)"),
    ]
    for (number, reason) in cases {
        let error = try #require(syntaxError("\nn = \(number)"))
        #expect(error == TOMLSyntaxError(line: 2, column: 5, message: "invalid number \"\(number)\": \(reason)"))
    }
    #expect(syntaxError("f = 1e999")?.message == "float \"1e999\" is out of range")
}

@Test func unterminatedStringsReportTheLineTheyStartOn() throws {
    let basic = try #require(syntaxError("a = 1\nb = \"abc"))
    #expect(basic == TOMLSyntaxError(line: 2, column: 5, message: "unterminated string (missing closing '\"')"))
    #expect(syntaxError("b = 'abc")?.message == "unterminated string (missing closing \"'\")")
    #expect(syntaxError("b = \"abc\\")?.message == "unterminated string (missing closing '\"')")

    let multiline = try #require(syntaxError("a = 1\nb = \"\"\"\nline\nline"))
    #expect(multiline.line == 2)
    #expect(multiline.message == "unterminated multi-line string (missing closing \"\"\")")
    #expect(syntaxError("b = '''x''")?.message == "unterminated multi-line string (missing closing ''')")
}

@Test func newlineInsideSingleLineStringIsRejected() throws {
    let error = try #require(syntaxError("a = \"abc\ndef\""))
    #expect(error.line == 1)
    #expect(error.column == 9)
    #expect(error.message.hasPrefix("newline inside a single-line string"))
    #expect(syntaxError("a = 'abc\r\n'")?.message.hasPrefix("newline inside a single-line string") == true)
    // A trailing backslash does not continue a single-line string either.
    #expect(syntaxError("a = \"abc\\\ndef\"")?.message.hasPrefix("newline inside a single-line string") == true)
}

@Test func invalidEscapesAreRejected() throws {
    let error = try #require(syntaxError("a = 1\ns = \"bad \\x41\""))
    #expect(error.line == 2)
    #expect(error.column == 10)
    #expect(error.message.hasPrefix("invalid escape sequence \\x"))
    #expect(syntaxError(#"s = "\e""#)?.message.hasPrefix("invalid escape sequence \\e") == true)
    #expect(syntaxError(#"s = "\u12""#)?.message.contains("needs exactly 4 hexadecimal digits") == true)
    #expect(syntaxError(#"s = "\uD800""#)?.message.contains("not a Unicode scalar value") == true)
    #expect(syntaxError(#"s = "\U00110000""#)?.message.contains("not a Unicode scalar value") == true)
    // A backslash followed by spaces must end the line to be a line-ending backslash.
    #expect(syntaxError("s = \"\"\"a\\  b\"\"\"")?.message.hasPrefix("invalid escape sequence") == true)
}

@Test func tooManyQuotesBeforeClosingDelimiterIsRejected() throws {
    let error = try #require(syntaxError("s = \"\"\"x\"\"\"\"\"\""))
    #expect(error.message.hasPrefix("too many quotes"))
}

@Test func controlCharactersAndBareCarriageReturnsAreRejected() throws {
    #expect(syntaxError("s = \"a\u{07}b\"")?.message == "control character U+0007 must be escaped in strings")
    #expect(syntaxError("a = 1 # bell\u{07}")?.message == "control character U+0007 is not allowed in comments")
    let cr = try #require(syntaxError("a = 1\rb = 2"))
    #expect(cr.line == 1)
    #expect(cr.message.hasPrefix("bare carriage return"))
}

@Test func arrayErrorsNameTheProblem() throws {
    let missingComma = try #require(syntaxError("a = [\n  1\n  2\n]"))
    #expect(missingComma == TOMLSyntaxError(
        line: 3, column: 3, message: "expected ',' or ']' after an array element, found '2'"))

    let unterminated = try #require(syntaxError("x = 1\na = [1,\n2,\n"))
    #expect(unterminated == TOMLSyntaxError(line: 2, column: 5, message: "unterminated array (missing ']')"))
    #expect(syntaxError("a = [,]")?.message == "expected a value, found ','")
    #expect(syntaxError("a = [1,,2]")?.message == "expected a value, found ','")
}

@Test func inlineTablesMustStayOnOneLineWithoutTrailingComma() throws {
    let newline = try #require(syntaxError("t = { a = 1,\n b = 2 }"))
    #expect(newline.line == 1)
    #expect(newline.message.hasPrefix("newline inside an inline table"))
    #expect(syntaxError("t = { a = 1, }")?.message == "trailing comma is not allowed in an inline table")
    #expect(syntaxError("t = { a = 1 b = 2 }")?.message == "expected ',' or '}' in inline table, found 'b'")
    #expect(syntaxError("t = { a = 1")?.message == "unterminated inline table (missing '}')")
}

@Test func deepNestingIsAnErrorNotACrash() throws {
    let deepArray = "a = " + String(repeating: "[", count: 10_000) + String(repeating: "]", count: 10_000)
    #expect(syntaxError(deepArray)?.message.contains("nested too deeply") == true)

    let deepKey = "a" + String(repeating: ".a", count: 10_000) + " = 1"
    #expect(syntaxError(deepKey)?.message.contains("nested too deeply") == true)

    let deepHeader = "[a" + String(repeating: ".a", count: 10_000) + "]"
    #expect(throws: TOMLSyntaxError.self) { try TOML.parse(deepHeader) }

    // Ordinary nesting is well within the limit.
    let nested = try TOML.parse("a = [[[[1]]]]\n[b.c.d.e]\nf.g.h = { i = { j = 1 } }")
    #expect(nested["a"]?.value == .array([.array([.array([.array([.integer(1)])])])]))
}

@Test func everyErrorIsATypedSyntaxError() {
    #expect(throws: TOMLSyntaxError(line: 1, column: 2, message: "expected '=' after key \"x\"")) {
        try TOML.parse("x")
    }
}
