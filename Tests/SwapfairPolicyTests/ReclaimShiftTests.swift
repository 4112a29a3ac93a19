import Testing
@testable import SwapfairPolicy

/// Reclaim shifting: grows while a VM double-pages, bounded, and is undone slowly after calm.
@Suite struct ReclaimShiftTests {
    let guest = 1024 * MiB
    let policy = ReclaimShift()

    /// Runs the policy over per-tick (redundant read, guest swap-out) bytes; returns the shifts.
    func run(_ ticks: [(UInt64, UInt64)], from start: ReclaimShift.State? = nil) -> [(UInt64, ReclaimShift.Decision)] {
        var state = start
        var redundant = start?.redundantReadTotal ?? 0, outs = start?.guestSwapOutTotal ?? 0
        var t = start?.time ?? 0
        var out: [(UInt64, ReclaimShift.Decision)] = []
        for (r, o) in ticks {
            redundant += r
            outs += o
            t += 1
            let (s, d) = policy.step(state, redundantReadTotal: redundant, guestSwapOutTotal: outs, now: t, guestMemory: guest)
            state = s
            out.append((s.shift, d))
        }
        return out
    }

    @Test func growsAStepATickWhileTheVMDoublePagesUpToItsBound() {
        let r = run([(0, 0)] + Array(repeating: (4 * MiB, 8 * MiB), count: 8))
        #expect(r[0].1 == .start)
        #expect(r.map(\.0) == [0, 64, 128, 192, 256, 256, 256, 256, 256].map { $0 * MiB })
        #expect(policy.bound(guestMemory: guest) == 256 * MiB)
        if case .atBound = r[8].1 {} else { Issue.record("at the bound: \(r[8].1)") }
    }

    @Test func itWaitsForTheBalloonBeforeGrowingAgain() {
        var state: ReclaimShift.State? = nil
        var shifts: [UInt64] = []
        var decisions: [ReclaimShift.Decision] = []
        // The balloon takes 16 MiB a tick towards what it was asked.
        var held: UInt64 = 0
        for t in 0...8 {
            held = min(state?.shift ?? 0, held + 16 * MiB)
            let taken = held
            let (s, d) = policy.step(state, redundantReadTotal: UInt64(t) * 4 * MiB, guestSwapOutTotal: UInt64(t) * 8 * MiB,
                                     now: Double(t), guestMemory: guest, taken: taken)
            state = s
            shifts.append(s.shift)
            decisions.append(d)
        }
        // A step is taken again once the balloon is within half a step of the last.
        #expect(shifts == [0, 64, 64, 128, 128, 128, 128, 192, 192].map { $0 * MiB }, "\(shifts.map { $0 / MiB })")
        if case .waitingForBalloon = decisions[2] {} else { Issue.record("\(decisions[2])") }
    }

    @Test func aGuestThatSwapsHardButRarelyPicksHostSwappedPagesIsLeftAlone() {
        // 1 MiB/s of double paging, but it is 2% of 50 MiB/s of guest swap-outs.
        let r = run([(0, 0)] + Array(repeating: (1 * MiB, 50 * MiB), count: 5))
        #expect(r.allSatisfy { $0.0 == 0 })
    }

    @Test func aTrickleBelowTheRateIsLeftAlone() {
        let r = run([(0, 0)] + Array(repeating: (32 * 1024, 40 * 1024), count: 5))
        #expect(r.allSatisfy { $0.0 == 0 })
    }

    @Test func isUndoneAStepPerCalmSpellAndComesBackAtOnce() {
        var ticks: [(UInt64, UInt64)] = [(0, 0)] + Array(repeating: (4 * MiB, 8 * MiB), count: 2)  // 128 MiB
        ticks += Array(repeating: (0, 0), count: 60)
        ticks += [(4 * MiB, 8 * MiB)]
        let r = run(ticks)
        let shifts = r.map(\.0)
        #expect(shifts[2] == 128 * MiB)
        #expect(shifts[31] == 128 * MiB)  // 29 calm ticks: held
        #expect(shifts[32] == 64 * MiB)  // the 30th: one step back
        #expect(shifts[61] == 64 * MiB)
        #expect(shifts[62] == 0)
        #expect(shifts[63] == 64 * MiB)  // double paging again: a step at once
        #expect(r.filter { $0.1.changesShift }.count == 5)  // two steps up, two back, one up
    }

