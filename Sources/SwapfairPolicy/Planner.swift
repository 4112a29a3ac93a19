/// Host-wide policy parameters (from the `[host]` table of the configuration).
public struct HostPolicy: Sendable, Equatable {
    /// RAM that the managed VMs may use in total.
    public var memoryBudget: UInt64
    /// Swap that the managed VMs may use in total.
    public var swapBudget: UInt64
    /// ESX idle memory tax rate τ in [0, 1): idle memory costs 1/(1−τ) times as many shares.
    public var idleTax: Double
    /// A VM's demand is never probed below this (nor below its reservation).
    public var minimumSize: UInt64
    /// Least free swap kept for a VM beyond what it uses, so it can start swapping at once.
    public var swapHeadroom: UInt64
    /// Per-tick decay of a VM's held-memory mark (see `VMControlState.heldMark`): 0.005 forgets
    /// half of a drop in about 140 ticks.
    public var heldMarkDecay: Double = 0.005
    /// Largest cut of a VM's `memory.high` per tick, as a fraction of it, while the host is within
    /// its budget (see `Planner`, step 4).
    public var highStepDown: Double = 0.06
    /// Most swapped memory read back ahead of its faults per second for a VM that stalls below its
    /// limit (see `Planner`, step 6); 0 turns swap-in prefetch off.
    public var prefetchRate: UInt64 = 64 << 20
    /// For how long after waking a VM still stalling below its limit may have its swap read back
    /// ahead of its faults, in seconds.
    public var prefetchWindow: Double = 10
    public var feedback: FeedbackParameters
    public var activity: ActivityEstimator

    public init(memoryBudget: UInt64, swapBudget: UInt64, idleTax: Double = 0.75,
                minimumSize: UInt64 = 64 << 20, swapHeadroom: UInt64 = 64 << 20,
                feedback: FeedbackParameters = FeedbackParameters(),
                activity: ActivityEstimator = ActivityEstimator()) {
        self.memoryBudget = memoryBudget
        self.swapBudget = swapBudget
        self.idleTax = idleTax
        self.minimumSize = minimumSize
        self.swapHeadroom = swapHeadroom
        self.feedback = feedback
        self.activity = activity
    }
}

/// What a VM is entitled to (from its `[[vm]]` table).
public struct VMEntitlement: Sendable, Equatable {
    public var name: String
    public var weight: Double
    /// Protected memory (`memory.low`).
    public var reservation: UInt64
    /// Hard memory limit (`memory.max`); nil for none.
    public var limit: UInt64?
    public var swapWeight: Double
    /// Hard swap limit; nil for none beyond the swap budget.
    public var swapLimit: UInt64?
    /// `io.weight` (1–10000); nil leaves it alone.
    public var ioWeight: UInt64?

    public init(name: String, weight: Double = 100, reservation: UInt64 = 0, limit: UInt64? = nil,
                swapWeight: Double? = nil, swapLimit: UInt64? = nil, ioWeight: UInt64? = nil) {
        self.name = name
        self.weight = weight
        self.reservation = reservation
        self.limit = limit
        self.swapWeight = swapWeight ?? weight
        self.swapLimit = swapLimit
        self.ioWeight = ioWeight
    }
}

/// One reading of a VM's cgroup.
public struct VMObservation: Sendable, Equatable {
    /// Monotonic time of the reading, in seconds.
    public var time: Double
    public var memoryCurrent: UInt64
    public var swapCurrent: UInt64
    /// `memory.high` as found (nil for "max").
    public var memoryHigh: UInt64?
    /// `memory.swap.max` as found (nil for "max").
    public var swapMax: UInt64?
    /// `memory.pressure` "some" total, in microseconds.
    public var pressureSomeTotal: UInt64
    public var activeBytes: UInt64
    public var inactiveBytes: UInt64
    /// Cumulative refaulted bytes (`workingset_refault_*` × page size).
    public var refaultedTotal: UInt64
    public var sampledActiveFraction: Double?

