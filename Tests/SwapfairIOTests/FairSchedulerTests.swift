import Testing
import SwapfairTestSupport
@testable import SwapfairIO

// Simulation-based tests: a virtual clock and a device that completes `capacity` cost units per
// simulated second, one request at a time, asking the scheduler for the next request whenever it
// is free (and sleeping until `nextEligibleTime` when told to wait).


private let KiB = 1024
private let page = 4 * KiB

/// A client that keeps `depth` requests queued while it is on (a backlogged VM).
private struct Source {
    var client: Int
    var sizes: [Int] = [page]  // cycled
    var depth = 8
    var on: [Range<Double>] = [0..<Double.infinity]
    var issued = 0
}

private struct Record {
    var time: Double
    var client: Int
    var cost: Double
    var bytes: Int
    var phase: IOPhase
    var item: Int
}

private struct Sim {
    var sched: FairScheduler<Int>
    let capacity: Double
    var now = 0.0
    var sources: [Source] = []
    /// Open-loop arrivals, sorted by time.
    var arrivals: [(time: Double, client: Int, bytes: Int)] = []
    var nextArrival = 0
    var log: [Record] = []
    /// Per item: when it was queued, for whom, how big.
    var enqueued: [(time: Double, client: Int, bytes: Int)] = []
    /// Times the device sat idle while `nextEligibleTime` said something could run.
    var idleWhileEligible = 0
    /// When set, every dispatch is checked against the L tag its request carried just before.
    var checkLimitTags = false
    var dispatchedBeforeLTag = 0

    init(capacity: Double, costModel: CostModel = .default, clients: [Int: IOShare]) {
        self.capacity = capacity
        sched = FairScheduler(costModel: costModel)
        for (id, share) in clients.sorted(by: { $0.key < $1.key }) { sched.addClient(id, share: share) }
    }

    mutating func submit(_ client: Int, bytes: Int) {
        sched.enqueue(enqueued.count, client: client, bytes: bytes, now: now)
        enqueued.append((now, client, bytes))
    }

    mutating func feed() {
        while nextArrival < arrivals.count && arrivals[nextArrival].time <= now {
            let a = arrivals[nextArrival]
            submit(a.client, bytes: a.bytes)
            nextArrival += 1
        }
        for i in sources.indices where sources[i].on.contains(where: { $0.contains(now) }) {
            while sched.queued(client: sources[i].client) < sources[i].depth {
                let s = sources[i]
                submit(s.client, bytes: s.sizes[s.issued % s.sizes.count])
                sources[i].issued += 1
            }
        }
    }

    /// The next time the workload does something on its own.
    func nextWorkloadEvent() -> Double {
        var t = nextArrival < arrivals.count ? arrivals[nextArrival].time : .infinity
        for s in sources { for r in s.on where r.lowerBound > now { t = min(t, r.lowerBound) } }
        return t
    }

    mutating func run(until end: Double) {
        while now < end {
            feed()
            var lTags: [Int: Double] = [:]
            if checkLimitTags {
                for h in sched.core.heads { lTags[sched.core.clients[h.slot].id] = h.l }
            }
            if let d = sched.dequeue(now: now) {
                if checkLimitTags, let l = lTags[d.client], l > now { dispatchedBeforeLTag += 1 }
                log.append(Record(time: now, client: d.client, cost: d.cost, bytes: d.bytes, phase: d.phase, item: d.item))
                now += d.cost / capacity
            } else {
                var next = min(end, nextWorkloadEvent())
                if let t = sched.nextEligibleTime(now: now) {
                    if t <= now { idleWhileEligible += 1 }
                    next = min(next, t)
                }
                precondition(next > now, "simulation stalled at \(now)")
                now = next
            }
        }
    }

    /// Runs until every arrival has been queued and everything queued has been dispatched.
    mutating func drain() {
        run(until: arrivals.last?.time ?? 0)
        while sched.queuedCount > 0 || nextArrival < arrivals.count {
            run(until: now + 1)
        }
    }

    func served(_ client: Int, in window: Range<Double> = 0..<Double.infinity) -> Double {
        log.reduce(0) { $0 + ($1.client == client && window.contains($1.time) ? $1.cost : 0) }
    }

