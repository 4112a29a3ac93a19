/// The tunables of the pressure feedback, named with their units and defaults.
public struct FeedbackParameters: Sendable, Equatable {
    /// Share of wall time a VM may spend stalled on memory ("some" in `memory.pressure`)
    /// before it is given more. 0.01 = 10 ms per second.
    public var target: Double = 0.01
    /// Below `target × deadBand` the demand is probed down; between the two it is held.
    public var deadBand: Double = 0.5
    /// Largest probe-down step per tick, as a fraction of the demand.
    public var probeStepMax: Double = 0.02
    /// Probe step gain: step = min(probeStepMax, probeGain·((target/stall)/10)²) (senpai's form).
    public var probeGain: Double = 0.02
    /// Back-off step: growth = min(backoffStepMax, max(backoffStepMin, ((stall/target)/backoffScale)²)).
    public var backoffStepMin: Double = 0.05
    public var backoffStepMax: Double = 1.0
    public var backoffScale: Double = 20
    /// Ticks to hold after a back-off before probing down again.
    public var holdTicks: Int = 3
    /// Probing stops this far above the level where the VM last stalled ...
    public var stallMargin: Double = 0.03
    /// ... for this many quiet ticks; then it probes again, so a shrinking working set is found.
    /// Without this memory, probing would hit the working set every few ticks (a sawtooth).
    public var stallMemoryTicks: Int = 180
    /// Probing takes idle memory only: the demand is not probed below the VM's active memory
    /// (usage × active fraction) plus this margin.
    public var activeMargin: Double = 0.05
    /// A VM that refaults more than this share of its memory per second wants more even if its
    /// stall stays under the target (slow page-ins of a working set that does not fit).
    public var refaultThreshold: Double = 0.0005

    public init() {}
}

/// What the feedback decided for one VM in one tick, with the numbers that made it decide.
public enum FeedbackDecision: Sendable, Equatable {
    case start(UInt64)
    case backOff(stall: Double, step: Double)
    case hold(stall: Double)
    case cooldown(stall: Double, ticksLeft: Int)
    case probeDown(stall: Double, step: Double)
    case atFloor(stall: Double)
    case refaulting(rate: Double, step: Double)

    public var summary: String {
        func pct(_ x: Double) -> String { Format.percent(x) }
        switch self {
        case .start(let d): return "start from \(Format.bytes(d))"
        case .backOff(let s, let st): return "stalled \(pct(s)) of the time: grow demand by \(pct(st))"
        case .hold(let s): return "stall \(pct(s)) near target: hold"
        case .cooldown(let s, let n): return "stall \(pct(s)): hold \(n) more tick(s) after a back-off"
        case .probeDown(let s, let st): return "stall \(pct(s)) below target: probe down \(pct(st))"
        case .atFloor(let s): return "stall \(pct(s)): demand at its floor (idle memory probed away)"
        case .refaulting(let r, let st): return "refaulting \(pct(r)) of its memory a second: grow demand by \(pct(st))"
        }
    }

    /// True for the decisions that change the demand on purpose (worth a log line).
    public var isAdjustment: Bool {
        switch self {
        case .backOff, .start: return true
        default: return false
        }
    }
}

/// Per-VM pressure feedback in the manner of senpai: a VM's *demand* (what it needs to keep its
/// memory stalls near the target) is probed down in small steps while it does not stall and grows
/// quickly when it does. Deterministic: the stall fraction is measured outside and passed in.
public struct PressureFeedback: Sendable, Equatable {
    public var parameters: FeedbackParameters

    public init(_ parameters: FeedbackParameters = FeedbackParameters()) { self.parameters = parameters }

    public struct State: Sendable, Equatable, Codable {
        public var demand: UInt64
        public var cooldown: Int
        /// Demand at which the VM last stalled, or 0 when forgotten.
        public var stallLevel: Double
        /// Ticks since the last stall.
        public var quietTicks: Int
        public init(demand: UInt64, cooldown: Int = 0, stallLevel: Double = 0, quietTicks: Int = 0) {
            self.demand = demand
            self.cooldown = cooldown
            self.stallLevel = stallLevel
            self.quietTicks = quietTicks
        }
    }

    /// One tick. `usage` is `memory.current`; `stall` the share of the period stalled, or nil when it
    /// cannot be known yet (first tick); `floor...ceiling` bound the demand.
    /// `activeFraction`: the share of its memory the VM touched lately (1 when unknown);
    /// `refaultRate`: the share of its memory refaulted per second.
    public func step(_ s: State, usage: UInt64, stall: Double?, floor: UInt64, ceiling: UInt64,
                     activeFraction: Double = 1, refaultRate: Double = 0) -> (State, FeedbackDecision)
    {
        let p = parameters
        let lo = Double(min(floor, ceiling)), hi = Double(max(floor, ceiling))
        func bounded(_ x: Double) -> UInt64 { UInt64(min(max(x, lo), hi)) }
        var next = s
        next.demand = bounded(Double(s.demand))  // bounds may have moved (config reload, restart)
        next.quietTicks = s.quietTicks + 1
        // Forget the stall level when it is old, or when the VM no longer even holds that much
        // (its working set has shrunk).
        if next.quietTicks > p.stallMemoryTicks || Double(usage) < s.stallLevel * (1 - p.stallMargin) {
            next.stallLevel = 0
        }
        guard let stall else { return (next, .start(next.demand)) }
        if stall > p.target {
            let ratio = stall / p.target / p.backoffScale
            let growth = min(p.backoffStepMax, max(p.backoffStepMin, ratio * ratio))
            let base = Double(max(s.demand, usage))
            next.stallLevel = Double(min(s.demand, usage))
            next.quietTicks = 0
            next.demand = bounded(base * (1 + growth))
            next.cooldown = p.holdTicks
            return (next, .backOff(stall: stall, step: growth))
        }
        if refaultRate > p.refaultThreshold {
            // Its working set does not fit, but page-ins are quick enough to stay under the stall
            // target: grow it gently rather than leave it faulting.
            let growth = p.backoffStepMin
            next.stallLevel = Double(min(s.demand, usage))
            next.quietTicks = 0
            next.demand = bounded(Double(max(s.demand, usage)) * (1 + growth))
            next.cooldown = p.holdTicks
            return (next, .refaulting(rate: refaultRate, step: growth))
        }
        if s.cooldown > 0 {
            next.cooldown = s.cooldown - 1
            return (next, .cooldown(stall: stall, ticksLeft: next.cooldown))
        }
        if stall > p.target * p.deadBand {
            return (next, .hold(stall: stall))
        }
        // Probe from what the VM really holds: while its limit is not binding, lowering an unused
        // demand would teach nothing, so the demand tracks usage from one step below it.
        let ratio = p.target / max(stall, 1e-9) / 10
        let step = min(p.probeStepMax, p.probeGain * ratio * ratio)
        // Only idle memory is probed away: the demand stops at the active part plus a margin. For
        // a VM that is all active that is above what it holds, so its limit keeps room to breathe;
        // stopping at its usage instead put memory.high exactly at the working set, and the next
        // allocations refaulted (132 major faults/s for a busy lab VM until the stall backed off).
        let active = Double(usage) * min(max(activeFraction, 0), 1) * (1 + p.activeMargin)
        let stop = max(lo, next.stallLevel * (1 + p.stallMargin), active)
        let probed = max(Double(usage) * (1 - step), stop)
        next.demand = bounded(probed)
        return (next, probed <= stop ? .atFloor(stall: stall) : .probeDown(stall: stall, step: step))
    }
}