    public init(time: Double, memoryCurrent: UInt64, swapCurrent: UInt64 = 0, memoryHigh: UInt64? = nil,
                swapMax: UInt64? = nil, pressureSomeTotal: UInt64 = 0, activeBytes: UInt64 = 0,
                inactiveBytes: UInt64 = 0, refaultedTotal: UInt64 = 0, sampledActiveFraction: Double? = nil) {
        self.time = time
        self.memoryCurrent = memoryCurrent
        self.swapCurrent = swapCurrent
        self.memoryHigh = memoryHigh
        self.swapMax = swapMax
        self.pressureSomeTotal = pressureSomeTotal
        self.activeBytes = activeBytes
        self.inactiveBytes = inactiveBytes
        self.refaultedTotal = refaultedTotal
        self.sampledActiveFraction = sampledActiveFraction
    }
}

/// What the planner remembers about a VM between ticks.
public struct VMControlState: Sendable, Equatable, Codable {
    public var feedback: PressureFeedback.State
    public var activity: ActivityEstimator.State
    public var time: Double
    public var pressureSomeTotal: UInt64
    public var refaultedTotal: UInt64
    /// The most memory the VM held lately (decaying): what the idle tax's bound is taken of.
    public var heldMark: Double
    /// Consecutive ticks, up to now, that it stalled above the target or refaulted above the threshold.
    public var pressuredTicks: Int
    /// When (monotonic seconds) the VM woke: it became bound by memory after being idle. Kept
    /// for `HostPolicy.prefetchWindow`; swap-in prefetch is for a waking VM only.
    public var wokeAt: Double? = nil
    /// Prefetch asked for and not yet seen as growth of `memory.current` (reads still in flight).
    public var prefetchPending: UInt64 = 0
    /// `memory.current` at this tick, to see how much of the pending prefetch has arrived.
    public var memoryCurrent: UInt64 = 0

    public init(feedback: PressureFeedback.State, activity: ActivityEstimator.State, time: Double,
                pressureSomeTotal: UInt64, refaultedTotal: UInt64, heldMark: Double = 0, pressuredTicks: Int = 0) {
        self.feedback = feedback
        self.activity = activity
        self.time = time
        self.pressureSomeTotal = pressureSomeTotal
        self.refaultedTotal = refaultedTotal
        self.heldMark = heldMark
        self.pressuredTicks = pressuredTicks
    }
}

public struct VMInput: Sendable, Equatable {
    public var entitlement: VMEntitlement
    public var observation: VMObservation
    /// nil on the first tick for this VM (new VM, or a daemon restart).
    public var state: VMControlState?
    /// What the guest's balloon has taken under reclaim shifting (`ReclaimShift`): `memory.high`
    /// is raised by as much, up to the VM's limit.
    public var reclaimShift: UInt64

    public init(_ entitlement: VMEntitlement, _ observation: VMObservation, state: VMControlState? = nil,
                reclaimShift: UInt64 = 0) {
        self.entitlement = entitlement
        self.observation = observation
        self.state = state
        self.reclaimShift = reclaimShift
    }
}

/// The settings planned for one VM, with the intermediate figures that explain them.
public struct VMPlan: Sendable, Equatable {
    public var name: String
    /// What the pressure feedback says the VM needs.
    public var demand: UInt64
    public var activeFraction: Double
    /// Share of the last period stalled on memory; nil on the first tick.
    public var stall: Double?
    public var decision: FeedbackDecision
    /// Weighted share of what VMs demand, before the idle tax.
    public var untaxedShare: UInt64
    /// Weighted share of the budget if every VM wanted all of it (reservations and limits apply).
    public var fullShare: UInt64
    /// Least the VM keeps under the tax: of the memory it held (up to its full share), all of the
    /// active part and (1−τ) of the idle part.
    public var taxFloor: UInt64
    /// The VM's entitlement after the tax: its target.
    public var entitled: UInt64
    /// The limit planned for it: the entitlement plus what is lent to it.
    public var highTarget: UInt64
    /// What is written this tick: `highTarget`, or a step down towards it, plus the reclaim shift.
    public var memoryHigh: UInt64
    /// How much of `memoryHigh` is the raise for reclaim shifting.
    public var reclaimShift: UInt64 = 0
    /// Swapped memory to read back ahead of the VM's faults this tick (0: none).
    public var prefetch: UInt64 = 0
    public var memoryLow: UInt64
    public var memoryMax: UInt64?
    public var swapMax: UInt64
    public var ioWeight: UInt64?
    public var state: VMControlState
}

