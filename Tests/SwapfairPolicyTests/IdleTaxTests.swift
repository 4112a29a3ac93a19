import Testing
@testable import SwapfairPolicy

@Suite struct IdleTaxTests {
    func twoVMs(idleFraction: Double, tax: Double) -> [VMPlan] {
        let budget = 4 * GiB
        let idle = VMInput(VMEntitlement(name: "idle"), VMObservation(
            time: 0, memoryCurrent: budget, memoryHigh: budget, activeBytes: UInt64(Double(budget) * idleFraction),
            inactiveBytes: budget - UInt64(Double(budget) * idleFraction)))
        let busy = VMInput(VMEntitlement(name: "busy"), VMObservation(
            time: 0, memoryCurrent: budget, memoryHigh: budget, activeBytes: budget))
        return Planner(HostPolicy(memoryBudget: budget, swapBudget: 0, idleTax: tax)).plan([idle, busy])
    }

    @Test func anIdleVMYieldsMemoryToABusyOneOfEqualWeight() {
        let p = twoVMs(idleFraction: 0, tax: 0.75)
        #expect(p[0].entitled < p[1].entitled)
        // ESX with τ = 0.75: idle pages cost 4x, so the split is 1:4 of the 4 GiB.
        #expect(abs(Double(p[0].entitled) - 0.8 * Double(GiB)) <= Double(page))
        // It keeps at least (1 − τ) of its idle half.
        #expect(p[0].entitled >= 2 * GiB / 4)
    }

    @Test func withoutTaxIdleAndBusyShareEqually() {
        let p = twoVMs(idleFraction: 0, tax: 0)
        #expect(p[0].entitled == p[1].entitled)
    }

    @Test func aPartlyActiveVMKeepsItsActiveShareAndPartOfItsIdleShare() {
        let p = twoVMs(idleFraction: 0.5, tax: 0.75)
        // untaxed 2 GiB: 1 GiB active kept, at least 25% of the idle 1 GiB kept.
        #expect(p[0].entitled >= 1 * GiB + GiB / 4 - page)
        #expect(p[0].entitled < 2 * GiB)
    }

    @Test(arguments: [0.0, 0.25, 0.5, 0.75, 0.9])
    func moreTaxNeverGivesTheIdleVMMore(tax: Double) {
        let lower = twoVMs(idleFraction: 0.2, tax: max(0, tax - 0.2))[0].entitled
        let higher = twoVMs(idleFraction: 0.2, tax: tax)[0].entitled
        #expect(higher <= lower + page)
    }

    @Test func theEstimatorRisesAtOnceAndFallsSlowly() {
        let e = ActivityEstimator()
        var (f, state) = e.update(nil, sample: ActivitySample(activeBytes: 100, inactiveBytes: 0), elapsed: 0)
        #expect(f == 1)
        for _ in 0..<5 { (f, state) = e.update(state, sample: ActivitySample(activeBytes: 0, inactiveBytes: 100), elapsed: 1) }
        #expect(f > 0.4)  // five idle seconds do not make a VM idle
        for _ in 0..<300 { (f, state) = e.update(state, sample: ActivitySample(activeBytes: 0, inactiveBytes: 100), elapsed: 1) }
        #expect(f < 0.01)
        (f, state) = e.update(state, sample: ActivitySample(activeBytes: 90, inactiveBytes: 10), elapsed: 1)
        #expect(f >= 0.9)  // busy again: at once
    }

    @Test func refaultsCountAsActive() {
        let e = ActivityEstimator()
        let f = e.rawFraction(ActivitySample(activeBytes: 0, inactiveBytes: 100, refaultedBytes: 60))
        #expect(f == 0.6)
    }
}

@Suite struct StallIsActivityTests {
    /// Sampling reads a thrashing VM as partly idle (it waits on swap-ins instead of touching its
    /// pages); the planner must not tax it for that.
    @Test func aStalledVMIsNotTaxedWhateverTheSampleSays() {
        let budget = 4 * GiB
        let prior = VMControlState(feedback: .init(demand: budget), activity: .init(slow: 1, fast: 1), time: 0,
                                   pressureSomeTotal: 0, refaultedTotal: 0, heldMark: Double(budget))
        func vm(_ name: String, stallMicros: UInt64) -> VMInput {
            VMInput(VMEntitlement(name: name), VMObservation(time: 1, memoryCurrent: budget / 2, memoryHigh: budget / 2,
                                                             pressureSomeTotal: stallMicros, sampledActiveFraction: 0.3),
                    state: prior)
        }
        let p = Planner(HostPolicy(memoryBudget: budget, swapBudget: 0)).plan([vm("a", stallMicros: 400_000),
                                                                               vm("b", stallMicros: 400_000)])
        #expect(p[0].activeFraction == 1 && p[1].activeFraction == 1)
        #expect(p[0].entitled == p[1].entitled)
    }

    /// A single tick just above the target (an idle VMM faulting in a few of its own pages) does
    /// not make an idle VM fully active; the same stall on two ticks in a row does.
    @Test func aOneTickBlipIsNotActivityButAStallThatLastsIs() {
        let budget = 4 * GiB
        var state = VMControlState(feedback: .init(demand: budget / 2), activity: .init(slow: 0.3, fast: 0.3), time: 0,
                                   pressureSomeTotal: 0, refaultedTotal: 0, heldMark: Double(budget / 2))
        let planner = Planner(HostPolicy(memoryBudget: budget, swapBudget: 0))
        var stallTotal: UInt64 = 0
        var fractions: [Double] = []
        for t in 1...2 {
            stallTotal += 29_000  // 2.9% of a one-second tick
            let o = VMObservation(time: Double(t), memoryCurrent: budget / 2, memoryHigh: budget / 2,
                                  pressureSomeTotal: stallTotal, sampledActiveFraction: 0.3)
            let p = planner.plan([VMInput(VMEntitlement(name: "idle"), o, state: state),
                                  VMInput(VMEntitlement(name: "busy"), VMObservation(time: Double(t), memoryCurrent: budget / 2))])
            fractions.append(p[0].activeFraction)
            state = p[0].state
        }
        #expect(fractions[0] < 0.5)
        #expect(fractions[1] == 1)
    }
}
