/// One party's claim on a divisible amount (bytes of RAM or swap).
public struct Claim: Sendable, Equatable {
    /// Relative weight (shares). Must be positive.
    public var weight: Double
    /// The least this party gets, whatever the others want (a reservation).
    public var floor: UInt64
    /// The most this party gets (a limit, or what it wants). Raised to `floor` if below it.
    public var ceiling: UInt64

    public init(weight: Double, floor: UInt64 = 0, ceiling: UInt64) {
        self.weight = weight
        self.floor = floor
        self.ceiling = ceiling
    }
}

/// Weighted, work-conserving max-min division ("water filling").
///
/// Every claim gets `clamp(λ·weight, floor, ceiling)` for the one water level λ at which the
/// amounts add up to the total. So parties that want less than their weighted share keep
/// only what they want and the rest flows to the others in proportion to their weights.
/// Results are whole granules (pages) except where a floor or ceiling is not page aligned.
public enum WeightedDivision {
    public static let page: UInt64 = 4096

    public static func divide(_ total: UInt64, among claims: [Claim], granule: UInt64 = page) -> [UInt64] {
        let lo = claims.map(\.floor)
        let hi = claims.map { max($0.floor, $0.ceiling) }
        if saturatingSum(lo) >= total { return lo }  // floors are honoured even past the total
        if saturatingSum(hi) <= total { return hi }  // everybody gets all it wants

        let level = waterLevel(total: Double(total), claims: claims, lo: lo, hi: hi)
        var exact = [Double](repeating: 0, count: claims.count)
        var out = [UInt64](repeating: 0, count: claims.count)
        for i in claims.indices {
            let x = min(max(level * weight(claims[i]), Double(lo[i])), Double(hi[i]))
            exact[i] = x
            let down = UInt64(x) / granule * granule
            out[i] = min(max(down, lo[i]), hi[i])
        }
        // Floating error may overshoot by a granule on a boundary; take it back.
        var sum = out.reduce(0, &+)
        var i = 0
        while sum > total && i < out.count {
            let spare = out[i] - lo[i]
            let back = min(spare, sum - total, granule)
            out[i] -= back
            sum -= back
            i += 1
        }
        // Hand out the whole granules lost to rounding, largest remainder first, so the
        // division stays work conserving to within one granule per party.
        if sum < total {
            let order = claims.indices.sorted { a, b in
                let ra = exact[a] - Double(out[a]), rb = exact[b] - Double(out[b])
                return ra != rb ? ra > rb : a < b
            }
            for j in order where total - sum >= granule {
                if out[j] + granule <= hi[j] {
                    out[j] += granule
                    sum += granule
                }
            }
        }
        return out
    }

    static func saturatingSum(_ xs: [UInt64]) -> UInt64 {
        var sum: UInt64 = 0
        for x in xs {
            let (r, overflow) = sum.addingReportingOverflow(x)
            if overflow { return .max }
            sum = r
        }
        return sum
    }

    private static func weight(_ c: Claim) -> Double { c.weight > 0 ? c.weight : Double.leastNormalMagnitude }

    /// Finds λ with Σ clamp(λ·wᵢ, loᵢ, hiᵢ) = total by walking the sorted breakpoints, where the
    /// sum is piecewise linear in λ.
    private static func waterLevel(total: Double, claims: [Claim], lo: [UInt64], hi: [UInt64]) -> Double {
        // (threshold, index, entering): a claim enters the linear regime at lo/w, leaves at hi/w.
        var events: [(t: Double, i: Int, enter: Bool)] = []
        events.reserveCapacity(claims.count * 2)
        for i in claims.indices {
            let w = weight(claims[i])
            events.append((Double(lo[i]) / w, i, true))
            events.append((Double(hi[i]) / w, i, false))
        }
        events.sort { $0.t != $1.t ? $0.t < $1.t : ($0.enter && !$1.enter) }
        var fixed = lo.reduce(0.0) { $0 + Double($1) }  // constant part of the sum
        var slope = 0.0                                 // Σ weights in the linear regime
        var k = 0
        while k < events.count {
            let t = events[k].t
            if slope > 0 && fixed + slope * t >= total {
                return (total - fixed) / slope
            }
            while k < events.count && events[k].t == t {
                let e = events[k], w = weight(claims[e.i])
                if e.enter { fixed -= Double(lo[e.i]); slope += w } else { fixed += Double(hi[e.i]); slope -= w }
                k += 1
            }
        }
        return events.last?.t ?? 0
    }
}
