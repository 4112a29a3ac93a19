/// Allocation-free readers for the statistics read every tick. The general parsers in
/// Statistics.swift build dictionaries and strings; at a thousand VMs a tick that is most of the
/// cost, so the control loop reads only the fields it uses, straight from the bytes.
public enum FastParse {
    /// The `memory.stat` fields the policy uses.
    public struct MemorySummary: Sendable, Equatable {
        public var activeBytes: UInt64 = 0
        public var inactiveBytes: UInt64 = 0
        /// Pages.
        public var refaults: UInt64 = 0
        public var majorFaults: UInt64 = 0
        public init() {}
    }

    static let active: [[UInt8]] = [Array("active_anon".utf8), Array("active_file".utf8)]
    static let inactive: [[UInt8]] = [Array("inactive_anon".utf8), Array("inactive_file".utf8)]
    static let refault: [[UInt8]] = [Array("workingset_refault_anon".utf8), Array("workingset_refault_file".utf8)]
    static let majfault: [UInt8] = Array("pgmajfault".utf8)

    /// Calls `body(key, value)` for every "key value" line; throws on a malformed line.
    @inline(__always)
    static func lines(_ b: UnsafeRawBufferPointer, file: @autoclosure () -> String,
                      _ body: (UnsafeRawBufferPointer, UInt64) -> Void) throws(CgroupError) {
        var i = 0, lineNo = 0
        let n = b.count
        while i < n {
            lineNo += 1
            let start = i
            while i < n && b[i] != 0x20 && b[i] != 0x0A { i += 1 }
            let keyEnd = i
            if i < n && b[i] == 0x0A { // empty line or key without value
                if keyEnd == start { i += 1; continue }
                throw .malformed(file: file(), line: lineNo, text: String(decoding: b[start..<keyEnd], as: UTF8.self))
            }
            if i >= n { if keyEnd == start { break }
                throw .malformed(file: file(), line: lineNo, text: String(decoding: b[start..<keyEnd], as: UTF8.self)) }
            i += 1  // the space
            var v: UInt64 = 0
            var digits = 0
            while i < n && b[i] >= 0x30 && b[i] <= 0x39 {
                let (m, o1) = v.multipliedReportingOverflow(by: 10)
                let (s, o2) = m.addingReportingOverflow(UInt64(b[i] - 0x30))
                if o1 || o2 { break }
                v = s; digits += 1; i += 1
            }
            if digits == 0 || (i < n && b[i] != 0x0A) {
                var end = i
                while end < n && b[end] != 0x0A { end += 1 }
                throw .malformed(file: file(), line: lineNo, text: String(decoding: b[start..<end], as: UTF8.self))
            }
            i += 1
            body(UnsafeRawBufferPointer(rebasing: b[start..<keyEnd]), v)
        }
    }

    @inline(__always)
    static func equal(_ key: UnsafeRawBufferPointer, _ name: [UInt8]) -> Bool {
        key.count == name.count && name.withUnsafeBytes { key.elementsEqual($0) }
    }

    public static func memoryStat(_ b: UnsafeRawBufferPointer, file: @autoclosure () -> String) throws(CgroupError) -> MemorySummary {
        var s = MemorySummary()
        try lines(b, file: file()) { key, v in
            guard let first = key.first else { return }
            switch first {
            case UInt8(ascii: "a"): if equal(key, active[0]) || equal(key, active[1]) { s.activeBytes += v }
            case UInt8(ascii: "i"): if equal(key, inactive[0]) || equal(key, inactive[1]) { s.inactiveBytes += v }
            case UInt8(ascii: "w"): if equal(key, refault[0]) || equal(key, refault[1]) { s.refaults += v }
            case UInt8(ascii: "p"): if equal(key, majfault) { s.majorFaults = v }
            default: break
            }
        }
        return s
    }

