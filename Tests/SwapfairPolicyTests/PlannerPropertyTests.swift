import Testing
import SwapfairTestSupport
@testable import SwapfairPolicy

/// Properties of one planning step, each checked on many generated hosts.
@Suite struct PlannerPropertyTests {
    static let seeds = Array(0..<300)

    func scenario(_ seed: Int) -> Scenario {
        var g = SplitMix64(seed: UInt64(seed) &+ 0xC0FFEE)
        return Scenario.random(&g)
    }

    @Test(arguments: seeds)
    func reservationsAreAlwaysHonoured(seed: Int) {
        let s = scenario(seed)
        for (input, p) in zip(s.inputs, Planner(s.host).plan(s.inputs)) {
            let r = min(input.entitlement.reservation, input.entitlement.limit ?? .max, s.host.memoryBudget)
            #expect(p.memoryLow == r, "\(s)")
            #expect(p.entitled >= r, "\(s)")
            #expect(p.memoryHigh >= r, "\(s)")
        }
    }

    @Test(arguments: seeds)
    func limitsAreNeverExceeded(seed: Int) {
        let s = scenario(seed)
        for (input, p) in zip(s.inputs, Planner(s.host).plan(s.inputs)) {
            let limit = min(input.entitlement.limit ?? .max, s.host.memoryBudget)
            #expect(p.entitled <= limit, "\(s)")
            #expect(p.memoryHigh <= limit, "\(s)")
            #expect(p.demand <= limit, "\(s)")
            #expect(p.memoryMax == input.entitlement.limit)
            if let sl = input.entitlement.swapLimit {
                #expect(p.swapMax <= max(sl, min(input.observation.swapCurrent, input.observation.swapMax ?? .max)))
            }
        }
    }

    @Test(arguments: seeds)
    func targetsStayWithinTheBudget(seed: Int) {
        let s = scenario(seed)
        let plans = Planner(s.host).plan(s.inputs)
        #expect(plans.reduce(0) { $0 + $1.entitled } <= s.host.memoryBudget, "\(s)")
        #expect(plans.reduce(0) { $0 + $1.highTarget } <= s.host.memoryBudget, "\(s)")
        #expect(plans.reduce(0) { $0 + $1.untaxedShare } <= s.host.memoryBudget, "\(s)")
        // What is written exceeds the targets only by cuts still under way, each one step below the
        // limit found (or at the VM's own limit), and only while the host is within its budget.
        let used = s.inputs.reduce(UInt64(0)) { $0 + $1.observation.memoryCurrent }
        for (input, p) in zip(s.inputs, plans) {
            guard p.memoryHigh > p.highTarget else { continue }
            let found = input.observation.memoryHigh ?? 0
            let step = UInt64(Double(found) * s.host.highStepDown)
            #expect(Double(used) <= Double(s.host.memoryBudget) * (1 + s.host.highStepDown), "\(s)")
            let ceiling = min(input.entitlement.limit ?? .max, s.host.memoryBudget)
            #expect(p.memoryHigh < found && (p.memoryHigh + step + 1 >= found || p.memoryHigh == ceiling), "\(s)")
        }
        // Beyond the budget only while cuts are under way, and then nobody is lent more than it
        // had: no VM is above both its entitlement and the limit it had.
        if plans.reduce(0, { $0 + $1.memoryHigh }) > s.host.memoryBudget {
            for (input, p) in zip(s.inputs, plans) where p.memoryHigh == p.highTarget || p.memoryHigh < p.highTarget {
                #expect(p.memoryHigh <= max(p.entitled, input.observation.memoryHigh ?? 0), "\(s)")
            }
        }
    }

    @Test(arguments: seeds)
    func memoryIsWorkConserving(seed: Int) {
        let s = scenario(seed)
        let plans = Planner(s.host).plan(s.inputs)
        let n = UInt64(plans.count)
        let capacity = s.inputs.reduce(UInt64(0)) { $0 + min($1.entitlement.limit ?? .max, s.host.memoryBudget) }
        // Whatever the VMs' limits allow is handed out as memory.high: no RAM is left idle by the plan.
        #expect(plans.reduce(0) { $0 + $1.memoryHigh } + n * page >= min(s.host.memoryBudget, capacity), "\(s)")
        // And the entitlements hand out the budget up to the VMs' demands.
        let demanded = zip(s.inputs, plans).reduce(UInt64(0)) { acc, x in
            acc + max(min(x.0.entitlement.reservation, x.0.entitlement.limit ?? .max),
                      min(x.1.demand, x.0.entitlement.limit ?? .max, s.host.memoryBudget))
        }
        #expect(plans.reduce(0) { $0 + $1.entitled } + 2 * n * page >= min(s.host.memoryBudget, demanded), "\(s)")
    }

