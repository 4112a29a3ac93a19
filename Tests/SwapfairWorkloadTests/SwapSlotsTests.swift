import Testing
import SwapfairWorkload

@Suite struct SwapSlotsTests {
    /// Slots go out in order, skipping used ones; after a run of `clusterSize` the lowest wholly
    /// free run starts the next, and with none the next free slot does; all in use gives nil.
    @Test func slotsComeInRunsFromTheLowestFreeCluster() throws {
        var s = SwapSlots(count: 32, clusterSize: 4)
        #expect((0..<4).map { _ in s.allocate() } == [0, 1, 2, 3])
        #expect((0..<4).map { _ in s.allocate() } == [4, 5, 6, 7])
        for slot in [1, 2, 5] { s.free(slot) }
        // 1-2 and 5 are free, but no run of four below 8: the next run starts at 8.
        #expect(s.allocate() == 8)
        s.free(0); s.free(3)
        #expect((0..<3).map { _ in s.allocate() } == [9, 10, 11])
        // Now 0-3 is a free run of four: the next run starts there, then goes on from 4 (used).
        #expect((0..<4).map { _ in s.allocate() } == [0, 1, 2, 3])
        #expect(s.allocate() == 12, "5 is free, but the next free run of four starts at 12")
        #expect(s.inUse == 12 && !s.isHalfFull)
        // The rest: runs up to 31, then the lone 5 once no run of four is left.
        var all: [Int] = []
        while let slot = s.allocate() { all.append(slot) }
        #expect(all == Array(13..<32) + [5])
        #expect(s.inUse == 32 && s.isHalfFull)
    }

    /// With fewer free slots than a run anywhere, slots come from the next free one, wrapping.
    @Test func withNoFreeRunTheNextFreeSlotIsTaken() throws {
        var s = SwapSlots(count: 8, clusterSize: 4)
        for _ in 0..<8 { _ = s.allocate() }
        s.free(6); s.free(1); s.free(3)
        #expect(s.allocate() == 1 && s.allocate() == 3 && s.allocate() == 6)
        #expect(s.allocate() == nil)
    }
}
