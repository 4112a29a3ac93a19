import Testing
@testable import SwapfairPolicy

/// Cuts of memory.high go in steps while the host has room, at once when it has not.
@Suite struct StepDownTests {
    /// Two VMs; the first holds `high` and is about to lose most of it to the second, which wakes
    /// with a stall far above the target. Returns the first VM's written limits, tick by tick.
    func cut(from high: UInt64, used: (Int) -> (UInt64, UInt64), ticks: Int) -> [UInt64] {
        let budget = 320 * MiB
        let planner = Planner(HostPolicy(memoryBudget: budget, swapBudget: 0))
        var states: [VMControlState?] = [nil, nil]
        var highs: [UInt64] = [high, budget - high]
        var stall: UInt64 = 0
        var written: [UInt64] = []
        for t in 0...ticks {
            let (a, b) = used(t)
            stall += t == 0 ? 0 : 600_000
            let plans = planner.plan([
                VMInput(VMEntitlement(name: "hog"), VMObservation(time: Double(t), memoryCurrent: a, memoryHigh: highs[0],
                                                                  pressureSomeTotal: stall, activeBytes: a), state: states[0]),
                VMInput(VMEntitlement(name: "victim"), VMObservation(time: Double(t), memoryCurrent: b, memoryHigh: highs[1],
                                                                     pressureSomeTotal: stall, activeBytes: b), state: states[1]),
            ])
            states = plans.map(\.state)
            highs = plans.map(\.memoryHigh)
            if t > 0 { written.append(plans[0].memoryHigh) }
            #expect(plans[0].memoryHigh >= plans[0].highTarget)
        }
        return written
    }

    @Test func aCutGoesInStepsWhileTheHostHasRoom() {
        // The hog holds 250 MiB of a 320 MiB budget; the victim, at 60 MiB, wants its 160 back.
        let w = cut(from: 250 * MiB, used: { _ in (240 * MiB, 60 * MiB) }, ticks: 8)
        #expect(w[0] < 250 * MiB && w[0] >= 250 * MiB - 15 * MiB, "\(w)")
        for (a, b) in zip(w, w.dropFirst()) { #expect(b <= a) }
        #expect(w.last == 160 * MiB, "\(w)")
    }

    @Test func aHostOverItsBudgetIsCutAtOnce() {
        let w = cut(from: 250 * MiB, used: { _ in (250 * MiB, 100 * MiB) }, ticks: 1)
        #expect(w[0] == 160 * MiB, "\(w)")
    }
}
