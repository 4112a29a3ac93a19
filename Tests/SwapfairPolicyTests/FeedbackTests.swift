import Testing
@testable import SwapfairPolicy
import SwapfairSimulation

@Suite struct FeedbackTests {
    /// A VM with a fixed working set W whose limit is its demand: it stalls in proportion to the
    /// part of W that does not fit.
    func run(workingSet w: UInt64, start: UInt64, ticks: Int) -> [(demand: UInt64, stall: Double)] {
        let fb = PressureFeedback()
        var s = PressureFeedback.State(demand: start)
        var out: [(UInt64, Double)] = []
        var stall: Double? = nil
        for _ in 0..<ticks {
            let usage = min(w, s.demand)
            let (next, _) = fb.step(s, usage: usage, stall: stall, floor: 64 * MiB, ceiling: 64 * GiB)
            s = next
            stall = 0.8 * Double(w - min(w, s.demand)) / Double(w)
            out.append((s.demand, stall ?? 0))
        }
        return out
    }

    @Test(arguments: [(UInt64(1 * GiB), UInt64(4 * GiB)), (3 * GiB, 3 * GiB), (512 * MiB, 8 * GiB), (2 * GiB, 1 * GiB)])
    func convergesNearTheWorkingSetWithoutOscillating(w: UInt64, start: UInt64) {
        let trace = run(workingSet: w, start: start, ticks: 1500)
        let late = trace.suffix(1000)
        let lo = late.map(\.demand).min() ?? 0, hi = late.map(\.demand).max() ?? 0
        // Settles just above the working set ...
        #expect(Double(lo) >= Double(w) * 0.97, "min \(lo) for W \(w)")
        #expect(Double(hi) <= Double(w) * 1.15, "max \(hi) for W \(w)")
        // ... and stays there: the band is narrow and stalls are rare re-checks, not a sawtooth.
        #expect(Double(hi - lo) <= Double(w) * 0.12)
        let stalls = late.filter { $0.stall > 0.01 }.count
        #expect(stalls <= 10, "\(stalls) stalled ticks in 1000")
    }

    @Test func backsOffQuicklyWhenStalled() {
        let fb = PressureFeedback()
        let s = PressureFeedback.State(demand: 1 * GiB)
        let (next, decision) = fb.step(s, usage: 1 * GiB, stall: 0.5, floor: 0, ceiling: 64 * GiB)
        #expect(next.demand >= 2 * GiB - MiB)
        if case .backOff = decision {} else { Issue.record("expected a back-off, got \(decision)") }
    }

    @Test func probesDownInSmallSteps() {
        let fb = PressureFeedback()
        let s = PressureFeedback.State(demand: 1 * GiB)
        let (next, _) = fb.step(s, usage: 1 * GiB, stall: 0, floor: 0, ceiling: 64 * GiB, activeFraction: 0.5)
        #expect(next.demand < 1 * GiB)
        #expect(Double(next.demand) >= Double(GiB) * (1 - FeedbackParameters().probeStepMax) - 1)
    }

    /// Probing takes idle memory only: a VM that touches all it holds keeps it.
    @Test func aFullyActiveVMIsNotProbedBelowItsActiveMemory() {
        let fb = PressureFeedback()
        var s = PressureFeedback.State(demand: 1 * GiB)
        for _ in 0..<50 { (s, _) = fb.step(s, usage: 1 * GiB, stall: 0, floor: 0, ceiling: 64 * GiB, activeFraction: 1) }
        #expect(s.demand >= 1 * GiB - MiB)
        // Now it touches only 256 MiB: the fraction is of what it holds, so it rises as it shrinks.
        for _ in 0..<200 {
            (s, _) = fb.step(s, usage: s.demand, stall: 0, floor: 0, ceiling: 64 * GiB,
                             activeFraction: min(1, Double(256 * MiB) / Double(s.demand)))
        }
        #expect(Double(s.demand) <= 0.25 * 1.05 * Double(GiB) + Double(MiB))
        #expect(Double(s.demand) >= 0.25 * Double(GiB))
    }

    /// Quick page-ins can stay under the stall target; refaults still mean the VM wants more.
    @Test func refaultingGrowsTheDemandEvenWithoutStalls() {
        let fb = PressureFeedback()
        let s = PressureFeedback.State(demand: 1 * GiB)
        let (next, decision) = fb.step(s, usage: 1 * GiB, stall: 0.001, floor: 0, ceiling: 64 * GiB, refaultRate: 0.002)
        #expect(next.demand > 1 * GiB)
        if case .refaulting = decision {} else { Issue.record("expected refaulting, got \(decision)") }
    }

    @Test func holdsInsideTheDeadBand() {
        let fb = PressureFeedback()
        let s = PressureFeedback.State(demand: 1 * GiB)
        let (next, decision) = fb.step(s, usage: 1 * GiB, stall: 0.008, floor: 0, ceiling: 64 * GiB)
        #expect(next.demand == 1 * GiB)
        #expect(decision == .hold(stall: 0.008))
    }

    @Test func neverLeavesItsBounds() {
        let fb = PressureFeedback()
        var s = PressureFeedback.State(demand: 100 * MiB)
        for i in 0..<200 {
            (s, _) = fb.step(s, usage: s.demand, stall: i % 7 == 0 ? 0.9 : 0, floor: 96 * MiB, ceiling: 300 * MiB)
            #expect(s.demand >= 96 * MiB && s.demand <= 300 * MiB)
        }
    }

    /// The whole planner on a modelled host: a VM that goes idle gives memory to a busy one, and
    /// takes its share back within a bounded number of ticks when it is busy again.
    @Test func anIdleVMsMemoryFlowsToTheBusyOneAndComesBack() {
        let budget = 4 * GiB
        let planner = Planner(HostPolicy(memoryBudget: budget, swapBudget: 4 * GiB))
        var host = SimulatedHost(planner: planner, vms: [
            SimulatedVM(VMEntitlement(name: "victim"), workingSet: { t in (60..<120).contains(t) ? 256 * MiB : 1536 * MiB },
                        activity: { t in (60..<120).contains(t) ? 0.05 : 1 }),
            SimulatedVM(VMEntitlement(name: "hog"), workingSet: { _ in 6 * GiB }),
        ])
        for _ in 0..<60 { host.step() }
        let before = host.vms[1].high ?? 0
        #expect(abs(Double(host.vms[0].high ?? 0) - 1.5 * Double(GiB)) < 0.1 * Double(GiB))
        for _ in 60..<120 { host.step() }
        let hogWhileIdle = host.vms[1].high ?? 0
        #expect(hogWhileIdle > before + 3 * GiB / 4, "the hog gains while the victim idles: \(before) → \(hogWhileIdle)")
        // ... but the victim keeps (1 − τ) of the idle memory it held.
        #expect(Double(host.vms[0].high ?? 0) >= 0.25 * 1.5 * Double(GiB))
        var regained: Int?
        for t in 120..<200 {
            host.step()
            if regained == nil, (host.vms[0].high ?? 0) >= 1536 * MiB - 16 * MiB { regained = t - 120 }
        }
        #expect(regained != nil && regained! <= 10, "ticks to regain: \(String(describing: regained))")
    }
}
