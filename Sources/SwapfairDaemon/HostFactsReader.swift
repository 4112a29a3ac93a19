import SwapfairConfig
import SwapfairSys

/// Reads the host's RAM and swap totals from `/proc/meminfo`.
public enum HostFactsReader {
    public static func read(meminfo path: String = "/proc/meminfo") throws(SysError) -> HostFacts {
        parse(try FileAccess.read(path))
    }

    public static func parse(_ text: String) -> HostFacts {
        var mem: UInt64 = 0, swap: UInt64 = 0
        for line in text.split(separator: "\n") {
            let f = line.split(whereSeparator: { $0 == " " || $0 == ":" })
            guard f.count >= 2, let kib = UInt64(f[1]) else { continue }
            if f[0] == "MemTotal" { mem = kib * 1024 }
            if f[0] == "SwapTotal" { swap = kib * 1024 }
        }
        return HostFacts(memoryTotal: mem, swapTotal: swap)
    }
}