    @Test func inBetweenItHoldsAndTheCalmCountStartsAgain() {
        var ticks: [(UInt64, UInt64)] = [(0, 0), (4 * MiB, 8 * MiB)]
        ticks += Array(repeating: (0, 0), count: 20)
        ticks += [(40 * 1024, 100 * 1024)]  // below the trigger, above a quarter of it
        ticks += Array(repeating: (0, 0), count: 29)
        let r = run(ticks)
        if case .hold = r[22].1 {} else { Issue.record("\(r[22].1)") }
        #expect(r.last?.0 == 64 * MiB)  // 29 calm ticks since the hold: not yet
    }

    @Test func countersThatGoBackAreAFreshStartWithTheShiftKept() {
        let previous = ReclaimShift.State(shift: 128 * MiB, redundantReadTotal: 900 * MiB, guestSwapOutTotal: 990 * MiB, time: 10)
        let (s, d) = policy.step(previous, redundantReadTotal: 0, guestSwapOutTotal: 0, now: 11, guestMemory: guest)
        #expect(d == .start)
        #expect(s.shift == 128 * MiB)
        // A smaller bound (a smaller guest, a lower setting) cuts a resumed shift to it.
        var small = ReclaimShift.Parameters()
        small.maxFraction = 0.05
        let (c, _) = ReclaimShift(small).step(previous, redundantReadTotal: 0, guestSwapOutTotal: 0, now: 11, guestMemory: guest)
        #expect(c.shift == ReclaimShift(small).bound(guestMemory: guest))
    }

    /// The planner raises memory.high by the shift, within the VM's limit, and takes it from other
    /// VMs' loans before anything else.
    @Test func thePlannerRaisesTheLimitByTheShiftOutOfOthersLoans() {
        let budget = 1024 * MiB
        let planner = Planner(HostPolicy(memoryBudget: budget, swapBudget: 0))
        func plans(shift: UInt64, limit: UInt64? = nil) -> [VMPlan] {
            planner.plan([
                VMInput(VMEntitlement(name: "a", limit: limit), VMObservation(time: 0, memoryCurrent: 400 * MiB, activeBytes: 400 * MiB),
                        reclaimShift: shift),
                VMInput(VMEntitlement(name: "b"), VMObservation(time: 0, memoryCurrent: 100 * MiB, activeBytes: 100 * MiB)),
            ])
        }
        let base = plans(shift: 0), shifted = plans(shift: 64 * MiB)
        #expect(shifted[0].reclaimShift == 64 * MiB)
        #expect(shifted[0].entitled == base[0].entitled && shifted[1].entitled == base[1].entitled)
        // Loans pay for it (the neighbour's and the VM's own, in proportion): the sum stays within
        // the budget while loans last, and no entitlement is touched.
        #expect(base[0].memoryHigh + base[1].memoryHigh > budget - MiB, "everything was lent")
        #expect(shifted[0].memoryHigh + shifted[1].memoryHigh <= budget + 1)
        #expect(shifted[0].memoryHigh > base[0].memoryHigh + 32 * MiB)
        #expect(shifted[1].memoryHigh < base[1].memoryHigh && shifted[1].memoryHigh >= shifted[1].entitled)
        // The VM's own limit bounds the raise.
        let limited = plans(shift: 64 * MiB, limit: base[0].memoryHigh + 16 * MiB)
        #expect(limited[0].reclaimShift <= 16 * MiB)
        #expect(limited[0].memoryHigh <= base[0].memoryHigh + 16 * MiB)
    }
}
