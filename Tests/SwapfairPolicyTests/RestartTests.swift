import Testing
@testable import SwapfairPolicy

@Suite struct RestartTests {
    /// A restarted daemon has no state; it must start from the limits it finds, not from extremes.
    @Test func aRestartResumesFromTheSettingsItFinds() {
        let budget = 8 * GiB
        let found = 3 * GiB
        let inputs = [
            VMInput(VMEntitlement(name: "a"), VMObservation(time: 100, memoryCurrent: found, memoryHigh: found, activeBytes: found)),
            VMInput(VMEntitlement(name: "b"), VMObservation(time: 100, memoryCurrent: 6 * GiB, memoryHigh: 5 * GiB, activeBytes: 6 * GiB)),
        ]
        let plans = Planner(HostPolicy(memoryBudget: budget, swapBudget: 0)).plan(inputs)
        #expect(plans[0].decision == .start(found))
        #expect(plans[0].demand == found)
        #expect(plans[1].demand == 5 * GiB)
        #expect(plans[0].entitled == found)
        #expect(plans[1].entitled == 5 * GiB)
    }

    @Test func aPressureCounterThatWentBackwardsIsNotAStall() {
        var state = VMControlState(feedback: .init(demand: GiB), activity: .init(slow: 1, fast: 1),
                                   time: 0, pressureSomeTotal: 9_000_000, refaultedTotal: 0)
        state.time = 0
        let input = VMInput(VMEntitlement(name: "a"), VMObservation(time: 1, memoryCurrent: GiB, pressureSomeTotal: 10),
                            state: state)
        let p = Planner(HostPolicy(memoryBudget: 4 * GiB, swapBudget: 0)).plan([input])[0]
        #expect(p.stall == nil)
    }
}
