/// `memory.stat`: flat "key value" lines (bytes, or counts for the event counters).
public struct MemoryStat: Sendable, Equatable {
    public var values: [String: UInt64]

    public init(values: [String: UInt64]) { self.values = values }

    public subscript(key: String) -> UInt64 { values[key] ?? 0 }

    public var anon: UInt64 { self["anon"] }
    public var file: UInt64 { self["file"] }
    public var activeBytes: UInt64 { self["active_anon"] + self["active_file"] }
    public var inactiveBytes: UInt64 { self["inactive_anon"] + self["inactive_file"] }
    /// Refaults are counted in pages.
    public var refaults: UInt64 { self["workingset_refault_anon"] + self["workingset_refault_file"] }
    public var majorFaults: UInt64 { self["pgmajfault"] }

    public static func parse(_ text: String, file: String = "memory.stat") throws(CgroupError) -> MemoryStat {
        var values: [String: UInt64] = [:]
        for (n, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() where !line.isEmpty {
            let parts = line.split(separator: " ")
            guard parts.count == 2, let v = UInt64(parts[1]) else {
                throw .malformed(file: file, line: n + 1, text: String(line))
            }
            values[String(parts[0])] = v
        }
        return MemoryStat(values: values)
    }
}

/// `memory.events`: counts of low, high, max, oom, oom_kill (and oom_group_kill) events.
public struct MemoryEvents: Sendable, Equatable {
    public var values: [String: UInt64]
    public subscript(key: String) -> UInt64 { values[key] ?? 0 }
    public var high: UInt64 { self["high"] }
    public var max: UInt64 { self["max"] }
    public var oomKill: UInt64 { self["oom_kill"] }

    public static func parse(_ text: String, file: String = "memory.events") throws(CgroupError) -> MemoryEvents {
        MemoryEvents(values: try MemoryStat.parse(text, file: file).values)
    }
}

/// A PSI file (`memory.pressure`, `io.pressure`): "some" and "full" lines with averages and the
/// total stall time in microseconds.
public struct Pressure: Sendable, Equatable {
    public struct Line: Sendable, Equatable {
        public var avg10: Double
        public var avg60: Double
        public var avg300: Double
        /// Microseconds stalled since the cgroup was created.
        public var total: UInt64
    }
    public var some: Line
    /// Absent on the system-wide CPU file of old kernels; kept optional.
    public var full: Line?

    public static func parse(_ text: String, file: String = "memory.pressure") throws(CgroupError) -> Pressure {
        var some: Line?, full: Line?
        for (n, raw) in text.split(separator: "\n").enumerated() {
            let fields = raw.split(separator: " ")
            guard let kind = fields.first else { continue }
            var avg10: Double?, avg60: Double?, avg300: Double?, total: UInt64?
            for f in fields.dropFirst() {
                let kv = f.split(separator: "=", maxSplits: 1)
                guard kv.count == 2 else { throw .malformed(file: file, line: n + 1, text: String(raw)) }
                switch kv[0] {
                case "avg10": avg10 = Double(kv[1])
                case "avg60": avg60 = Double(kv[1])
                case "avg300": avg300 = Double(kv[1])
                case "total": total = UInt64(kv[1])
                default: break
                }
            }
            guard let avg10, let avg60, let avg300, let total else {
                throw .malformed(file: file, line: n + 1, text: String(raw))
            }
            let line = Line(avg10: avg10, avg60: avg60, avg300: avg300, total: total)
            switch kind {
            case "some": some = line
            case "full": full = line
            default: throw .malformed(file: file, line: n + 1, text: String(raw))
            }
        }
        guard let some else { throw .malformed(file: file, line: 1, text: String(text.prefix(80))) }
        return Pressure(some: some, full: full)
    }
}

/// `io.stat`: one line per device, "MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. dbytes=.. dios=..".
public struct IOStat: Sendable, Equatable {
    public struct Device: Sendable, Equatable {
        public var device: String
        public var readBytes: UInt64
        public var writeBytes: UInt64
        public var readIOs: UInt64
        public var writeIOs: UInt64
    }
    public var devices: [Device]

    public var readBytes: UInt64 { devices.reduce(0) { $0 + $1.readBytes } }
    public var writeBytes: UInt64 { devices.reduce(0) { $0 + $1.writeBytes } }

    public static func parse(_ text: String, file: String = "io.stat") throws(CgroupError) -> IOStat {
        var devices: [Device] = []
        for (n, raw) in text.split(separator: "\n").enumerated() {
            let fields = raw.split(separator: " ")
            guard let dev = fields.first, dev.contains(":") else {
                throw .malformed(file: file, line: n + 1, text: String(raw))
            }
            var d = Device(device: String(dev), readBytes: 0, writeBytes: 0, readIOs: 0, writeIOs: 0)
            for f in fields.dropFirst() {
                let kv = f.split(separator: "=", maxSplits: 1)
                guard kv.count == 2 else { throw .malformed(file: file, line: n + 1, text: String(raw)) }
                let known = ["rbytes", "wbytes", "rios", "wios"]
                guard known.contains(String(kv[0])) else { continue }  // dbytes, dios, cost.* ...
                guard let v = UInt64(kv[1]) else { throw .malformed(file: file, line: n + 1, text: String(raw)) }
                switch kv[0] {
                case "rbytes": d.readBytes = v
                case "wbytes": d.writeBytes = v
                case "rios": d.readIOs = v
                default: d.writeIOs = v
                }
            }
            devices.append(d)
        }
        return IOStat(devices: devices)
    }
}

/// A limit file's value: a byte count or "max".
public enum LimitValue: Sendable, Equatable, CustomStringConvertible {
    case bytes(UInt64)
    case max

    public init(_ value: UInt64?) { self = value.map { .bytes($0) } ?? .max }

    public var bytes: UInt64? { if case .bytes(let b) = self { return b } else { return nil } }

    public var description: String {
        switch self {
        case .bytes(let b): return String(b)
        case .max: return "max"
        }
    }

    public static func parse(_ text: String, file: String) throws(CgroupError) -> LimitValue {
        let t = text.split(separator: "\n").first.map(String.init) ?? ""
        if t == "max" { return .max }
        guard let v = UInt64(t) else { throw .malformed(file: file, line: 1, text: t) }
        return .bytes(v)
    }
}
