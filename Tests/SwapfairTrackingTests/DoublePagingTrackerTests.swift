import Testing
import SwapfairTracking

@Suite struct DoublePagingTrackerTests {
    /// Distinct page contents: page i holds i in every word.
    static func pages(_ ids: [UInt64]) -> [UInt8] {
        var out: [UInt8] = []
        for id in ids { withUnsafeBytes(of: id) { w in for _ in 0..<(4096 / 8) { out += w } } }
        return out
    }

    @Test func aGuestSwapOutOfWhatTheHostJustSwappedInIsDoublePaging() {
        let t = DoublePagingTracker(window: 2)
        Self.pages([1, 2, 3]).withUnsafeBytes { t.hostSwappedIn($0, now: 10) }
        var seen: [Int] = []
        let n = Self.pages([7, 2, 3, 9]).withUnsafeBytes { t.guestSwappedOut(vm: "a", $0, now: 10.5) { seen.append($0) } }
        #expect(n == 2 && seen == [1, 2])
        let c = t.counters()["a"]
        #expect(c?.events == 2 && c?.redundantReadBytes == 8192 && c?.guestSwapOutBytes == 4 * 4096)
        // One swap-in feeds one swap-out: the same content written again is not a second event.
        #expect(Self.pages([2]).withUnsafeBytes { t.guestSwappedOut(vm: "a", $0, now: 10.6) } == 0)
    }

    @Test func outsideTheWindowItIsNot() {
        let t = DoublePagingTracker(window: 2)
        Self.pages([1]).withUnsafeBytes { t.hostSwappedIn($0, now: 10) }
        #expect(Self.pages([1]).withUnsafeBytes { t.guestSwappedOut(vm: "a", $0, now: 12.5) } == 0)
        #expect(t.counters()["a"]?.events == 0)
    }

    @Test func zeroPagesTellNothing() {
        let t = DoublePagingTracker()
        Self.pages([0]).withUnsafeBytes { t.hostSwappedIn($0, now: 1) }
        #expect(Self.pages([0]).withUnsafeBytes { t.guestSwappedOut(vm: "a", $0, now: 1) } == 0)
    }

    /// The table never grows past its capacity: the oldest swap-ins are forgotten first.
    @Test func aFullTableForgetsTheOldest() {
        let t = DoublePagingTracker(window: 100, capacity: 4)
        Self.pages([1, 2, 3, 4, 5, 6]).withUnsafeBytes { t.hostSwappedIn($0, now: 1) }
        let n = Self.pages([1, 2, 3, 4, 5, 6]).withUnsafeBytes { t.guestSwappedOut(vm: "a", $0, now: 2) }
        #expect(n == 4)
        #expect(t.hostBytes().swapIn == 6 * 4096)
    }

    @Test func eachVMIsCountedApart() {
        let t = DoublePagingTracker()
        Self.pages([1, 2]).withUnsafeBytes { t.hostSwappedIn($0, now: 1) }
        Self.pages([1]).withUnsafeBytes { _ = t.guestSwappedOut(vm: "a", $0, now: 1) }
        Self.pages([2, 5]).withUnsafeBytes { _ = t.guestSwappedOut(vm: "b", $0, now: 1) }
        #expect(t.counters()["a"]?.events == 1 && t.counters()["b"]?.events == 1)
        #expect(t.counters()["b"]?.guestSwapOutBytes == 8192)
    }
}
