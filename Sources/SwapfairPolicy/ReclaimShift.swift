/// Reclaim shifting: when a VM double-pages (the host reads pages back from its swap only for the
/// guest to write them to its own swap disk), its reclaim moves into the guest. The guest's balloon
/// takes `shift` bytes of guest RAM, so the guest chooses what to swap (it knows which pages are
/// free or cold, and each of its swap-outs costs one write instead of a host read and a write), and
/// the VM's `memory.high` is raised by what the balloon took, so the host stops choosing the pages
/// the guest is about to swap. The shift grows a step per tick while the pattern lasts, up to a
/// bound, and steps back after a calm spell. Pure: counters in, a shift out.
public struct ReclaimShift: Sendable {
    public struct Parameters: Sendable, Equatable {
        /// Most of the guest's RAM the balloon may take.
        public var maxFraction = 0.25
        /// Growth (and each step back) per decision, as a fraction of the guest's RAM.
        public var stepFraction = 1.0 / 16
        /// Double paging counts when the host reads back at least this much a second only for the
        /// guest to swap it out (16 pages a second)...
        public var triggerBytesPerSecond = 64.0 * 1024
        /// ... and that is at least this share of the guest's swap-outs: a guest that swaps hard
        /// and now and then picks a host-swapped page is not helped by a smaller guest.
        public var triggerShare = 0.1
        /// Calm: below a quarter of both thresholds. After this many calm ticks in a row the shift
        /// steps back once (and the count starts again), so it is undone slowly and comes back at
        /// once if the pattern does.
        public var calmTicks = 30
        public init() {}
    }

    public struct State: Sendable, Equatable, Codable {
        /// What the balloon is asked to take.
        public var shift: UInt64
        /// Counters at the last tick (the tracker's totals since it started).
        public var redundantReadTotal: UInt64
        public var guestSwapOutTotal: UInt64
        public var time: Double
        public var calm: Int
        public init(shift: UInt64 = 0, redundantReadTotal: UInt64 = 0, guestSwapOutTotal: UInt64 = 0,
                    time: Double = 0, calm: Int = 0) {
            self.shift = shift
            self.redundantReadTotal = redundantReadTotal
            self.guestSwapOutTotal = guestSwapOutTotal
            self.time = time
            self.calm = calm
        }
    }

    public enum Decision: Sendable, Equatable {
        /// First tick, or the counters went back (the tracker restarted): nothing to compare yet.
        case start
        case grow(rate: Double, share: Double)
        /// Double paging while the balloon has not yet taken what it was asked: growing now would
        /// overshoot (the pattern lasts until the balloon has moved, whatever the shift).
        case waitingForBalloon(rate: Double, taken: UInt64)
        /// Double paging at the bound: nothing more to shift.
        case atBound(rate: Double, share: Double)
        case hold(rate: Double, share: Double)
        case calm(rate: Double, ticks: Int)
        case stepBack(rate: Double)

        public var summary: String {
            func rate(_ r: Double) -> String { "\(Format.bytes(UInt64(max(0, r))))/s" }
            switch self {
            case .start: return "first reading"
            case .grow(let r, let s): return "double paging \(rate(r)) (\(Format.percent(s)) of guest swap-outs): shift more into the guest"
            case .waitingForBalloon(let r, let t): return "double paging \(rate(r)) while the balloon has taken \(Format.bytes(t)) of the shift: wait for it"
            case .atBound(let r, let s): return "double paging \(rate(r)) (\(Format.percent(s)) of guest swap-outs) with the shift at its bound"
            case .hold(let r, _): return "double paging \(rate(r)): hold"
            case .calm(let r, let n): return "calm (\(rate(r))) for \(n) tick(s)"
            case .stepBack(let r): return "calm (\(rate(r))): step the shift back"
            }
        }

        /// The decisions that change the shift (worth a log line).
        public var changesShift: Bool {
            switch self {
            case .grow, .stepBack: return true
            default: return false
            }
        }
    }

    public var parameters: Parameters
    public init(_ parameters: Parameters = Parameters()) { self.parameters = parameters }

    /// The most the balloon may take of a guest with `guestMemory` bytes of RAM.
    public func bound(guestMemory: UInt64) -> UInt64 {
        UInt64(Double(guestMemory) * min(max(parameters.maxFraction, 0), 0.9)) / 4096 * 4096
    }

    /// One tick. `redundantReadTotal`: bytes the host read back that only fed a guest swap-out (the
    /// tracker's count since it started); `guestSwapOutTotal`: all of the guest's swap-outs;
    /// `taken`: what the balloon has taken so far (nil: not known, taken to be all of the shift).
    public func step(_ previous: State?, redundantReadTotal: UInt64, guestSwapOutTotal: UInt64,
                     now: Double, guestMemory: UInt64, taken: UInt64? = nil) -> (State, Decision) {
        let bound = bound(guestMemory: guestMemory)
        var s = State(shift: min(previous?.shift ?? 0, bound), redundantReadTotal: redundantReadTotal,
                      guestSwapOutTotal: guestSwapOutTotal, time: now, calm: previous?.calm ?? 0)
        guard let previous, now > previous.time, redundantReadTotal >= previous.redundantReadTotal,
              guestSwapOutTotal >= previous.guestSwapOutTotal else { return (s, .start) }
        let elapsed = now - previous.time
        let redundant = Double(redundantReadTotal - previous.redundantReadTotal)
        let outs = Double(guestSwapOutTotal - previous.guestSwapOutTotal)
        let rate = redundant / elapsed
        let share = outs > 0 ? min(1, redundant / outs) : 0
        let p = parameters
        let step = max(4096, UInt64(Double(guestMemory) * p.stepFraction) / 4096 * 4096)
        if rate >= p.triggerBytesPerSecond && share >= p.triggerShare {
            s.calm = 0
            guard s.shift < bound else { return (s, .atBound(rate: rate, share: share)) }
            if let taken, taken + step / 2 < s.shift { return (s, .waitingForBalloon(rate: rate, taken: taken)) }
            s.shift = min(bound, s.shift + step)
            return (s, .grow(rate: rate, share: share))
        }
        guard rate < p.triggerBytesPerSecond / 4 || share < p.triggerShare / 4 else {
            s.calm = 0
            return (s, .hold(rate: rate, share: share))
        }
        guard s.shift > 0 else { s.calm = 0; return (s, .calm(rate: rate, ticks: 0)) }
        s.calm += 1
        guard s.calm >= p.calmTicks else { return (s, .calm(rate: rate, ticks: s.calm)) }
        s.calm = 0
        s.shift -= min(s.shift, step)
        return (s, .stepBack(rate: rate))
    }
}