/// The whole policy, one tick at a time: observations in, settings out.
///
/// 1. Pressure feedback turns each VM's stall into a *demand*.
/// 2. RAM: the budget is divided by weight among demands (work conserving), with reservations as
///    floors and limits as ceilings, with the idle tax applied to the weights; but a VM never loses
///    more than τ of the idle part of what it held. That is the VM's entitlement (its target).
/// 3. Whatever no VM demands is lent out by weight up to the limits: `memory.high` = entitlement
///    plus the loan, so memory that nobody needs is not pushed to swap.
/// 4. A cut of `memory.high` goes in steps of at most `highStepDown` a tick while the host is within
///    its budget (all at once when it is not). Lowering the limit of a VM that is thrashing by 60 MiB
///    in one write made the kernel reclaim 120 MiB from it (it fell to 129 MiB under a new limit of
///    190 MiB, then paged it all back in); four steps of 15 MiB a second apart left it at 177–184 MiB.
///    The memory taken back arrives a little later, but the neighbour that wants it fills it at the
///    pace of its own page-ins anyway, and the I/O of the overshoot is not spent. Nothing is lent
///    out of a cut before the cut has been made.
///    A VM under reclaim shifting has its limit raised by what its balloon took (see `ReclaimShift`).
/// 5. Swap: the swap budget is divided by swap weight, each VM's share capped at what it uses plus
///    headroom (the rest is lent), never below what it already uses.
/// 6. Prefetch: a VM that woke from idle to a working set in swap is faulting its memory back one
///    page at a time. Up to what it held before, what it may hold and has in swap is read back
///    ahead of the faults, many pages in flight at once, up to `prefetchRate` a second, into
///    memory free under the budget only.
public struct Planner: Sendable {
    public var host: HostPolicy

    public init(_ host: HostPolicy) { self.host = host }