    func bytes(_ client: Int, in window: Range<Double> = 0..<Double.infinity) -> Int {
        log.reduce(0) { $0 + ($1.client == client && window.contains($1.time) ? $1.bytes : 0) }
    }

    func share(_ client: Int, in window: Range<Double>) -> Double {
        let total = log.reduce(0.0) { $0 + (window.contains($1.time) ? $1.cost : 0) }
        return served(client, in: window) / total
    }

    /// The fraction of `window` the device spent serving.
    func utilisation(in window: Range<Double>) -> Double {
        log.reduce(0.0) { $0 + (window.contains($1.time) ? $1.cost : 0) } / capacity
            / (window.upperBound - window.lowerBound)
    }

    /// The most cost `client` was served in any `width`-second window (windows start at its
    /// dispatches, which is where the maximum is).
    func maxServed(_ client: Int, overAnyWindowOf width: Double) -> Double {
        let mine = log.filter { $0.client == client }
        var best = 0.0, sum = 0.0, j = 0
        for i in mine.indices {
            while j < mine.count && mine[j].time < mine[i].time + width { sum += mine[j].cost; j += 1 }
            best = max(best, sum)
            sum -= mine[i].cost
        }
        return best
    }
}

private func jain(_ xs: [Double]) -> Double {
    let s = xs.reduce(0, +), s2 = xs.reduce(0) { $0 + $1 * $1 }
    return s * s / (Double(xs.count) * s2)
}

@Suite struct FairSchedulerTests {
    let capacity = 5_000.0  // cost units (4 KiB requests) per simulated second

    // MARK: Weights

    @Test(arguments: [[page], [page, 16 * KiB, 64 * KiB, 8 * KiB, 128 * KiB]])
    func backloggedClientsShareTheDeviceInProportionToWeight(sizes: [Int]) {
        let weights = [1.0, 2, 3, 4]
        var sim = Sim(capacity: capacity, clients: Dictionary(uniqueKeysWithValues: weights.enumerated().map {
            ($0.offset, IOShare(weight: $0.element))
        }))
        // Each client cycles the sizes from a different offset so they are not in lockstep.
        sim.sources = weights.indices.map { i in Source(client: i, sizes: Array(sizes[(i % sizes.count)...] + sizes[..<(i % sizes.count)])) }
        sim.run(until: 30)
        let window = 1.0..<30.0
        var normalised: [Double] = []
        for (i, w) in weights.enumerated() {
            let share = sim.share(i, in: window), expected = w / 10
            #expect(abs(share / expected - 1) <= 0.01, "client \(i): \(share) vs \(expected)")
            normalised.append(share / w)
        }
        #expect(jain(normalised) >= 0.999, "Jain \(jain(normalised))")
        #expect(sim.utilisation(in: window) > 0.999)
    }

    @Test func anIdleClientsShareGoesToTheOthers() {
        var sim = Sim(capacity: capacity, clients: [0: IOShare(weight: 1), 1: IOShare(weight: 2), 2: IOShare(weight: 3),
                                                   3: IOShare(weight: 4), 4: IOShare(weight: 5, limit: 0.05 * capacity)])
        sim.sources = (0..<5).map { Source(client: $0) }
        sim.sources[3].on = [0..<5, 15..<Double.infinity]  // the heaviest client idles for 10 s
        sim.run(until: 20)
        let idle = 6.0..<15.0
        #expect(sim.served(3, in: idle) == 0)
        // The device stays fully used; the limited client stays at its limit; the rest is split 1:2:3.
        #expect(sim.utilisation(in: idle) > 0.999)
        #expect(abs(sim.share(4, in: idle) - 0.05) < 0.001)
        for i in 0..<3 {
            let expected = 0.95 * Double(i + 1) / 6
            #expect(abs(sim.share(i, in: idle) / expected - 1) <= 0.01, "client \(i)")
        }
        #expect(sim.utilisation(in: 0..<20) > 0.999)
        #expect(sim.idleWhileEligible == 0)
    }

    // MARK: Reservations and limits