    /// The `memory.events` counters the status report shows.
    public struct EventCounts: Sendable, Equatable {
        public var high: UInt64 = 0
        public var max: UInt64 = 0
        public var oomKill: UInt64 = 0
        public init() {}
    }

    static let eventHigh: [UInt8] = Array("high".utf8)
    static let eventMax: [UInt8] = Array("max".utf8)
    static let eventOOMKill: [UInt8] = Array("oom_kill".utf8)

    public static func memoryEvents(_ b: UnsafeRawBufferPointer, file: @autoclosure () -> String) throws(CgroupError) -> EventCounts {
        var e = EventCounts()
        try lines(b, file: file()) { key, v in
            if equal(key, eventHigh) { e.high = v }
            else if equal(key, eventMax) { e.max = v }
            else if equal(key, eventOOMKill) { e.oomKill = v }
        }
        return e
    }

    /// One named counter from a flat keyed file (`cgroup.events` "populated", `memory.events` "high").
    public static func keyed(_ b: UnsafeRawBufferPointer, _ name: String, file: @autoclosure () -> String) throws(CgroupError) -> UInt64? {
        let want = Array(name.utf8)
        var found: UInt64?
        try lines(b, file: file()) { key, v in if found == nil && equal(key, want) { found = v } }
        return found
    }

    /// The "some" line's total and avg10 from a PSI file.
    public static func pressureSome(_ b: UnsafeRawBufferPointer, file: @autoclosure () -> String) throws(CgroupError) -> (total: UInt64, avg10: Double) {
        // "some avg10=0.00 avg60=0.00 avg300=0.00 total=123\n"
        let n = b.count
        guard n > 5, b[0] == UInt8(ascii: "s"), b[1] == UInt8(ascii: "o"), b[2] == UInt8(ascii: "m"), b[3] == UInt8(ascii: "e") else {
            throw .malformed(file: file(), line: 1, text: String(decoding: b.prefix(80), as: UTF8.self))
        }
        var lineEnd = 0
        while lineEnd < n && b[lineEnd] != 0x0A { lineEnd += 1 }
        let line = UnsafeRawBufferPointer(rebasing: b[0..<lineEnd])
        guard let total = field(line, "total=").flatMap({ UInt64(Substring(String(decoding: $0, as: UTF8.self))) }),
              let avg10 = field(line, "avg10=").flatMap({ Double(String(decoding: $0, as: UTF8.self)) }) else {
            throw .malformed(file: file(), line: 1, text: String(decoding: line, as: UTF8.self))
        }
        return (total, avg10)
    }

    static func field(_ line: UnsafeRawBufferPointer, _ prefix: String) -> UnsafeRawBufferPointer? {
        let p = Array(prefix.utf8)
        var i = 0
        while i + p.count <= line.count {
            if (i == 0 || line[i - 1] == 0x20) && p.withUnsafeBytes({ UnsafeRawBufferPointer(rebasing: line[i..<(i + p.count)]).elementsEqual($0) }) {
                var end = i + p.count
                while end < line.count && line[end] != 0x20 { end += 1 }
                return UnsafeRawBufferPointer(rebasing: line[(i + p.count)..<end])
            }
            i += 1
        }
        return nil
    }

    /// A decimal number on the first line (`memory.current`).
    public static func number(_ b: UnsafeRawBufferPointer, file: @autoclosure () -> String) throws(CgroupError) -> UInt64 {
        var v: UInt64 = 0, i = 0
        while i < b.count && b[i] >= 0x30 && b[i] <= 0x39 {
            let (m, o1) = v.multipliedReportingOverflow(by: 10)
            let (s, o2) = m.addingReportingOverflow(UInt64(b[i] - 0x30))
            if o1 || o2 { break }
            v = s; i += 1
        }
        if i == 0 || (i < b.count && b[i] != 0x0A) {
            throw .malformed(file: file(), line: 1, text: String(decoding: b.prefix(80), as: UTF8.self))
        }
        return v
    }
}
