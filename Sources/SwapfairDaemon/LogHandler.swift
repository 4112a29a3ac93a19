import Foundation
import Logging

/// One line per event: `2026-11-23 14:30:01.123 info  memory.high 1 GiB → 900 MiB vm=web why="..."`.
/// Under journald (JOURNAL_STREAM set) the timestamp is left out and the line starts with the
/// syslog priority (`<6>`), which journald turns into the entry's priority.
public struct LineLogHandler: LogHandler {
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    let journal: Bool

    public init(level: Logger.Level = .info, journal: Bool = ProcessInfo.processInfo.environment["JOURNAL_STREAM"] != nil) {
        self.logLevel = level
        self.journal = journal
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var fields = metadata
        if let extra = event.metadata { fields.merge(extra) { $1 } }
        let tail = fields.sorted { $0.key < $1.key }.map { key, value in "\(key)=\(Self.value("\(value)"))" }
            .joined(separator: " ")
        let message = Self.oneLine("\(event.message)")
        let text = tail.isEmpty ? message : "\(message) \(tail)"
        let line: String
        if journal {
            line = "<\(Self.priority(event.level))>\(text)\n"
        } else {
            let level = event.level.rawValue.padding(toLength: 8, withPad: " ", startingAt: 0)
            line = "\(Self.timestamp()) \(level)\(text)\n"
        }
        FileHandle.standardError.write(Data(line.utf8))
    }

    /// A field's value as `key=value` wants it: bare when it is one plain word, else quoted with
    /// `\"`, `\\` and control characters escaped, so that a value (an error naming a file's bad
    /// line, say) can never end the line or fake another field.
    static func value(_ v: String) -> String {
        let plain = !v.isEmpty && v.unicodeScalars.allSatisfy { $0.value > 0x20 && $0 != "\"" && $0 != "\\" && $0 != "=" && $0.value != 0x7f }
        return plain ? v : "\"" + escaped(v, quote: true) + "\""
    }

    /// A message on one line: line breaks and other control characters escaped.
    static func oneLine(_ m: String) -> String {
        m.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7f } ? escaped(m, quote: false) : m
    }

    static func escaped(_ v: String, quote: Bool) -> String {
        var out = ""
        for c in v.unicodeScalars {
            switch c {
            case "\"" where quote: out += "\\\""
            case "\\" where quote: out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            case "\r": out += "\\r"
            case _ where c.value < 0x20 || c.value == 0x7f: out += String(format: "\\x%02x", c.value)
            default: out.unicodeScalars.append(c)
            }
        }
        return out
    }

    static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: return 7
        case .info: return 6
        case .notice: return 5
        case .warning: return 4
        case .error: return 3
        case .critical: return 2
        }
    }

    static func timestamp() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var t = time_t(ts.tv_sec)
        var tm = tm()
        localtime_r(&t, &tm)
        return String(format: "%04d-%02d-%02d %02d:%02d:%02d.%03d", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                      tm.tm_hour, tm.tm_min, tm.tm_sec, Int(ts.tv_nsec / 1_000_000))
    }
}
