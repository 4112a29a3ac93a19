/// Which of a ublk queue's requests may start. The kernel may hand a queue requests whose ranges
/// overlap (a block device promises no order between them), but a target that keeps per-slot
/// state between a request's start and its finish must not see two at once. So a request waits
/// while its range overlaps one in flight, or one that came before it and waits still; waiting
/// requests start in the order they came. A request with no range (a flush) never waits. Pure
/// bookkeeping, with room for every tag set aside up front.
struct OverlapGate {
    private var start: [UInt64]
    private var end: [UInt64]
    private var inFlight: [Bool]
    private var inFlightCount = 0
    /// Tags waiting, in the order they came.
    private(set) var waiting: [Int]

    init(tags: Int) {
        start = Array(repeating: 0, count: tags)
        end = Array(repeating: 0, count: tags)
        inFlight = Array(repeating: false, count: tags)
        waiting = []
        waiting.reserveCapacity(tags)
    }

    /// A request came on `tag` for `length` bytes at `offset`. True: it may start, and is in
    /// flight from now on; false: it waits (see `nextReady`).
    mutating func arrive(tag: Int, offset: UInt64, length: Int) -> Bool {
        start[tag] = offset
        end[tag] = offset + UInt64(length)
        if blocked(tag, waitingBefore: waiting.count) {
            waiting.append(tag)
            return false
        }
        take(tag)
        return true
    }

    /// `tag`'s request is done.
    mutating func done(tag: Int) {
        if inFlight[tag] {
            inFlight[tag] = false
            inFlightCount -= 1
        }
    }

    /// The first waiting request that may start now, which is then in flight; nil if none.
    mutating func nextReady() -> Int? {
        for k in waiting.indices where !blocked(waiting[k], waitingBefore: k) {
            let tag = waiting.remove(at: k)
            take(tag)
            return tag
        }
        return nil
    }

    private mutating func take(_ tag: Int) {
        inFlight[tag] = true
        inFlightCount += 1
    }

    private func overlaps(_ a: Int, _ b: Int) -> Bool {
        start[a] < end[b] && start[b] < end[a] && start[a] < end[a] && start[b] < end[b]
    }

    private func blocked(_ tag: Int, waitingBefore k: Int) -> Bool {
        guard start[tag] < end[tag] else { return false }
        if inFlightCount > 0 {
            for other in inFlight.indices where inFlight[other] && other != tag && overlaps(tag, other) { return true }
        }
        for j in 0..<k where overlaps(tag, waiting[j]) { return true }
        return false
    }
}
