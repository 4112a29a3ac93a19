import Foundation

/// What the kernel tells about how much of a VM's memory is in use, for one control period.
public struct ActivitySample: Sendable, Equatable {
    /// Bytes on the kernel's active LRU lists (`active_anon + active_file` in `memory.stat`).
    public var activeBytes: UInt64
    /// Bytes on the inactive LRU lists (`inactive_anon + inactive_file`).
    public var inactiveBytes: UInt64
    /// Bytes refaulted during the period (Δ `workingset_refault_anon + _file`, times the page size):
    /// memory the VM needed back after it was reclaimed.
    public var refaultedBytes: UInt64
    /// A direct measurement of the accessed fraction (for example from idle-page sampling), if any.
    /// When present it is used instead of the LRU lists.
    public var sampledActiveFraction: Double?

    public init(activeBytes: UInt64, inactiveBytes: UInt64, refaultedBytes: UInt64 = 0,
                sampledActiveFraction: Double? = nil) {
        self.activeBytes = activeBytes
        self.inactiveBytes = inactiveBytes
        self.refaultedBytes = refaultedBytes
        self.sampledActiveFraction = sampledActiveFraction
    }
}

/// Estimates the active fraction of a VM's memory, the `f` of the ESX idle memory tax.
///
/// Name: the *LRU-and-refault estimator*. Each period gives a raw fraction: a sampled one when the
/// daemon has it, otherwise the share of the VM's pages on the kernel's active LRU lists, raised by
/// the period's refaults (refaulted memory was needed, so it is active by definition). As in ESX the
/// raw fraction feeds a slow and a fast moving average and the estimate is the largest of the two and
/// the raw value: it rises at once when a VM gets busy and falls slowly when it goes idle.
///
/// Limits: the kernel ages the LRU lists only under reclaim, so without memory pressure a VM's pages
/// stay "active" however long they sit untouched and the estimate errs towards active (which only
/// lowers the tax, never takes memory from a busy VM). Under pressure, which is when the tax matters,
/// the lists are aged and the estimate follows real use.
public struct ActivityEstimator: Sendable, Equatable {
    public var slowTimeConstant: Double   // seconds
    public var fastTimeConstant: Double   // seconds

    public init(slowTimeConstant: Double = 60, fastTimeConstant: Double = 6) {
        self.slowTimeConstant = slowTimeConstant
        self.fastTimeConstant = fastTimeConstant
    }

    public struct State: Sendable, Equatable, Codable {
        public var slow: Double
        public var fast: Double
        public init(slow: Double, fast: Double) { self.slow = slow; self.fast = fast }
    }

    /// The raw active fraction of one period, in 0...1.
    public func rawFraction(_ s: ActivitySample) -> Double {
        let total = Double(s.activeBytes) + Double(s.inactiveBytes)
        let refault = total > 0 ? Double(s.refaultedBytes) / total : 0
        if let f = s.sampledActiveFraction { return min(1, max(min(max(f, 0), 1), refault)) }
        guard total > 0 else { return 1 }  // nothing to judge by: assume active (no tax)
        let lru = Double(s.activeBytes) / total
        return min(1, max(lru, refault))
    }

    /// Folds one period of `elapsed` seconds into the state; returns the estimate and the new state.
    public func update(_ state: State?, sample: ActivitySample, elapsed: Double) -> (fraction: Double, state: State) {
        let raw = rawFraction(sample)
        // No history (a new VM, or the daemon restarted): assume active and let the averages fall
        // from there, as they would for a VM that goes idle. Starting from one period's raw value
        // taxed a thrashing VM at once after a restart (its LRU lists read it 30% active) and
        // moved its limit by a fifth of the budget.
        guard let state else { return (1, State(slow: 1, fast: 1)) }
        let dt = max(elapsed, 0)
        let aSlow = 1 - exp(-dt / slowTimeConstant)
        let aFast = 1 - exp(-dt / fastTimeConstant)
        let next = State(slow: state.slow + aSlow * (raw - state.slow),
                         fast: state.fast + aFast * (raw - state.fast))
        return (max(raw, next.slow, next.fast), next)
    }
}
