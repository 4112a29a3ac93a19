import Testing
@testable import SwapfairUblk

/// The gate behind a reference, so that its mutating calls can sit inside `#expect`.
private final class Gate {
    var gate: OverlapGate
    init(tags: Int) { gate = OverlapGate(tags: tags) }
    func arrive(tag: Int, offset: UInt64, length: Int) -> Bool { gate.arrive(tag: tag, offset: offset, length: length) }
    func done(tag: Int) { gate.done(tag: tag) }
    func nextReady() -> Int? { gate.nextReady() }
    var waiting: [Int] { gate.waiting }
}

@Suite struct OverlapGateTests {
    @Test func disjointRequestsAllStartAtOnceAndTouchingIsNotOverlapping() {
        let g = Gate(tags: 4)
        #expect(g.arrive(tag: 0, offset: 0, length: 4096))
        #expect(g.arrive(tag: 1, offset: 4096, length: 4096))
        #expect(g.arrive(tag: 2, offset: 1 << 20, length: 8192))
        #expect(g.waiting.isEmpty)
    }

    @Test func anOverlappingRequestWaitsForTheOneInFlight() {
        let g = Gate(tags: 4)
        #expect(g.arrive(tag: 0, offset: 0, length: 8192))
        #expect(!g.arrive(tag: 1, offset: 4096, length: 4096))
        #expect(g.nextReady() == nil)
        g.done(tag: 0)
        #expect(g.nextReady() == 1)
        #expect(g.nextReady() == nil)
        // Tag 1 is in flight now: the same range waits again.
        #expect(!g.arrive(tag: 2, offset: 4096, length: 4096))
    }

    @Test func waitingRequestsThatOverlapEachOtherStartInTheOrderTheyCame() {
        let g = Gate(tags: 4)
        #expect(g.arrive(tag: 0, offset: 0, length: 8192))
        #expect(!g.arrive(tag: 1, offset: 4096, length: 8192))  // overlaps tag 0
        #expect(!g.arrive(tag: 2, offset: 8192, length: 8192))  // clear of tag 0, but overlaps tag 1, which came first
        g.done(tag: 0)
        #expect(g.nextReady() == 1)
        #expect(g.nextReady() == nil)  // tag 2 waits for tag 1 in flight
        g.done(tag: 1)
        #expect(g.nextReady() == 2)
        #expect(g.waiting.isEmpty)
    }

    @Test func aRequestClearOfEverythingStartsWhileOthersWait() {
        let g = Gate(tags: 4)
        #expect(g.arrive(tag: 0, offset: 0, length: 4096))
        #expect(!g.arrive(tag: 1, offset: 0, length: 4096))
        #expect(g.arrive(tag: 2, offset: 1 << 20, length: 4096))
        #expect(g.waiting == [1])
    }

    @Test func aRequestWithNoRangeNeverWaits() {
        let g = Gate(tags: 3)
        #expect(g.arrive(tag: 0, offset: 0, length: 1 << 20))
        #expect(g.arrive(tag: 1, offset: 0, length: 0))  // a flush
        #expect(!g.arrive(tag: 2, offset: 0, length: 4096))
        g.done(tag: 1)
        #expect(g.nextReady() == nil)
        g.done(tag: 0)
        #expect(g.nextReady() == 2)
    }
}
