import Testing
@testable import SwapfairPolicy

@Suite struct IdleTaxTests {
    func twoVMs(idleFraction: Double, tax: Double) -> [VMPlan] {
        let budget = 4 * GiB
        let idle = VMInput(VMEntitlement(name: "idle"), VMObservation(
            time: 0, memoryCurrent: budget, memoryHigh: budget, activeBytes: UInt64(Double(budget) * idleFraction),
            inactiveBytes: budget - UInt64(Double(budget) * idleFraction)),
            // A VM seen before, as idle as it is now (a VM without history is taken as active).
            state: VMControlState(feedback: .init(demand: budget), activity: .init(slow: idleFraction, fast: idleFraction),
                                  time: -1, pressureSomeTotal: 0, refaultedTotal: 0, heldMark: Double(budget)))
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

    /// After a restart (no history) a VM is taken as active, whatever one period's reading says:
    /// the tax comes back as the averages fall, not at once.
    @Test func aVMWithoutHistoryIsNotTaxedOnItsFirstTick() {
        let budget = 4 * GiB
        let planner = Planner(HostPolicy(memoryBudget: budget, swapBudget: 0))
        let p = planner.plan([
            VMInput(VMEntitlement(name: "idle"), VMObservation(time: 0, memoryCurrent: budget / 2, memoryHigh: budget / 2,
                                                               activeBytes: 0, inactiveBytes: budget / 2)),
            VMInput(VMEntitlement(name: "busy"), VMObservation(time: 0, memoryCurrent: budget / 2, memoryHigh: budget / 2,
                                                               activeBytes: budget / 2)),
        ])
        #expect(p[0].activeFraction == 1)
        #expect(p[0].entitled == p[1].entitled)
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

    /// One tick of a mild stall (an idle VMM faulting back a few of its own pages; 2–9% of a tick
    /// in the lab) or of refaults does not make an idle VM fully active; the same on two ticks in a
    /// row does, and so does one tick far above the target.
    @Test(arguments: [
        // (stall per tick in µs, refaulted bytes per tick, ticks, fully active after the last?)
        (90_000, 0, 1, false), (90_000, 0, 2, true), (29_000, 0, 2, true),
        (0, 4 << 20, 1, false), (0, 4 << 20, 2, true), (250_000, 0, 1, true), (5_000, 0, 3, false),
    ])
    func aBlipIsNotActivityButPressureThatLastsIs(stallPerTick: Int, refaultPerTick: Int, ticks: Int, active: Bool) {
        let budget = 4 * GiB
        var state = VMControlState(feedback: .init(demand: budget / 2), activity: .init(slow: 0.3, fast: 0.3), time: 0,
                                   pressureSomeTotal: 0, refaultedTotal: 0, heldMark: Double(budget / 2))
        let planner = Planner(HostPolicy(memoryBudget: budget, swapBudget: 0))
        var stallTotal: UInt64 = 0, refaultTotal: UInt64 = 0
        var fraction = 0.0
        for t in 1...ticks {
            stallTotal += UInt64(stallPerTick)
            refaultTotal += UInt64(refaultPerTick)
            let o = VMObservation(time: Double(t), memoryCurrent: budget / 2, memoryHigh: budget / 2,
                                  pressureSomeTotal: stallTotal, refaultedTotal: refaultTotal, sampledActiveFraction: 0.3)
            let p = planner.plan([VMInput(VMEntitlement(name: "idle"), o, state: state),
                                  VMInput(VMEntitlement(name: "busy"), VMObservation(time: Double(t), memoryCurrent: budget / 2))])
            fraction = p[0].activeFraction
            state = p[0].state
        }
        #expect((fraction == 1) == active, "active fraction \(fraction)")
    }
}
