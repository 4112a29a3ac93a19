/// Touch latencies as a log-linear histogram (16 sub-buckets per power of two, so a percentile is
/// within about 6%), with the exact maximum. Fixed size: a stand-in must hold steady memory like
/// the VM it stands in for. Keeping raw samples grew it by 80 KiB a second and sorting them at a
/// phase's end took a few MiB at once, which its own memory limit then reclaimed from the working set.
public struct Latencies: Sendable {
    public init() {}

    static let subBits = 4
    static let bucketCount = (64 - subBits + 1) << subBits
    public private(set) var counts = [UInt64](repeating: 0, count: Latencies.bucketCount)
    public private(set) var total: UInt64 = 0
    public private(set) var maxNs: UInt64 = 0

    static func bucket(_ ns: UInt64) -> Int {
        let sub = UInt64(1) << subBits
        if ns < sub { return Int(ns) }
        let exp = 63 - ns.leadingZeroBitCount  // >= subBits
        let mantissa = Int((ns >> UInt64(exp - subBits)) & (sub - 1))
        return ((exp - subBits + 1) << subBits) + mantissa
    }

    /// The middle of a bucket's range, in nanoseconds.
    static func value(_ b: Int) -> Double {
        let sub = 1 << subBits
        if b < sub { return Double(b) }
        let exp = (b >> subBits) + subBits - 1
        let low = Double((1 << exp) + (b & (sub - 1)) << (exp - subBits))
        return low + Double(1 << (exp - subBits)) / 2
    }

    public mutating func add(_ ns: UInt64) {
        counts[Latencies.bucket(ns)] += 1
        total += 1
        maxNs = max(maxNs, ns)
    }

    public mutating func reset() {
        for i in counts.indices { counts[i] = 0 }
        total = 0
        maxNs = 0
    }

    public mutating func merge(_ other: Latencies) {
        for i in counts.indices { counts[i] += other.counts[i] }
        total += other.total
        maxNs = max(maxNs, other.maxNs)
    }

    /// The p-th percentile in microseconds (0 when empty; p = 1 is the exact maximum).
    public func percentile(_ p: Double) -> Double {
        guard total > 0 else { return 0 }
        if p >= 1 { return Double(maxNs) / 1000 }
        let rank = UInt64(Double(total - 1) * p)
        var seen: UInt64 = 0
        for (b, n) in counts.enumerated() where n > 0 {
            seen += n
            if seen > rank { return min(Latencies.value(b), Double(maxNs)) / 1000 }
        }
        return Double(maxNs) / 1000
    }
}