    @Test func aReservationIsMetAmongHeavierClients() {
        var sim = Sim(capacity: capacity, clients: [0: IOShare(weight: 1, reservation: 0.3 * capacity),
                                                   1: IOShare(weight: 10), 2: IOShare(weight: 10)])
        sim.sources = (0..<3).map { Source(client: $0) }
        sim.run(until: 20)
        let window = 1.0..<20.0
        #expect(sim.share(0, in: window) >= 0.2995, "\(sim.share(0, in: window))")
        #expect(sim.share(0, in: window) <= 0.301, "a reservation is a floor, not a bonus on top of the weight share")
        #expect(abs(sim.share(1, in: window) - sim.share(2, in: window)) < 0.002)
        // Measured over every second, not just on average.
        for s in 1..<20 {
            #expect(sim.served(0, in: Double(s)..<Double(s + 1)) >= 0.3 * capacity - 1, "second \(s)")
        }
    }

    @Test func aClientWhoseWeightShareExceedsItsReservationGetsTheWeightShare() {
        var sim = Sim(capacity: capacity, clients: [0: IOShare(weight: 3, reservation: 0.1 * capacity),
                                                   1: IOShare(weight: 1)])
        sim.sources = (0..<2).map { Source(client: $0) }
        sim.run(until: 10)
        #expect(abs(sim.share(0, in: 1..<10) - 0.75) < 0.0075, "\(sim.share(0, in: 1..<10))")
    }

    @Test func aLimitedClientNeverExceedsItsLimitOverAnySecond() {
        var sim = Sim(capacity: capacity, clients: [0: IOShare(weight: 100, limit: 0.1 * capacity),
                                                   1: IOShare(weight: 1), 2: IOShare(weight: 1)])
        sim.sources = (0..<3).map { Source(client: $0) }
        sim.sources[0].on = [0..<3, 3.5..<6, 6.01..<10]  // bursts after pauses must not overshoot either
        sim.run(until: 10)
        let worst = sim.maxServed(0, overAnyWindowOf: 1)
        #expect(worst <= 0.12 * capacity, "worst second \(worst / capacity)")
        #expect(worst >= 0.099 * capacity, "the limit is reached, not undershot")
        #expect(sim.utilisation(in: 0..<10) > 0.999, "what the limit holds back goes to the others")
    }

    @Test func aLimitedClientThatWaitedBehindOthersDoesNotBurstWhenTheyLeave() {
        // Client 0 is held below its limit by competition, with a deep queue of old requests; when
        // the competition leaves, time spent waiting must not turn into service above the limit.
        var sim = Sim(capacity: capacity, clients: [0: IOShare(weight: 1, limit: 0.2 * capacity), 1: IOShare(weight: 9)])
        sim.sources = [Source(client: 0, depth: 2_000), Source(client: 1, on: [0..<5])]
        sim.run(until: 8)
        #expect(sim.share(0, in: 1..<5) < 0.11, "held below its limit at first")
        let worst = sim.maxServed(0, overAnyWindowOf: 1)
        #expect(worst <= 0.2 * capacity + 10, "worst second \(worst / capacity)")
        #expect(sim.served(0, in: 5..<5.1) <= 0.2 * capacity * 0.1 + 10)
        #expect(sim.served(0, in: 6..<8) >= 0.2 * capacity * 2 - 2, "and it then runs at its limit")
    }

    @Test(arguments: [(1.0, 0.20), (1000.0, 0.25)])
    func reservationAndLimitTogetherBoundTheShare(weight: Double, expected: Double) {
        var sim = Sim(capacity: capacity, clients: [0: IOShare(weight: weight, reservation: 0.2 * capacity, limit: 0.25 * capacity),
                                                   1: IOShare(weight: 10), 2: IOShare(weight: 10)])
        sim.sources = (0..<3).map { Source(client: $0) }
        sim.run(until: 10)
        let share = sim.share(0, in: 1..<10)
        #expect(abs(share - expected) < 0.002, "\(share)")
        #expect(sim.maxServed(0, overAnyWindowOf: 1) <= 0.25 * capacity + 1)
    }

