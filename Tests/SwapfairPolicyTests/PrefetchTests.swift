import Testing
@testable import SwapfairPolicy

/// Swap-in prefetch: a VM that stalls well below its limit has its swapped memory read back ahead
/// of its faults, bounded by the room under the limit, what it has in swap and the rate.
@Suite struct PrefetchTests {
    /// One VM: `idleTicks` quiet ticks a second apart holding `held` (sampled 0% active unless
    /// `busyBefore`), then `stalledTicks` ticks stalled 60% holding `current` (growing by `grow` a
    /// tick); the plans of the stalled ticks.
    func plans(current: UInt64, swap: UInt64, stallMicros: UInt64 = 600_000, rate: UInt64 = 128 * MiB,
               limit: UInt64? = nil, busyBefore: Bool = false, idleTicks: Int = 10, stalledTicks: Int = 1,
               grow: UInt64 = 0, held: UInt64 = 160 * MiB) -> [VMPlan] {
        var policy = HostPolicy(memoryBudget: 320 * MiB, swapBudget: 1024 * MiB)
        policy.prefetchRate = rate
        let planner = Planner(policy)
        let vm = VMEntitlement(name: "victim", limit: limit)
        var state: VMControlState?
        var high: UInt64? = limit ?? 320 * MiB
        var stall: UInt64 = 0
        var out: [VMPlan] = []
        for t in 0..<(idleTicks + stalledTicks) {
            let stalled = t >= idleTicks
            if stalled { stall += stallMicros } else if busyBefore { stall += stallMicros }
            let used = stalled ? current + UInt64(t - idleTicks) * grow : held
            let p = planner.plan([VMInput(vm, VMObservation(time: Double(t), memoryCurrent: used, swapCurrent: swap,
                                                            memoryHigh: high, pressureSomeTotal: stall, activeBytes: used,
                                                            sampledActiveFraction: busyBefore ? 1 : 0), state: state)])[0]
            state = p.state
            high = p.memoryHigh
            if stalled { out.append(p) }
        }
        return out
    }

    /// The plan of the tick that sees it wake.
    func plan(current: UInt64, swap: UInt64, stallMicros: UInt64 = 600_000, rate: UInt64 = 128 * MiB,
              limit: UInt64? = nil, held: UInt64 = 160 * MiB) -> VMPlan {
        plans(current: current, swap: swap, stallMicros: stallMicros, rate: rate, limit: limit, held: held)[0]
    }

    @Test func aStallingVMBelowItsLimitHasItsSwapReadBack() {
        let p = plan(current: 70 * MiB, swap: 90 * MiB, stallMicros: 600_000, held: 200 * MiB)
        // All of its swap fits under the limit (the whole budget, alone) and what it held.
        #expect(p.prefetch == 90 * MiB, "\(p.prefetch)")
    }

    @Test func theRoomUnderTheLimitBoundsIt() {
        let p = plan(current: 70 * MiB, swap: 200 * MiB, stallMicros: 600_000, limit: 120 * MiB)
        // 120 MiB limit, a margin of 4 MiB (2% of it is less): 46 MiB of room.
        #expect(p.memoryHigh == 120 * MiB)
        #expect(p.prefetch == 46 * MiB, "\(p.prefetch)")
    }

    @Test func whatItHeldBeforeBoundsIt() {
        // It held 100 MiB before it idled (less 0.5% a tick since): about 30 MiB are missing,
        // though 90 MiB are in swap (some of them pages it no longer uses).
        let p = plan(current: 70 * MiB, swap: 90 * MiB, held: 100 * MiB)
        #expect(p.prefetch > 29 * MiB && p.prefetch < 30 * MiB, "\(p.prefetch)")
        #expect(plan(current: 70 * MiB, swap: 90 * MiB, held: 70 * MiB).prefetch == 0)
    }

    @Test func theRateBoundsIt() {
        let p = plan(current: 70 * MiB, swap: 200 * MiB, stallMicros: 600_000, rate: 32 * MiB)
        #expect(p.prefetch == 32 * MiB, "\(p.prefetch)")
    }

    @Test func noneWithoutAStallOrWithoutSwapOrWhenOff() {
        #expect(plan(current: 70 * MiB, swap: 90 * MiB, stallMicros: 5_000).prefetch == 0)  // 0.5%: under the 1% target
        #expect(plan(current: 70 * MiB, swap: 0, stallMicros: 600_000).prefetch == 0)
        #expect(plan(current: 70 * MiB, swap: 90 * MiB, stallMicros: 600_000, rate: 0).prefetch == 0)
    }

    @Test func noneForAVMAtItsLimit() {
        // A VM thrashing at its limit has no room: reading ahead would only push out other pages.
        #expect(plan(current: 118 * MiB, swap: 200 * MiB, stallMicros: 600_000, limit: 120 * MiB).prefetch == 0)
    }

    @Test func noneForAVMThatWasBusyAllAlong() {
        // Thrashing from the start is not waking: its own faults already read what it needs.
        #expect(plans(current: 70 * MiB, swap: 90 * MiB, busyBefore: true).allSatisfy { $0.prefetch == 0 })
    }

