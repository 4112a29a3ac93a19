#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// "64M", "1.5G", "4096": bytes, or nil when the text is not a size.
public func parseSize(_ s: String) -> UInt64? {
    let units: [Character: UInt64] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30]
    if let u = s.last.flatMap({ units[Character($0.uppercased())] }), let v = Double(s.dropLast()) { return UInt64(v * Double(u)) }
    return UInt64(s)
}

/// CLOCK_MONOTONIC in seconds.
public func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// This process's major and minor page faults so far (`getrusage`).
public func faults() -> (major: Int, minor: Int) {
    var u = rusage()
    getrusage(RUSAGE_SELF.rawValue, &u)
    return (u.ru_majflt, u.ru_minflt)
}

/// VmRSS and VmSwap from /proc/self/status, in bytes.
public func residency() -> (rss: UInt64, swap: UInt64) {
    guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return (0, 0) }
    var rss: UInt64 = 0, swap: UInt64 = 0
    for line in text.split(separator: "\n") {
        let f = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
        guard f.count >= 2, let kib = UInt64(f[1]) else { continue }
        if f[0] == "VmRSS:" { rss = kib << 10 }
        if f[0] == "VmSwap:" { swap = kib << 10 }
    }
    return (rss, swap)
}