    /// Depth 1 makes every request re-activate its client (a VM waiting on each swap-in).
    @Test(arguments: [8, 1])
    func reservationsBeyondCapacityAreScaledDownProportionally(depth: Int) {
        let r = [0.6, 0.45, 0.15, 0.3]  // 150% of the device once the last one joins
        var sim = Sim(capacity: capacity, clients: Dictionary(uniqueKeysWithValues: r.enumerated().map {
            ($0.offset, IOShare(weight: 1, reservation: $0.element * capacity))
        }))
        sim.sources = r.indices.map { Source(client: $0, depth: depth) }
        sim.sources[3].on = [5..<Double.infinity]
        sim.run(until: 15)
        for (i, ri) in r.enumerated() {
            let before = sim.share(i, in: 1..<5), after = sim.share(i, in: 6..<15)
            if i < 3 { #expect(abs(before / (ri / 1.2) - 1) <= 0.01, "client \(i) before: \(before) vs \(ri / 1.2)") }
            #expect(abs(after / (ri / 1.5) - 1) <= 0.01, "client \(i) after: \(after) vs \(ri / 1.5)")
        }
        // The one that joins the overload neither jumps ahead of the others nor waits behind them.
        #expect(abs(sim.share(3, in: 5..<5.1) / 0.2 - 1) <= 0.05, "\(sim.share(3, in: 5..<5.1))")
        #expect(sim.utilisation(in: 0..<15) > 0.999)
    }

    @Test func serviceAboveTheReservationDoesNotUseItUp() {
        // Client 0 runs far above its reservation on its weight while competition is light; when
        // heavy clients arrive its reservation must hold at once, not after its R tags
        // (had weight-phase service advanced them) fall back to real time.
        var sim = Sim(capacity: capacity, clients: [0: IOShare(weight: 10, reservation: 0.3 * capacity), 1: IOShare(weight: 1),
                                                   2: IOShare(weight: 100), 3: IOShare(weight: 100)])
        sim.sources = [Source(client: 0), Source(client: 1), Source(client: 2, on: [5..<Double.infinity]),
                       Source(client: 3, on: [5..<Double.infinity])]
        sim.run(until: 8)
        #expect(sim.share(0, in: 1..<5) > 0.9)
        #expect(sim.share(0, in: 5..<8) >= 0.299, "\(sim.share(0, in: 5..<8))")
        #expect(sim.served(0, in: 5..<5.5) >= 0.3 * capacity * 0.5 - 2)
    }

    @Test func theDebtOfAnOverloadIsBoundedOnceItEnds() {
        // Two 70% reservations overcommit the device for 10 s, starving the weight-only client;
        // when one leaves, the other repays at most ~1 s of owed reservation, then shares resume.
        var sim = Sim(capacity: capacity, clients: [0: IOShare(weight: 1, reservation: 0.7 * capacity),
                                                   1: IOShare(weight: 1, reservation: 0.7 * capacity), 2: IOShare(weight: 1)])
        sim.sources = [Source(client: 0), Source(client: 1, on: [0..<10]), Source(client: 2)]
        sim.run(until: 16)
        #expect(abs(sim.share(0, in: 1..<10) - 0.5) < 0.005)
        #expect(sim.share(2, in: 13..<16) > 0.29, "\(sim.share(2, in: 13..<16))")
        #expect(abs(sim.share(0, in: 13..<16) - 0.7) < 0.01)
    }

    @Test func aReservationAboveTheLimitIsCappedAtTheLimit() {
        var sim = Sim(capacity: capacity, clients: [0: IOShare(weight: 1, reservation: 0.5 * capacity, limit: 0.1 * capacity),
                                                   1: IOShare(weight: 1)])
        sim.sources = (0..<2).map { Source(client: $0) }
        sim.run(until: 5)
        #expect(sim.maxServed(0, overAnyWindowOf: 1) <= 0.1 * capacity + 1)
        #expect(sim.share(0, in: 1..<5) >= 0.099)
    }

    // MARK: Idle clients

    @Test(arguments: [IOShare(weight: 4), IOShare(weight: 1, reservation: 0.4 * 5_000)])
    func aReturningIdleClientGetsItsShareButNoBurst(share: IOShare) {
        // Client 3 works, idles from 2 s to 10 s, then comes back; meanwhile the others' tags ran on.
        var sim = Sim(capacity: capacity, clients: [0: IOShare(weight: 1), 1: IOShare(weight: 2), 2: IOShare(weight: 3), 3: share])
        sim.sources = (0..<4).map { Source(client: $0) }
        sim.sources[3].on = [0..<2, 10..<Double.infinity]
        sim.run(until: 12)
        let fair = 0.4 * capacity * 0.1  // 40% of the device for 100 ms
        let first = sim.served(3, in: 10..<10.1)
        #expect(first <= fair + 1, "\(first) in the first 100 ms, fair is \(fair)")
        #expect(first >= fair - 2, "and it is not made to wait either")
        for tenth in 0..<10 {  // and no burst within it either: 10 ms at a time
            let start = 10 + Double(tenth) / 100
            #expect(sim.served(3, in: start..<(start + 0.01)) <= 0.4 * capacity * 0.01 + 1, "at \(start)")
        }
    }

    @Test func aClientThatWasUnderServedBeforeIdlingGetsNoCreditForIt() {
        // Client 1 trickles (far below its share) for 5 s, idles, then comes back backlogged.
        var sim = Sim(capacity: capacity, clients: [0: IOShare(weight: 1), 1: IOShare(weight: 1)])
        sim.sources = [Source(client: 0), Source(client: 1, on: [5..<Double.infinity])]
        sim.arrivals = (0..<40).map { (Double($0) / 10, 1, page) }
        sim.run(until: 6)
        #expect(sim.served(1, in: 5..<5.1) <= 0.5 * capacity * 0.1 + 1)
    }

    // MARK: Cost

    @Test func theCostModelChargesAPageOneAndLargeRequestsLessPerByte() {
        let m = CostModel.default
        #expect(m.cost(bytes: page) == 1)
        #expect(m.cost(bytes: 64 * KiB) == 6)
        #expect(m.cost(bytes: 0) > 0, "every request has an overhead")
        var last = 0.0, lastPerKiB = Double.infinity
        for kib in [1, 4, 8, 16, 64, 128, 1024] {
            let c = m.cost(bytes: kib * KiB)
            #expect(c > last, "bigger costs more")
            #expect(c / Double(kib) < lastPerKiB, "but less per byte")
            last = c
            lastPerKiB = c / Double(kib)
        }
        // From device numbers: 100k IOPS of 4 KiB and 1.2 GB/s => 8 KiB of overhead per request.
        let d = CostModel(deviceIOPS: 100_000, deviceBytesPerSecond: 1_228_800_000)
        #expect(abs(d.overheadBytes - 8192) < 1e-6)
        #expect(CostModel(overheadBytes: 0).cost(bytes: 64 * KiB) == 16)
    }

    @Test func clientsWithEqualWeightsGetEqualCostNotEqualRequestCounts() {
        var sim = Sim(capacity: capacity, clients: [0: IOShare(weight: 1), 1: IOShare(weight: 1)])
        sim.sources = [Source(client: 0, sizes: [64 * KiB]), Source(client: 1, sizes: [page])]
        sim.run(until: 20)
        let window = 1.0..<20.0
        #expect(abs(sim.share(0, in: window) - 0.5) < 0.005)
        // Equal device time: the 64 KiB client moves 16/6 times the bytes with 1/6 the requests.
        let ratio = Double(sim.bytes(0, in: window)) / Double(sim.bytes(1, in: window))
        #expect(abs(ratio / (16.0 / 6.0) - 1) < 0.01, "\(ratio)")
    }

    @Test func anIOPSLimitCountsCostAndABandwidthLimitCountsBytes() {
        let iops = IOShare(weight: 1, limit: 300, unit: .iops)  // 300 page-equivalents/s
        let bw = IOShare(weight: 1, limit: 10 * 1_048_576, unit: .bytesPerSecond)
        var sim = Sim(capacity: capacity, clients: [0: iops, 1: bw, 2: IOShare(weight: 1)])
        sim.sources = [Source(client: 0, sizes: [64 * KiB]), Source(client: 1, sizes: [64 * KiB]), Source(client: 2)]
        sim.run(until: 10)
        #expect(abs(sim.served(0, in: 1..<10) / 9 - 300) <= 6 + 1, "cost/s \(sim.served(0, in: 1..<10) / 9)")
        let bps = Double(sim.bytes(1, in: 1..<10)) / 9
        #expect(abs(bps / (10 * 1_048_576) - 1) < 0.01, "bytes/s \(bps)")
    }

    // MARK: Queues and API

    @Test func requestsOfOneClientAreDispatchedInTheOrderTheyCame() {
        var g = SplitMix64(seed: 7)
        var s = FairScheduler<(client: Int, seq: Int)>()
        for c in 0..<5 { s.addClient(c, share: IOShare(weight: Double(c + 1), limit: c == 4 ? 50 : nil)) }
        var seq = Array(repeating: 0, count: 5), last = Array(repeating: -1, count: 5)
        var now = 0.0, out = 0
        for _ in 0..<20_000 {
            now += 0.0001
            if Bool.random(using: &g) {
                let c = Int.random(in: 0..<5, using: &g)
                s.enqueue((c, seq[c]), client: c, bytes: [page, 64 * KiB, 12_000].randomElement(using: &g)!, now: now)
                seq[c] += 1
            } else if let d = s.dequeue(now: now) {
                #expect(d.item.client == d.client)
                #expect(d.item.seq == last[d.client] + 1)
                last[d.client] = d.item.seq
                out += 1
            }
        }
        while let t = s.nextEligibleTime(now: now) {
            now = t
            while let d = s.dequeue(now: now) {
                #expect(d.item.seq == last[d.client] + 1)
                last[d.client] = d.item.seq
                out += 1
            }
        }
        #expect(out == seq.reduce(0, +))
        #expect(s.queuedCount == 0)
    }

    @Test func removingAClientReturnsItsQueueInOrderAndLeavesTheOthers() {
        var s = FairScheduler<String>()
        s.addClient(1, share: IOShare(weight: 1))
        s.addClient(2, share: IOShare(weight: 1))
        for i in 0..<3 { s.enqueue("a\(i)", client: 1, bytes: page, now: 0) }
        for i in 0..<2 { s.enqueue("b\(i)", client: 2, bytes: page, now: 0) }
        #expect(s.queuedCount == 5)
        #expect(s.removeClient(1) == ["a0", "a1", "a2"])
        #expect(s.queuedCount == 2)
        #expect(s.queued(client: 1) == 0)
        #expect(s.removeClient(1) == [])
        var out: [String] = []
        while let d = s.dequeue(now: 0) { out.append(d.item) }
        #expect(out == ["b0", "b1"])
        // The slot is reused cleanly.
        s.addClient(3, share: IOShare(weight: 1))
        s.enqueue("c0", client: 3, bytes: page, now: 1)
        #expect(s.dequeue(now: 1)?.item == "c0")
        #expect(s.updateClient(1, share: IOShare(weight: 2)) == false)
    }

    @Test func nextEligibleTimeIsWhenTheFirstLimitedClientMayGoAgain() {
        var s = FairScheduler<Int>()
        #expect(s.nextEligibleTime(now: 0) == nil)
        s.addClient(0, share: IOShare(weight: 1, limit: 10))  // 10 pages/s: one every 100 ms
        s.addClient(1, share: IOShare(weight: 1, limit: 4))
        for i in 0..<3 { s.enqueue(i, client: 0, bytes: page, now: 0) }
        s.enqueue(10, client: 1, bytes: page, now: 0)
        s.enqueue(11, client: 1, bytes: page, now: 0)
        #expect(s.nextEligibleTime(now: 0) == 0)
        #expect(s.dequeue(now: 0) != nil)
        #expect(s.dequeue(now: 0) != nil)
        #expect(s.dequeue(now: 0) == nil, "both clients are at their limits")
        #expect(s.nextEligibleTime(now: 0) == 0.1)
        #expect(s.dequeue(now: 0.0999) == nil)
        #expect(s.dequeue(now: 0.1)?.item == 1)
        #expect(s.nextEligibleTime(now: 0.1) == 0.2)
        #expect(s.dequeue(now: 0.2)?.item == 2)
        #expect(s.nextEligibleTime(now: 0.2) == 0.25)
        #expect(s.dequeue(now: 0.25)?.item == 11)
        #expect(s.nextEligibleTime(now: 0.25) == nil)
    }

    @Test func drainingAtInfinityReturnsEverythingAndChargesNoOne() {
        // The engine fails what is queued with dequeue(now: .infinity) and carries on.
        var s = FairScheduler<Int>()
        s.addClient(0, share: IOShare(weight: 1, limit: 10))
        s.addClient(1, share: IOShare(weight: 1, reservation: 100))
        s.addClient(2, share: IOShare(weight: 5))
        for i in 0..<50 { s.enqueue(i, client: 0, bytes: page, now: 0) }
        for i in 100..<120 { s.enqueue(i, client: 1, bytes: 64 * KiB, now: 0) }
        for i in 200..<205 { s.enqueue(i, client: 2, bytes: page, now: 0) }
        #expect(s.dequeue(now: 0)?.item == 100, "the reservation goes first")
        var out: [Int: [Int]] = [:]
        while let d = s.dequeue(now: .infinity) { out[d.client, default: []].append(d.item) }
        #expect(out[0] == Array(0..<50))
        #expect(out[1] == Array(101..<120))
        #expect(out[2] == Array(200..<205))
        #expect(s.queuedCount == 0)
        #expect(s.nextEligibleTime(now: 1) == nil)
        // Nothing was charged: the limited client is not held for the 50 requests it never ran.
        s.enqueue(1000, client: 0, bytes: page, now: 1)
        s.enqueue(1001, client: 0, bytes: page, now: 1)
        #expect(s.dequeue(now: 1)?.item == 1000)
        #expect(s.dequeue(now: 1) == nil)
        #expect(s.nextEligibleTime(now: 1) == 1.1)
        s.enqueue(1002, client: 1, bytes: page, now: 1)
        #expect(s.dequeue(now: 1)?.phase == .reservation)
    }

    @Test func resendingTheSameShareChangesNothing() {
        func run(resend: Bool) -> [Int] {
            var sim = Sim(capacity: capacity, clients: [0: IOShare(weight: 1, reservation: 1000), 1: IOShare(weight: 3, limit: 2000), 2: IOShare(weight: 2)])
            sim.sources = (0..<3).map { Source(client: $0, sizes: [page, 64 * KiB]) }
            for t in 1...5 {
                sim.run(until: Double(t))
                if resend { for (c, sh) in [0: IOShare(weight: 1, reservation: 1000), 1: IOShare(weight: 3, limit: 2000), 2: IOShare(weight: 2)] { sim.sched.updateClient(c, share: sh) } }
            }
            return sim.log.map(\.client)
        }
        #expect(run(resend: false) == run(resend: true))
    }

    @Test func changingAShareTakesEffectWithoutABurst() {
        var sim = Sim(capacity: capacity, clients: [0: IOShare(weight: 1, reservation: 0.3 * capacity), 1: IOShare(weight: 10), 2: IOShare(weight: 10)])
        sim.sources = (0..<3).map { Source(client: $0) }
        sim.run(until: 10)
        // Its reservation ran its P tag far ahead of the others'; dropping the reservation must not
        // leave it starved, and raising its weight must not let it catch up in a burst.
        sim.sched.updateClient(0, share: IOShare(weight: 10))
        sim.run(until: 12)
        #expect(abs(sim.share(0, in: 10.1..<12) - 1.0 / 3) < 0.005, "\(sim.share(0, in: 10.1..<12))")
        #expect(sim.served(0, in: 10..<10.1) <= capacity * 0.1 / 3 + 2)
        // Raising a limit: the new rate applies, with no credit for the time spent held.
        sim.sched.updateClient(1, share: IOShare(weight: 100, limit: 0.1 * capacity))
        sim.run(until: 14)
        sim.sched.updateClient(1, share: IOShare(weight: 100, limit: 0.5 * capacity))
        sim.run(until: 16)
        #expect(sim.served(1, in: 14..<14.1) <= 0.5 * capacity * 0.1 + 2)
        #expect(abs(sim.share(1, in: 14.1..<16) - 0.5) < 0.005)
    }

    @Test func theProportionalClockIsRebasedWithoutDisturbingTheShares() {
        // Tiny weights make P tags grow ~1000 per request, crossing the rebase threshold quickly.
        var sim = Sim(capacity: capacity, clients: [0: IOShare(weight: 0.001), 1: IOShare(weight: 0.003)])
        sim.sched.core.vtime = FairSchedulerCore.rebaseThreshold - 50_000
        sim.sources = (0..<2).map { Source(client: $0) }
        sim.run(until: 5)
        #expect(sim.sched.core.vtime < FairSchedulerCore.rebaseThreshold / 2, "rebased")
        #expect(abs(sim.share(0, in: 0.5..<5) - 0.25) < 0.0025)
    }

    // MARK: Properties

    @Test(arguments: 1...40)
    func generatedWorkloadsRespectLimitsKeepOrderAndDrainCompletely(seed: Int) {
        var g = SplitMix64(seed: UInt64(seed))
        let model = CostModel(overheadBytes: Double(Int.random(in: 0...32, using: &g) * KiB))
        let capacity = Double.random(in: 500...20_000, using: &g)
        let n = Int.random(in: 1...10, using: &g)
        var shares: [Int: IOShare] = [:]
        for c in 0..<n {
            let unit: IOShare.Unit = Bool.random(using: &g) ? .iops : .bytesPerSecond
            let scale = unit == .iops ? capacity : capacity * 8 * Double(KiB)
            var share = IOShare(weight: Double.random(in: 0.1...20, using: &g), unit: unit)
            if Int.random(in: 0..<3, using: &g) == 0 { share.reservation = scale * Double.random(in: 0.01...0.5, using: &g) }
            if Int.random(in: 0..<2, using: &g) == 0 { share.limit = scale * Double.random(in: 0.01...0.6, using: &g) }
            shares[c * 7 + 3] = share  // ids need not be dense
        }
        var sim = Sim(capacity: capacity, costModel: model, clients: shares)
        // Bursty open-loop arrivals: each client alternates quiet gaps and bursts of mixed sizes.
        let horizon = Double.random(in: 1...4, using: &g)
        let sizes = [page, 2 * page, 16 * KiB, 64 * KiB, 128 * KiB, 1, 512 * KiB]
        for id in shares.keys.sorted() {
            var t = Double.random(in: 0...0.2, using: &g)
            while t < horizon {
                for _ in 0..<Int.random(in: 1...40, using: &g) {
                    sim.arrivals.append((t, id, sizes.randomElement(using: &g)!))
                    t += Double.random(in: 0...0.002, using: &g)
                }
                t += Double.random(in: 0...0.3, using: &g)
            }
        }
        sim.arrivals.sort { $0.time < $1.time }
        sim.checkLimitTags = true
        sim.drain()

        #expect(sim.log.count == sim.enqueued.count, "everything enqueued was dispatched")
        #expect(Set(sim.log.map(\.item)).count == sim.log.count, "nothing dispatched twice")
        #expect(sim.idleWhileEligible == 0, "the device never idles while a request may run")
        #expect(sim.dispatchedBeforeLTag == 0, "no request runs before its L tag")
        var lastItem: [Int: Int] = [:]
        for rec in sim.log {
            let q = sim.enqueued[rec.item]
            #expect(q.client == rec.client)
            #expect(rec.item > lastItem[rec.client, default: -1], "FIFO within a client")
            lastItem[rec.client] = rec.item
        }
        // Independently of the tags: over any window of T seconds a limited client gets at most
        // l * (T + slack) plus two requests (the one that opens the window and the next).
        var over = 0
        for (id, share) in shares {
            guard let limit = share.limit else { continue }
            let amounts = sim.log.filter { $0.client == id }.map {
                (time: $0.time, amount: share.unit == .iops ? $0.cost : Double($0.bytes))
            }
            let biggest = amounts.map(\.amount).max() ?? 0
            for width in [0.1, 1.0] {
                var sum = 0.0, j = 0
                for i in amounts.indices {
                    while j < amounts.count && amounts[j].time <= amounts[i].time + width { sum += amounts[j].amount; j += 1 }
                    if sum > limit * (width + FairSchedulerCore.limitSlack) + 2 * biggest + 1e-6 { over += 1 }
                    sum -= amounts[i].amount
                }
            }
        }
        #expect(over == 0, "\(over) windows above the limit (seed \(seed))")
    }
}
