import Testing
import SwapfairTestSupport
@testable import SwapfairPolicy

@Suite struct WeightedDivisionTests {
    @Test func equalWeightsSplitEvenly() {
        let out = WeightedDivision.divide(8 * GiB, among: [Claim(weight: 1, ceiling: .max), Claim(weight: 1, ceiling: .max)])
        #expect(out == [4 * GiB, 4 * GiB])
    }

    @Test func partiesThatWantLessGiveTheRestAway() {
        let out = WeightedDivision.divide(8 * GiB, among: [
            Claim(weight: 1, ceiling: 1 * GiB), Claim(weight: 1, ceiling: .max), Claim(weight: 2, ceiling: .max),
        ])
        #expect(out[0] == 1 * GiB)
        #expect(out[1] + out[2] == 7 * GiB)
        #expect(abs(Int64(out[2]) - 2 * Int64(out[1])) <= Int64(2 * page))
    }

    @Test func floorsWinOverWeights() {
        let out = WeightedDivision.divide(4 * GiB, among: [
            Claim(weight: 1, floor: 3 * GiB, ceiling: .max), Claim(weight: 100, ceiling: .max),
        ])
        #expect(out == [3 * GiB, 1 * GiB])
    }

    @Test func floorsAboveTheTotalAreStillHonoured() {
        let out = WeightedDivision.divide(1 * GiB, among: [Claim(weight: 1, floor: 2 * GiB, ceiling: 3 * GiB)])
        #expect(out == [2 * GiB])
    }

    @Test func emptyClaimsGiveNothing() {
        #expect(WeightedDivision.divide(GiB, among: []).isEmpty)
    }

    @Test(arguments: 0..<400)
    func divisionIsBoundedConservingAndMaxMin(seed: Int) {
        var g = SplitMix64(seed: UInt64(seed) &* 7919)
        let total = UInt64.random(in: 0...64 * GiB, using: &g)
        let n = Int.random(in: 1...30, using: &g)
        let claims = (0..<n).map { _ -> Claim in
            let lo = Bool.random(using: &g) ? UInt64.random(in: 0...(total / UInt64(n + 1)), using: &g) : 0
            return Claim(weight: Double.random(in: 0.01...1000, using: &g), floor: lo,
                         ceiling: lo + UInt64.random(in: 0...total, using: &g))
        }
        let out = WeightedDivision.divide(total, among: claims)
        let sum = out.reduce(0, +)
        #expect(sum <= total)
        for (c, x) in zip(claims, out) {
            #expect(x >= c.floor && x <= max(c.floor, c.ceiling))
        }
        let capacity = claims.reduce(UInt64(0)) { $0 + max($1.floor, $1.ceiling) }
        // Work conservation: all of it is handed out (to a granule each) unless everyone is full.
        #expect(sum + UInt64(n) * page >= min(total, capacity))
        // Max-min: a party below its ceiling has at least its weighted level, unless a floor holds it.
        let unsaturated = claims.indices.filter { out[$0] + page < claims[$0].ceiling && out[$0] > claims[$0].floor }
        if !unsaturated.isEmpty {
            let level = unsaturated.reduce(0.0) { $0 + Double(out[$1]) } / unsaturated.reduce(0.0) { $0 + claims[$1].weight }
            for j in unsaturated {
                #expect(abs(Double(out[j]) - level * claims[j].weight) <= Double((unsaturated.count + 1) * Int(page)))
            }
        }
    }
}
