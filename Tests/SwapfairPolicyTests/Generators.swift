import SwapfairTestSupport
import SwapfairPolicy


let MiB: UInt64 = 1 << 20
let GiB: UInt64 = 1 << 30
let page = WeightedDivision.page

/// One generated tick: a host, its VMs with entitlements, and their observations (with a state,
/// so the feedback has a stall to react to).
struct Scenario: CustomStringConvertible {
    var host: HostPolicy
    var inputs: [VMInput]
    var description: String {
        "budget \(host.memoryBudget), swap \(host.swapBudget), tax \(host.idleTax): "
            + inputs.map { "\($0.entitlement.name) w\($0.entitlement.weight) r\($0.entitlement.reservation) "
                + "l\($0.entitlement.limit.map(String.init) ?? "-") use\($0.observation.memoryCurrent)" }
            .joined(separator: "; ")
    }

    static func random(_ g: inout SplitMix64, maxVMs: Int = 12) -> Scenario {
        let budget = UInt64.random(in: 256 * MiB...64 * GiB, using: &g) / page * page
        let swapBudget = UInt64.random(in: 0...32 * GiB, using: &g)
        let tax = [0, 0.5, 0.75, 0.9, Double.random(in: 0...0.99, using: &g)].randomElement(using: &g) ?? 0.75
        let n = Int.random(in: 1...maxVMs, using: &g)
        var reservedLeft = budget
        var inputs: [VMInput] = []
        for i in 0..<n {
            let weight = Double(Int.random(in: 1...1000, using: &g))
            let reservation = Bool.random(using: &g) ? UInt64.random(in: 0...(reservedLeft / UInt64(n)), using: &g) : 0
            reservedLeft -= reservation
            let limit: UInt64? = Bool.random(using: &g)
                ? reservation + UInt64.random(in: 0...budget, using: &g) : nil
            let swapLimit: UInt64? = Bool.random(using: &g) ? UInt64.random(in: 0...max(swapBudget, 1), using: &g) : nil
            let e = VMEntitlement(name: "vm\(i)", weight: weight, reservation: reservation, limit: limit,
                                  swapWeight: Double(Int.random(in: 1...1000, using: &g)), swapLimit: swapLimit)
            let usage = UInt64.random(in: 0...budget, using: &g)
            let active = UInt64(Double(usage) * Double.random(in: 0...1, using: &g))
            let swapUse = UInt64.random(in: 0...max(swapBudget / UInt64(n), 1), using: &g)
            let stallShare = [0, 0.001, 0.02, 0.3, Double.random(in: 0...1, using: &g)].randomElement(using: &g) ?? 0
            let state = VMControlState(
                feedback: .init(demand: UInt64.random(in: 0...2 * budget, using: &g)),
                activity: .init(slow: Double.random(in: 0...1, using: &g), fast: Double.random(in: 0...1, using: &g)),
                time: 0, pressureSomeTotal: 0, refaultedTotal: 0)
            let o = VMObservation(time: 1, memoryCurrent: usage, swapCurrent: swapUse,
                                  memoryHigh: UInt64.random(in: 0...budget, using: &g), swapMax: swapUse + MiB,
                                  pressureSomeTotal: UInt64(stallShare * 1e6), activeBytes: active,
                                  inactiveBytes: usage - active)
            inputs.append(VMInput(e, o, state: state))
        }
        return Scenario(host: HostPolicy(memoryBudget: budget, swapBudget: swapBudget, idleTax: tax), inputs: inputs)
    }
}