    /// `absent`: configured VMs that are not running now. They take no RAM (it can be taken back
    /// when they start) but keep their swap headroom, because swap lent out cannot.
    public func plan(_ inputs: [VMInput], absent: [VMEntitlement] = []) -> [VMPlan] {
        let budget = host.memoryBudget
        let feedback = PressureFeedback(host.feedback)
        let tax = min(max(host.idleTax, 0), 0.99)

        // 1. Feedback and activity per VM.
        var steps: [(demand: UInt64, fraction: Double, stall: Double?, decision: FeedbackDecision,
                     state: VMControlState)] = []
        steps.reserveCapacity(inputs.count)
        for input in inputs {
            let e = input.entitlement, o = input.observation
            let ceiling = min(e.limit ?? budget, budget)
            let reservation = min(e.reservation, ceiling)
            let floor = max(reservation, min(host.minimumSize, ceiling))
            let previous = input.state
            let elapsed = previous.map { o.time - $0.time } ?? 0
            var stall: Double?
            var refaulted: UInt64 = 0
            if let previous, elapsed > 0,
               o.pressureSomeTotal >= previous.pressureSomeTotal, o.refaultedTotal >= previous.refaultedTotal {
                stall = min(1, Double(o.pressureSomeTotal - previous.pressureSomeTotal) / (elapsed * 1e6))
                refaulted = o.refaultedTotal - previous.refaultedTotal
            }
            let refaultRate = elapsed > 0 && o.memoryCurrent > 0 ? Double(refaulted) / Double(o.memoryCurrent) / elapsed : 0
            // A VM bound by memory is not idle, whatever the sampling says: while it waits on
            // swap-ins it cannot touch its resident pages, and taxing it would deepen the thrash.
            // Bound means stalling above the target or refaulting above the threshold two ticks in
            // a row (PSI alone flips above and below the target tick by tick under a steady thrash,
            // so either counts), or stalling above 20 times the target in one tick (a VM waking to
            // a working set that is in swap). One milder tick is not enough: an idle VMM waking for
            // its timers faults back a few of its own pages, and in the lab such ticks reached
            // 2–9% of a tick; read as "fully active", each one took 40 MiB back from a neighbour
            // for one tick, and the neighbour's limit went down and up again.
            let pressured = (stall ?? 0) > host.feedback.target || refaultRate > feedback.parameters.refaultThreshold
            let pressuredTicks = pressured ? (previous?.pressuredTicks ?? 0) + 1 : 0
            let memoryBound = pressuredTicks >= 2 || (stall ?? 0) > host.feedback.target * 20
            let sample = ActivitySample(activeBytes: o.activeBytes, inactiveBytes: o.inactiveBytes,
                                        refaultedBytes: refaulted,
                                        sampledActiveFraction: memoryBound ? 1 : o.sampledActiveFraction)
            let (fraction, activity) = host.activity.update(previous?.activity, sample: sample, elapsed: elapsed)
            // A restart resumes from the limit it finds instead of jumping.
            let start = previous?.feedback
                ?? PressureFeedback.State(demand: o.memoryHigh.map { min($0, ceiling) } ?? max(o.memoryCurrent, reservation))
            let (fb, decision) = feedback.step(start, usage: o.memoryCurrent, stall: previous == nil ? nil : stall,
                                               floor: floor, ceiling: ceiling, activeFraction: fraction,
                                               refaultRate: refaultRate)
            let held = max(Double(o.memoryCurrent), (previous?.heldMark ?? 0) * (1 - host.heldMarkDecay))
            var state = VMControlState(feedback: fb, activity: activity, time: o.time,
                                       pressureSomeTotal: o.pressureSomeTotal, refaultedTotal: o.refaultedTotal,
                                       heldMark: held, pressuredTicks: pressuredTicks)
            // Waking: bound by memory now, idle by the fast average before (a VM thrashing all
            // along is not waking: reading its swap ahead would only add I/O to its own faults).
            let wasIdle = previous.map { $0.activity.fast < 0.5 } ?? false
            state.wokeAt = previous?.wokeAt.flatMap { o.time - $0 <= host.prefetchWindow ? $0 : nil }
                ?? (memoryBound && wasIdle ? o.time : nil)
            state.memoryCurrent = o.memoryCurrent
            state.prefetchPending = previous?.prefetchPending ?? 0
            steps.append((fb.demand, fraction, stall, decision, state))
        }

        // 2. RAM entitlement: plain weights, then taxed weights with the tax floor.
        let ceilings = inputs.map { min($0.entitlement.limit ?? budget, budget) }
        let reservations = inputs.indices.map { min(inputs[$0].entitlement.reservation, ceilings[$0]) }
        let full = WeightedDivision.divide(budget, among: inputs.indices.map {
            Claim(weight: inputs[$0].entitlement.weight, floor: reservations[$0], ceiling: ceilings[$0])
        })
        let k = 1 / (1 - tax)
        var taxFloors: [UInt64] = []
        for i in inputs.indices {
            let f = steps[i].fraction
            let kept = f + (1 - tax) * (1 - f)  // all of the active part, (1−τ) of the idle part
            // The bound is taken of what the VM held lately, not of what it holds now: its holding
            // shrinks as it is taxed, and a bound that followed it would ratchet down to nothing.
            let held = min(Double(full[i]), steps[i].state.heldMark)
            taxFloors.append(max(reservations[i], UInt64(held * kept)))
        }
        let caps = inputs.indices.map { max(taxFloors[$0], min(steps[$0].demand, ceilings[$0])) }
        let untaxed = WeightedDivision.divide(budget, among: inputs.indices.map {
            Claim(weight: inputs[$0].entitlement.weight, floor: reservations[$0], ceiling: caps[$0])
        })
        let entitled = WeightedDivision.divide(budget, among: inputs.indices.map { i in
            let f = steps[i].fraction
            return Claim(weight: inputs[i].entitlement.weight / (f + k * (1 - f)), floor: taxFloors[i], ceiling: caps[i])
        })

        // 3. Lend what nobody demands, by weight, up to each limit.
        let high = WeightedDivision.divide(budget, among: inputs.indices.map {
            Claim(weight: inputs[$0].entitlement.weight, floor: entitled[$0], ceiling: ceilings[$0])
        })

        // 4. Step down.
        let used = inputs.reduce(UInt64(0)) { $0 &+ $1.observation.memoryCurrent }
        let withinBudget = Double(used) <= Double(budget) * (1 + host.highStepDown)
        var written = inputs.indices.map { i -> UInt64 in
            guard withinBudget, inputs[i].state != nil, let found = inputs[i].observation.memoryHigh,
                  found > high[i] else { return high[i] }
            let step = UInt64(Double(found) * min(max(host.highStepDown, 0), 1))
            return min(max(high[i], found - min(step, found)), ceilings[i])
        }
        // Reclaim shifting: the raise for what a guest's balloon took, up to the VM's own limit
        // (not the budget: with no loans to take back it is extra host RAM, bounded by the
        // shift's own bound, traded for the double paging it stops).
        let shifted = inputs.indices.map { i -> UInt64 in
            let cap = inputs[i].entitlement.limit ?? UInt64.max
            return written[i] >= cap ? 0 : min(inputs[i].reclaimShift, cap - written[i])
        }
        // Memory still held by a cut under way is not there to lend yet, nor memory a shift holds:
        // new loans (raises above both the entitlement and the limit in force) shrink by as much,
        // in proportion. A raise up to the entitlement is not delayed.
        let total = written.reduce(UInt64(0), +) &+ shifted.reduce(UInt64(0), +)
        if total > budget {
            let raises = inputs.indices.map { i -> UInt64 in
                guard written[i] == high[i] else { return 0 }
                let kept = max(entitled[i], inputs[i].observation.memoryHigh ?? 0)
                return high[i] > kept ? high[i] - kept : 0
            }
            let raised = raises.reduce(UInt64(0), +)
            if raised > 0 {
                let share = min(1, Double(total - budget) / Double(raised))
                for i in inputs.indices where raises[i] > 0 {
                    written[i] -= min(raises[i], UInt64((Double(raises[i]) * share).rounded(.up)))
                }
            }
        }

        for i in inputs.indices { written[i] += shifted[i] }

        // 6. Prefetch, into memory that is free under the budget only: a read-back that pushed
        // the host over it made the next tick cut a neighbour at once (in the lab a hog fell from
        // 204 to 94 MiB in a second while its limit went 215 → 160 → 203 MiB).
        var free = budget > used ? budget - used : 0
        var asked: [UInt64] = []
        for i in inputs.indices {
            asked.append(prefetchBytes(inputs[i], limit: written[i], state: &steps[i].state))
            // Reads still in flight from earlier requests take free memory too.
            free -= min(steps[i].state.prefetchPending - asked[i], free)
        }
        var prefetch = [UInt64](repeating: 0, count: inputs.count)
        for i in inputs.indices where asked[i] > 0 {
            var bytes = min(asked[i], free) & ~UInt64(WeightedDivision.page - 1)
            if bytes < 1 << 20 { bytes = 0 }
            steps[i].state.prefetchPending -= asked[i] - bytes
            free -= bytes
            prefetch[i] = bytes
        }

        // 5. Swap.
        let swap = planSwap(inputs, absent: absent)

        return inputs.indices.map { i in
            let e = inputs[i].entitlement
            return VMPlan(name: e.name, demand: steps[i].demand, activeFraction: steps[i].fraction,
                          stall: steps[i].stall, decision: steps[i].decision, untaxedShare: untaxed[i],
                          fullShare: full[i], taxFloor: taxFloors[i], entitled: entitled[i], highTarget: high[i],
                          memoryHigh: written[i], reclaimShift: shifted[i], prefetch: prefetch[i],
                          memoryLow: reservations[i], memoryMax: e.limit, swapMax: swap[i],
                          ioWeight: e.ioWeight, state: steps[i].state)
        }
    }