    @Test(arguments: seeds)
    func theIdleTaxTakesAtMostTheTaxOfIdleMemory(seed: Int) {
        let s = scenario(seed)
        for (input, p) in zip(s.inputs, Planner(s.host).plan(s.inputs)) {
            let f = p.activeFraction
            let held = min(Double(p.fullShare), Double(input.observation.memoryCurrent))
            let kept = held * (f + (1 - s.host.idleTax) * (1 - f))
            #expect(Double(p.taxFloor) + 1 >= kept, "\(s)")
            #expect(p.entitled >= p.taxFloor, "\(s)")
        }
    }

    @Test(arguments: seeds)
    func raisingAWeightNeverLowersThatVMsShare(seed: Int) {
        var s = scenario(seed)
        var g = SplitMix64(seed: UInt64(seed))
        let i = Int.random(in: 0..<s.inputs.count, using: &g)
        let before = Planner(s.host).plan(s.inputs)[i]
        s.inputs[i].entitlement.weight *= Double.random(in: 1...10, using: &g)
        let after = Planner(s.host).plan(s.inputs)[i]
        #expect(after.untaxedShare + page >= before.untaxedShare, "\(s)")
        #expect(after.entitled + 2 * page >= before.entitled, "\(s)")
        #expect(after.memoryHigh + 2 * page >= before.memoryHigh, "\(s)")
    }

    @Test(arguments: seeds)
    func swapStaysWithinBudgetAndIsNeverCutBelowUse(seed: Int) {
        let s = scenario(seed)
        let plans = Planner(s.host).plan(s.inputs)
        let floors = s.inputs.map { min($0.observation.swapCurrent, $0.observation.swapMax ?? .max) }
        for (p, floor) in zip(plans, floors) { #expect(p.swapMax >= floor, "\(s)") }
        if floors.reduce(0, +) <= s.host.swapBudget {
            #expect(plans.reduce(0) { $0 + $1.swapMax } <= s.host.swapBudget, "\(s)")
        }
    }

    /// When every VM wants more than its share and all are equally active, RAM goes by weight.
    @Test(arguments: Array(0..<200))
    func sharesAreProportionalToWeightsWhenEveryVMWantsMore(seed: Int) {
        var g = SplitMix64(seed: UInt64(seed) &* 31 &+ 5)
        let budget = UInt64.random(in: 1 * GiB...128 * GiB, using: &g) / page * page
        let n = Int.random(in: 1...20, using: &g)
        let inputs = (0..<n).map { i in
            VMInput(VMEntitlement(name: "vm\(i)", weight: Double(Int.random(in: 1...10_000, using: &g))),
                    VMObservation(time: 0, memoryCurrent: budget, memoryHigh: budget, activeBytes: budget))
        }
        let plans = Planner(HostPolicy(memoryBudget: budget, swapBudget: 0)).plan(inputs)
        let totalWeight = inputs.reduce(0.0) { $0 + $1.entitlement.weight }
        for (input, p) in zip(inputs, plans) {
            let fair = Double(budget) * input.entitlement.weight / totalWeight
            #expect(abs(Double(p.entitled) - fair) <= Double(page), "seed \(seed): \(p.name) \(p.entitled) vs \(fair)")
        }
    }
}

@Suite struct SwapLendingTests {
    /// A VM that starts first must not be lent the swap of VMs configured but not running yet:
    /// swapped pages cannot be taken back when they start.
    @Test func absentVMsKeepTheirSwapHeadroom() {
        let host = HostPolicy(memoryBudget: GiB, swapBudget: 384 * MiB, swapHeadroom: 64 * MiB)
        let hog = VMInput(VMEntitlement(name: "hog"),
                          VMObservation(time: 0, memoryCurrent: GiB, swapCurrent: 200 * MiB, swapMax: 384 * MiB))
        let alone = Planner(host).plan([hog])[0].swapMax
        let shared = Planner(host).plan([hog], absent: [VMEntitlement(name: "a"), VMEntitlement(name: "b")])[0].swapMax
        #expect(alone == 384 * MiB)
        #expect(shared == 384 * MiB - 2 * 64 * MiB)
        // And when they start, their headroom is there.
        let a = VMInput(VMEntitlement(name: "a"), VMObservation(time: 0, memoryCurrent: GiB))
        let plans = Planner(host).plan([hog, a], absent: [VMEntitlement(name: "b")])
        #expect(plans[1].swapMax >= 64 * MiB)
        #expect(plans.count == 2)
    }
}
