import Foundation

/// Human-readable numbers for logs, tables and errors.
public enum Format {
    /// "512 MiB", "1.50 GiB", "4 KiB", "0 B".
    public static func bytes(_ n: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
        var v = Double(n), u = 0
        while v >= 1024 && u < units.count - 1 { v /= 1024; u += 1 }
        if u == 0 { return "\(n) B" }
        if v == v.rounded() { return String(format: "%.0f %@", v, units[u]) }
        return String(format: v < 10 ? "%.2f %@" : "%.1f %@", v, units[u])
    }

    /// A limit that may be absent ("max" in cgroup v2).
    public static func bytes(_ n: UInt64?) -> String { n.map { bytes($0) } ?? "max" }

    /// "12.5%".
    public static func percent(_ x: Double) -> String {
        let p = x * 100
        if p != 0 && abs(p) < 0.1 { return String(format: "%.2f%%", p) }
        return String(format: "%.1f%%", p)
    }
}