    /// Step 6: what to read back from swap ahead of a VM's faults. Only for a VM that woke
    /// (see `VMControlState.wokeAt`) in the last `prefetchWindow`, is still bound by memory, has swap,
    /// and sits below its limit by more than a margin (2% of it, at least 4 MiB, so that
    /// prefetching does not push it into its own `memory.high` reclaim). No more than: the room
    /// below the margin; what it held lately (`heldMark`) beyond what it holds, because a read-back
    /// cannot tell the pages it will touch from those it no longer uses, and those take room and
    /// must be reclaimed again (without this bound a victim 50 MiB short had 96 MiB read back,
    /// and the later reclaim of the rest cost it 2,000 major faults); what it has in swap; and
    /// `prefetchRate` for the period. From each bound what earlier prefetches have not delivered
    /// yet is taken off: without that each tick asked again for reads still in flight (178 MiB
    /// read back in 5 s for the same victim). The caller fits the total into free memory.
    func prefetchBytes(_ input: VMInput, limit: UInt64, state: inout VMControlState) -> UInt64 {
        let o = input.observation
        guard let previous = input.state, o.time > previous.time else { state.prefetchPending = 0; return 0 }
        // What arrived since is no longer pending; half of the rest is written off each tick (read
        // and reclaimed again, or never there), so an estimate that is wrong does not stick.
        let grown = o.memoryCurrent > previous.memoryCurrent ? o.memoryCurrent - previous.memoryCurrent : 0
        let pending = (previous.prefetchPending - min(grown, previous.prefetchPending)) / 2
        state.prefetchPending = pending
        // Still bound this period: stalling above the target or refaulting above the threshold (a
        // VM faulting back pages that were pushed out while it idled refaults without stalling
        // by PSI's count: swap-ins of pages not marked as working set are not memory stalls).
        guard host.prefetchRate > 0, state.wokeAt != nil, state.pressuredTicks > 0, o.swapCurrent > 0 else { return 0 }
        let margin = max(4 << 20, limit / 50)
        let held = UInt64(state.heldMark)
        guard limit > o.memoryCurrent + margin + pending, held > o.memoryCurrent + pending else { return 0 }
        let room = limit - o.memoryCurrent - margin - pending
        let missing = held - o.memoryCurrent - pending
        let rate = UInt64(Double(host.prefetchRate) * min(o.time - previous.time, 10))
        let bytes = min(room, missing, o.swapCurrent, rate)
        guard bytes >= 1 << 20 else { return 0 }
        let asked = bytes & ~UInt64(WeightedDivision.page - 1)
        state.prefetchPending = pending + asked
        return asked
    }

    /// Swap division: by swap weight, each VM capped at its use plus headroom (at least half its
    /// fair share stays free for it, the rest is lent), and never cut below what it already uses,
    /// because swapped pages cannot be taken back on demand.
    func planSwap(_ running: [VMInput], absent: [VMEntitlement]) -> [UInt64] {
        let budget = host.swapBudget
        let inputs = running + absent.map { VMInput($0, VMObservation(time: 0, memoryCurrent: 0)) }
        let limits = inputs.map { min($0.entitlement.swapLimit ?? budget, budget) }
        let fair = WeightedDivision.divide(budget, among: inputs.indices.map {
            Claim(weight: inputs[$0].entitlement.swapWeight, ceiling: limits[$0])
        })
        let claims = inputs.indices.map { i -> Claim in
            let o = inputs[i].observation
            let floor = min(o.swapCurrent, o.swapMax ?? o.swapCurrent)
            let headroom = max(host.swapHeadroom, fair[i] / 2)
            let cap = min(limits[i], o.swapCurrent &+ headroom)
            return Claim(weight: inputs[i].entitlement.swapWeight, floor: floor, ceiling: max(floor, cap))
        }
        return Array(WeightedDivision.divide(budget, among: claims).prefix(running.count))
    }
}
