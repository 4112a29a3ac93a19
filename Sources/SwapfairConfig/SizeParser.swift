/// Parses sizes as written in the configuration: `512M`, `4G`, `1.5GiB`, `25%`, `0`, or a
/// TOML integer of bytes. Units are binary (K = KiB = 1024).
public enum SizeParser {
    public enum Failure: Error, Equatable, CustomStringConvertible {
        case empty, malformed(String), unknownUnit(String), percentOutOfRange(Double), tooLarge(String)
        public var description: String {
            switch self {
            case .empty: return "empty size"
            case .malformed(let s): return "\"\(s)\" is not a size (write e.g. 512M, 4G or 25%)"
            case .unknownUnit(let u): return "unknown unit \"\(u)\" (use K, M, G, T or %)"
            case .percentOutOfRange(let p): return "\(p)% is out of range (0 to 100)"
            case .tooLarge(let s): return "\"\(s)\" is too large"
            }
        }
    }

    public static func parse(_ text: String) throws(Failure) -> SizeSpec {
        let s = text.trimmingWhitespace()
        guard !s.isEmpty else { throw .empty }
        let numberPart = s.prefix { $0.isNumber || $0 == "." || $0 == "_" }.filter { $0 != "_" }
        let unit = String(s.dropFirst(s.prefix { $0.isNumber || $0 == "." || $0 == "_" }.count))
            .trimmingWhitespace()
        guard !numberPart.isEmpty, numberPart.first != ".", let value = Double(String(numberPart)) else {
            throw .malformed(s)
        }
        if unit == "%" {
            guard value >= 0 && value <= 100 else { throw .percentOutOfRange(value) }
            return .percent(value)
        }
        let multiplier: Double
        switch unit.uppercased() {
        case "", "B": multiplier = 1
        case "K", "KB", "KIB": multiplier = 0x1p10
        case "M", "MB", "MIB": multiplier = 0x1p20
        case "G", "GB", "GIB": multiplier = 0x1p30
        case "T", "TB", "TIB": multiplier = 0x1p40
        default: throw .unknownUnit(unit)
        }
        let bytes = value * multiplier
        guard bytes < 0x1p63 else { throw .tooLarge(s) }
        if unit.isEmpty && value != value.rounded() { throw .malformed(s) }
        return .bytes(UInt64(bytes.rounded()))
    }
}

/// Parses durations: `1s`, `500ms`, `2m`, or a number of seconds.
public enum DurationParser {
    public static func parse(_ text: String) -> Double? {
        let s = text.trimmingWhitespace()
        let digits = s.prefix { $0.isNumber || $0 == "." }
        guard !digits.isEmpty, let v = Double(String(digits)) else { return nil }
        switch s.dropFirst(digits.count).trimmingWhitespace() {
        case "", "s": return v
        case "ms": return v / 1000
        case "m", "min": return v * 60
        default: return nil
        }
    }
}

extension StringProtocol {
    func trimmingWhitespace() -> String {
        String(drop { $0.isWhitespace }.reversed().drop { $0.isWhitespace }.reversed())
    }
}