    @Test func readsStillInFlightAreNotAskedForAgain() {
        // A 160 MiB limit, 70 MiB held: 86 MiB of room under the 4 MiB margin. Nothing arrives
        // (the reads are slow): half of what was asked still counts as pending a tick later.
        let p = plans(current: 70 * MiB, swap: 200 * MiB, limit: 160 * MiB, stalledTicks: 3)
        #expect(p.map(\.prefetch) == [86 * MiB, 43 * MiB, 43 * MiB], "\(p.map(\.prefetch))")
        #expect(p[1].state.prefetchPending == 86 * MiB)
        // What has arrived is no longer pending.
        // It holds 130 MiB a tick later, of the 158 MiB it held: 28 MiB more, and all of them.
        let q = plans(current: 70 * MiB, swap: 60 * MiB, stalledTicks: 2, grow: 60 * MiB)
        #expect(q[0].prefetch == 60 * MiB)
        #expect(q[1].prefetch > 28 * MiB && q[1].prefetch < 29 * MiB, "\(q.map(\.prefetch))")
        #expect(q[1].state.prefetchPending == q[1].prefetch, "\(q.map(\.state.prefetchPending))")
    }

    @Test func theWakingWindowEnds() {
        // For ten seconds after waking, not after.
        let p = plans(current: 70 * MiB, swap: 200 * MiB, rate: 1 * MiB, stalledTicks: 13).map(\.prefetch)
        #expect(p[0...10].allSatisfy { $0 == 1 * MiB }, "\(p)")
        #expect(p[11] == 0 && p[12] == 0, "\(p)")
    }

    @Test func onlyMemoryFreeUnderTheBudgetIsFilled() {
        // A hog holds 240 MiB of the 320 MiB budget; the waking victim holds 70: 10 MiB are free,
        // however much room the victim's own limit leaves (the hog's cut frees the rest later).
        let planner = Planner(HostPolicy(memoryBudget: 320 * MiB, swapBudget: 1024 * MiB))
        var states: [VMControlState?] = [nil, nil]
        var highs: [UInt64?] = [160 * MiB, 160 * MiB]
        var victimStall: UInt64 = 0, hogStall: UInt64 = 0
        var last: [VMPlan] = []
        for t in 0..<11 {
            if t >= 10 { victimStall += 600_000 }
            hogStall += 300_000
            last = planner.plan([
                VMInput(VMEntitlement(name: "victim"), VMObservation(time: Double(t), memoryCurrent: (t < 9 ? 150 : 70) * MiB,
                                                                     swapCurrent: 90 * MiB, memoryHigh: highs[0],
                                                                     pressureSomeTotal: victimStall, activeBytes: 70 * MiB,
                                                                     sampledActiveFraction: t >= 10 ? 1 : 0),
                        state: states[0]),
                VMInput(VMEntitlement(name: "hog"), VMObservation(time: Double(t), memoryCurrent: 240 * MiB, swapCurrent: 400 * MiB,
                                                                  memoryHigh: highs[1], pressureSomeTotal: hogStall,
                                                                  activeBytes: 240 * MiB, sampledActiveFraction: 1),
                        state: states[1]),
            ])
            states = last.map(\.state)
            highs = last.map(\.memoryHigh)
        }
        #expect(last[0].prefetch == 10 * MiB, "\(last.map(\.prefetch))")
        #expect(last[1].prefetch == 0)  // the hog thrashed all along: not waking
    }

    @Test func refaultsWithoutAStallKeepItGoing() {
        // Pages pushed out while it idled come back without a PSI stall (they are not marked as
        // working set): its refaults say it is bound by memory, and that is enough.
        let planner = Planner(HostPolicy(memoryBudget: 640 * MiB, swapBudget: 1024 * MiB))
        var state: VMControlState?
        var refaulted: UInt64 = 0
        var out: [UInt64] = []
        for t in 0..<14 {
            let awake = t >= 10
            if awake { refaulted += 20 * MiB }
            let used: UInt64 = awake ? 80 * MiB : 320 * MiB
            let p = planner.plan([VMInput(VMEntitlement(name: "waker"),
                                          VMObservation(time: Double(t), memoryCurrent: used, swapCurrent: 250 * MiB,
                                                        memoryHigh: 640 * MiB, activeBytes: used, refaultedTotal: refaulted,
                                                        sampledActiveFraction: awake ? 1 : 0), state: state)])[0]
            state = p.state
            if awake { out.append(p.prefetch) }
        }
        // Bound two ticks running (refaults above the threshold) from the second tick awake.
        #expect(out[0] == 0 && out[1] > 0 && out[2] > 0, "\(out)")
    }

    @Test func noneOnTheFirstTick() {
        let planner = Planner(HostPolicy(memoryBudget: 320 * MiB, swapBudget: 1024 * MiB))
        let p = planner.plan([VMInput(VMEntitlement(name: "victim"),
                                      VMObservation(time: 0, memoryCurrent: 70 * MiB, swapCurrent: 90 * MiB,
                                                    pressureSomeTotal: 600_000))])[0]
        #expect(p.prefetch == 0)
    }
}
