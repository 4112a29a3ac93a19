// Weighted fair sharing of one swap device between VMs: mClock (Gulati, Merchant, Varman,
// OSDI 2010) with dmClock-style request cost. Pure and deterministic: no clock, no I/O; the
// caller passes `now` (seconds, non-decreasing) and dispatches what `dequeue` returns.
//
// Every client (a VM) has a weight w, and optionally a reservation r and a limit l. The request
// at the head of each client's FIFO carries three tags, each grown from the client's previous one:
//
//   R = R_prev + amount/r   reservation: the time by which r says it is due
//   L = L_prev + amount/l   limit: the earliest time l allows it
//   P = P_prev + cost/w     proportion: its place in the weighted share (virtual time)
//
// `dequeue(now:)` serves, among heads whose L <= now, the smallest R <= now (reservation phase),
// else the smallest P (weight phase). A weight-phase dispatch does not advance the client's R
// chain (mClock's "subtract cost/r from the remaining R tags"), so service above the reservation
// is not counted against it; reservation-phase service does advance P, so a client receives
// max(reservation, weighted share), not their sum.
//
// Where mClock writes max(..., now), this applies it where it means "no credit":
// - A client that becomes backlogged (an idle one returning) starts at the present: L at its
//   arrival, P at `vtime`, R at its arrival or, if reservations are overcommitted and everyone's R
//   lags, at the lagging frontier (so it neither jumps the queue nor starves behind it).
// - A backlogged client's L never starts more than `limitSlack` before its previous dispatch, so
//   time spent waiting behind others is not saved up as a burst above the limit.
// - A backlogged client's R is not clamped: lagging R tags are reservation still owed, and keeping
//   them is what makes overcommitted reservations shrink in proportion. The debt is bounded by
//   `reservationMemory`: beyond it every backlogged R tag moves forward together (order kept).

/// How much device time a request of a given size uses, in units of one reference-size request
/// (a 4 KiB page by default). A request costs its bytes plus a fixed per-request overhead
/// expressed in bytes (the transfer the device could have done in that time), so small requests
/// cost more per byte than large ones. This is Ceph's mClock cost (size + bandwidth/IOPS) scaled
/// so a page costs exactly 1.
public struct CostModel: Sendable, Equatable {
    /// Per-request overhead, in bytes of transfer.
    public let overheadBytes: Double
    /// The size that costs exactly 1.
    public let referenceBytes: Double

    /// Default: 8 KiB of overhead, so a 4 KiB request costs 1 and a 64 KiB one costs 6.
    public init(overheadBytes: Double = 8192, referenceBytes: Double = 4096) {
        precondition(overheadBytes >= 0 && overheadBytes.isFinite, "overhead must be finite and >= 0")
        precondition(referenceBytes > 0 && referenceBytes.isFinite, "reference size must be finite and > 0")
        self.overheadBytes = overheadBytes
        self.referenceBytes = referenceBytes
    }

    /// From the device's measured reference-size IOPS and large-request bandwidth: one request
    /// takes 1/iops seconds, of which referenceBytes/bandwidth is transfer, the rest overhead.
    public init(deviceIOPS: Double, deviceBytesPerSecond: Double, referenceBytes: Double = 4096) {
        precondition(deviceIOPS > 0 && deviceBytesPerSecond > 0, "device rates must be > 0")
        self.init(overheadBytes: max(0, deviceBytesPerSecond / deviceIOPS - referenceBytes),
                  referenceBytes: referenceBytes)
    }

    public static let `default` = CostModel()

    public func cost(bytes: Int) -> Double {
        // A division, not a precomputed reciprocal, so the reference size costs exactly 1.
        (overheadBytes + Double(max(bytes, 0))) / (overheadBytes + referenceBytes)
    }
}

/// One client's entitlement to the device.
public struct IOShare: Sendable, Equatable {
    /// What `reservation` and `limit` count.
    public enum Unit: Sendable, Equatable {
        /// Reference-size (4 KiB-equivalent) requests per second: a request counts as its cost,
        /// so a 64 KiB request uses several I/Os of the allowance (dmClock).
        case iops
        /// Bytes per second: a request counts as its size. (Counted as such rather than
        /// converted to cost at a fixed rate: any fixed bytes-to-cost rate is exact for one
        /// request size only; at the 4 KiB rate a 64 KiB stream would move 2.7x its byte limit.)
        case bytesPerSecond
    }

    /// Relative share of the device beyond reservations (finite, > 0; checked).
    public var weight: Double
    /// Minimum rate, in `unit`, served ahead of any weight (nil or <= 0: none). A reservation
    /// above the limit is capped at the limit.
    public var reservation: Double?
    /// Maximum rate, in `unit` (nil: none; > 0, checked).
    public var limit: Double?
    public var unit: Unit

    public init(weight: Double = 1, reservation: Double? = nil, limit: Double? = nil, unit: Unit = .iops) {
        self.weight = weight
        self.reservation = reservation
        self.limit = limit
        self.unit = unit
    }
}

/// Which rule chose a dispatched request.
public enum IOPhase: Sendable, Equatable {
    /// Its client was behind its reservation.
    case reservation
    /// It had the smallest weighted-share tag among clients within their limits.
    case weight
}

/// The mClock scheduler. `Item` is whatever the dispatcher needs to carry out a request.
///
/// Cost per operation: O(1) enqueue (O(backlogged clients) when a client with a reservation
/// becomes backlogged), O(backlogged clients) dequeue: one pass over a dense array of head tags,
/// which for tens of clients beats maintaining three heaps. Rare events (a share change, forgiving
/// reservation debt, rebasing the proportional clock) are O(clients).
///
/// The tag arithmetic lives in the non-generic `FairSchedulerCore`, which queues integer tokens;
/// this wrapper only parks the items. Unspecialised generic code costs ~10x here (runtime
/// metadata lookups on every call), and callers are in other modules, so the wrapper is
/// `@inlinable` (specialised in the caller) and the core is compiled once, fully optimised.
public struct FairScheduler<Item: Sendable>: Sendable {
    /// A request chosen for dispatch.
    public struct Dispatch: Sendable {
        public let item: Item
        public let client: Int
        public let phase: IOPhase
        /// Its cost under the scheduler's cost model (what the device should be charged).
        public let cost: Double
        public let bytes: Int

        @usableFromInline init(item: Item, client: Int, phase: IOPhase, cost: Double, bytes: Int) {
            self.item = item; self.client = client; self.phase = phase; self.cost = cost; self.bytes = bytes
        }
    }

    @usableFromInline var core: FairSchedulerCore
    /// Queued items by token; tokens are reused, so this stays as large as the most ever queued.
    @usableFromInline var items: [Item?] = []
    @usableFromInline var freeTokens: [Int] = []

    public init(costModel: CostModel = .default) {
        core = FairSchedulerCore(costModel: costModel)
    }

    @inlinable public var costModel: CostModel { core.costModel }
    @inlinable public var queuedCount: Int { core.queuedCount }
    @inlinable public func queued(client id: Int) -> Int { core.queued(client: id) }
    @inlinable public func share(of id: Int) -> IOShare? { core.share(of: id) }

    /// Adds a client, or changes its share if it is already known (so a reconcile loop can
    /// re-add without checking).
    @inlinable public mutating func addClient(_ id: Int, share: IOShare) {
        core.addClient(id, share: share)
    }

    /// Changes a known client's share; false (and nothing changes) if the id is unknown.
    /// Re-sending an equal share is a no-op; a real change restarts the client's tags from the
    /// present (see `FairSchedulerCore.updateClient`).
    @inlinable @discardableResult
    public mutating func updateClient(_ id: Int, share: IOShare) -> Bool {
        core.updateClient(id, share: share)
    }

    /// Forgets a client and returns what it had queued, oldest first.
    @inlinable public mutating func removeClient(_ id: Int) -> [Item] {
        core.removeClient(id).map { take($0) }
    }

    /// Queues a request of `bytes` for `client`, which must have been added.
    @inlinable public mutating func enqueue(_ item: Item, client id: Int, bytes: Int, now: Double) {
        let token: Int
        if let t = freeTokens.popLast() {
            items[t] = item
            token = t
        } else {
            token = items.count
            items.append(item)
        }
        core.enqueue(token: token, client: id, bytes: bytes, now: now)
    }

    /// The next request to dispatch now, or nil: nothing is queued, or every client with work is
    /// held by its limit (then `nextEligibleTime` says when to ask again). `now: .infinity`
    /// drains (to fail what is queued): every request comes out, client by client in FIFO order,
    /// as `.weight`, and no client is charged for it, so the scheduler can be used afterwards.
    @inlinable public mutating func dequeue(now: Double) -> Dispatch? {
        guard let d = core.dequeue(now: now) else { return nil }
        return Dispatch(item: take(d.token), client: d.client, phase: d.phase, cost: d.cost, bytes: d.bytes)
    }

    /// When `dequeue` will next have something: `now` if it has now, the earliest L tag if every
    /// client with work is held by its limit, nil if nothing is queued.
    @inlinable public func nextEligibleTime(now: Double) -> Double? {
        core.nextEligibleTime(now: now)
    }

    @inlinable mutating func take(_ token: Int) -> Item {
        let item = items[token]!
        items[token] = nil  // release it now, not when the token is reused
        freeTokens.append(token)
        return item
    }
}

/// The scheduler's state and tag arithmetic, over request tokens.
@usableFromInline struct FairSchedulerCore: Sendable {
    @usableFromInline struct Dispatch: Sendable {
        @usableFromInline let token: Int
        @usableFromInline let client: Int
        @usableFromInline let phase: IOPhase
        @usableFromInline let cost: Double
        @usableFromInline let bytes: Int
    }

    struct Request: Sendable {
        var token: Int
        var arrival: Double
        var cost: Double
        var bytes: Int
    }

    struct Client: Sendable {
        var id: Int
        var share: IOShare
        /// Effective rates: reservation 0 means none, limit +infinity means none.
        var weight: Double
        var reservation: Double
        var limit: Double
        var countsBytes: Bool
        var queue = FIFO<Request>()
        // The tags of the client's last dispatched request (the chains new tags grow from).
        // -infinity: no history, so the first request is tagged at its arrival.
        var rPrev = -Double.infinity
        var lPrev = -Double.infinity
        var pPrev = -Double.infinity
        /// Index in `heads`, or -1 while the client has nothing queued.
        var activeIndex = -1

        init(id: Int, share: IOShare) {
            self.id = id
            self.share = share
            weight = 1; reservation = 0; limit = .infinity; countsBytes = false
            apply(share)
        }

        mutating func apply(_ share: IOShare) {
            precondition(share.weight > 0 && share.weight.isFinite, "weight must be finite and > 0")
            if let l = share.limit { precondition(l > 0, "limit must be > 0 (nil for none)") }
            self.share = share
            weight = share.weight
            limit = share.limit ?? .infinity
            // A reservation above the limit could never be honoured: the limit wins.
            reservation = min(max(share.reservation ?? 0, 0), limit)
            if !reservation.isFinite { reservation = 0 }
            countsBytes = share.unit == .bytesPerSecond
        }

        @inline(__always) func amount(_ r: Request) -> Double {
            countsBytes ? Double(r.bytes) : r.cost
        }
    }

    /// Tags of one backlogged client's head request, kept dense for the dequeue scan.
    struct Head: Sendable {
        var r: Double   // +infinity without a reservation
        var l: Double
        var p: Double
        var slot: Int
    }

    @usableFromInline let costModel: CostModel
    var clients: [Client] = []
    var slotByID: [Int: Int] = [:]
    var freeSlots: [Int] = []
    var heads: [Head] = []
    /// The proportional-share clock: the largest P tag served in the weight phase. A client that
    /// becomes backlogged starts no earlier than this, so idle time earns no credit (the
    /// virtual-time form of mClock's "idle VM moves to now": P tags are not wall-clock time).
    var vtime: Double = 0
    /// The latest `now` seen, to re-anchor tags when a share changes.
    var clock = -Double.infinity
    @usableFromInline private(set) var queuedCount = 0

    /// P tags grow without bound; past this they are shifted down so cost/weight steps keep
    /// their precision.
    static let rebaseThreshold: Double = 0x1p30
    /// How far a backlogged client's L chain may trail its last dispatch: absorbs a dispatcher
    /// that wakes a little late without letting waiting turn into a burst.
    static let limitSlack: Double = 0.005
    /// The most reservation debt (seconds of R lag) kept when reservations exceed the device.
    static let reservationMemory: Double = 1

    @usableFromInline init(costModel: CostModel) {
        self.costModel = costModel
    }

    // MARK: Clients

    @usableFromInline mutating func addClient(_ id: Int, share: IOShare) {
        if updateClient(id, share: share) { return }
        let client = Client(id: id, share: share)
        if let slot = freeSlots.popLast() {
            clients[slot] = client
            slotByID[id] = slot
        } else {
            slotByID[id] = clients.count
            clients.append(client)
        }
    }

    /// A real change restarts the client's tags from the present: old R/L chains would otherwise
    /// grant credit (or debt) earned under other rates, and a P tag far ahead (service from a
    /// reservation since dropped) would starve it.
    @usableFromInline mutating func updateClient(_ id: Int, share: IOShare) -> Bool {
        guard let slot = slotByID[id] else { return false }
        if clients[slot].share == share { return true }
        clients[slot].apply(share)
        if clock.isFinite {
            clients[slot].rPrev = max(clients[slot].rPrev, clock)
            clients[slot].lPrev = max(clients[slot].lPrev, clock)
        }
        clients[slot].pPrev = vtime
        let i = clients[slot].activeIndex
        if i >= 0 { heads[i] = head(of: slot, now: clock, activating: false) }
        return true
    }

    /// Forgets a client; returns the tokens it had queued, oldest first.
    @usableFromInline mutating func removeClient(_ id: Int) -> [Int] {
        guard let slot = slotByID.removeValue(forKey: id) else { return [] }
        let i = clients[slot].activeIndex
        if i >= 0 { deactivate(at: i) }
        let tokens = clients[slot].queue.drain().map(\.token)
        queuedCount -= tokens.count
        clients[slot] = Client(id: -1, share: IOShare())
        freeSlots.append(slot)
        return tokens
    }

    @usableFromInline func queued(client id: Int) -> Int {
        guard let slot = slotByID[id] else { return 0 }
        return clients[slot].queue.count
    }

    @usableFromInline func share(of id: Int) -> IOShare? {
        slotByID[id].map { clients[$0].share }
    }

    // MARK: Requests

    @usableFromInline mutating func enqueue(token: Int, client id: Int, bytes: Int, now: Double) {
        guard let slot = slotByID[id] else { preconditionFailure("enqueue for unknown client \(id)") }
        clock = max(clock, now)
        clients[slot].queue.append(Request(token: token, arrival: now, cost: costModel.cost(bytes: bytes), bytes: bytes))
        queuedCount += 1
        if clients[slot].activeIndex < 0 {
            clients[slot].activeIndex = heads.count
            heads.append(head(of: slot, now: now, activating: true))
        }
    }

    @usableFromInline mutating func dequeue(now: Double) -> Dispatch? {
        // A drain must not move the clock or the tags: at infinity every client would be held by
        // its L tag forever, and charging drained requests would hold it back for their cost.
        guard now.isFinite else { return heads.isEmpty ? nil : dispatch(at: 0, phase: .weight, now: clock, charging: false) }
        clock = max(clock, now)
        var bestR = -1, minR = Double.infinity
        var bestP = -1, minP = Double.infinity
        heads.withUnsafeBufferPointer { hs in
            for i in hs.indices {
                let h = hs[i]
                // The limit binds in both phases (a reservation is capped at the limit, so this
                // never costs a reservation), which makes "never before its L tag" exact.
                guard h.l <= now else { continue }
                if h.r < minR { minR = h.r; bestR = i }
                if h.p < minP { minP = h.p; bestP = i }
            }
        }
        if bestR >= 0 && minR <= now { return dispatch(at: bestR, phase: .reservation, now: now) }
        if bestP >= 0 { return dispatch(at: bestP, phase: .weight, now: now) }
        return nil
    }

    @usableFromInline func nextEligibleTime(now: Double) -> Double? {
        if heads.isEmpty { return nil }
        var t = Double.infinity
        for h in heads {
            if h.l <= now { return now }
            t = min(t, h.l)
        }
        return t
    }

    // MARK: Tags

    /// Tags for the head of a client's queue, at `now`: its arrival if it has just made the client
    /// backlogged (`activating`), else the dispatch of its predecessor.
    func head(of slot: Int, now: Double, activating: Bool) -> Head {
        let req = clients[slot].queue.first
        let amount = clients[slot].amount(req)
        let reservation = clients[slot].reservation
        var r = Double.infinity
        if reservation > 0 {
            r = clients[slot].rPrev + amount / reservation
            if activating { r = max(r, min(now, minimumR())) }
        }
        // amount/infinity = 0: an unlimited client is always due.
        let l = max(clients[slot].lPrev + amount / clients[slot].limit, activating ? now : now - Self.limitSlack)
        var p = clients[slot].pPrev + req.cost / clients[slot].weight
        if activating { p = max(p, vtime) }
        return Head(r: r, l: l, p: p, slot: slot)
    }

    /// The reservation frontier: the smallest R tag among backlogged clients.
    func minimumR() -> Double {
        var m = Double.infinity
        for h in heads where h.r < m { m = h.r }
        return m
    }

    mutating func dispatch(at i: Int, phase: IOPhase, now: Double, charging: Bool = true) -> Dispatch {
        let h = heads[i]
        let slot = h.slot
        let req = clients[slot].queue.removeFirst()
        queuedCount -= 1
        if charging { charge(slot, h, req, phase: phase, now: now) }
        if clients[slot].queue.isEmpty {
            deactivate(at: i)
        } else {
            heads[i] = head(of: slot, now: now, activating: false)
        }
        return Dispatch(token: req.token, client: clients[slot].id, phase: phase, cost: req.cost, bytes: req.bytes)
    }

    /// Advances the client's tag chains past a dispatched request.
    mutating func charge(_ slot: Int, _ h: Head, _ req: Request, phase: IOPhase, now: Double) {
        clients[slot].lPrev = h.l
        clients[slot].pPrev = h.p
        let reservation = clients[slot].reservation
        if reservation > 0 {
            // Weight-phase service leaves the reservation chain where it was.
            clients[slot].rPrev = phase == .reservation ? h.r : h.r - clients[slot].amount(req) / reservation
            if phase == .reservation && now - h.r > Self.reservationMemory {
                forgiveReservationDebt(by: now - Self.reservationMemory - h.r)
            }
        }
        if phase == .weight && h.p > vtime {
            vtime = h.p
            if vtime > Self.rebaseThreshold { rebase() }
        }
    }

    mutating func deactivate(at i: Int) {
        clients[heads[i].slot].activeIndex = -1
        let last = heads.count - 1
        if i != last {
            heads[i] = heads[last]
            clients[heads[i].slot].activeIndex = i
        }
        heads.removeLast()
    }

    /// Moves every backlogged client's R chain forward by `shift` seconds: the same for all, so
    /// overcommitted reservations keep their proportions, but the backlog of owed service that a
    /// long overload would build (and repay by starving weight-only clients) stays bounded.
    mutating func forgiveReservationDebt(by shift: Double) {
        for i in heads.indices where heads[i].r.isFinite {
            heads[i].r += shift
            clients[heads[i].slot].rPrev += shift
        }
    }

    /// Shifts every P tag down by `vtime` (order-preserving) to keep them small.
    mutating func rebase() {
        let shift = vtime
        for s in clients.indices { clients[s].pPrev -= shift }
        for i in heads.indices { heads[i].p -= shift }
        vtime = 0
    }
}

/// A FIFO over an array with a moving start: amortised O(1), contiguous, no per-element nodes.
struct FIFO<Element: Sendable>: Sendable {
    private var storage: [Element] = []
    private var start = 0

    var count: Int { storage.count - start }
    var isEmpty: Bool { start == storage.count }

    /// The oldest element; the queue must not be empty.
    var first: Element { storage[start] }

    mutating func append(_ e: Element) { storage.append(e) }

    mutating func removeFirst() -> Element {
        let e = storage[start]
        start += 1
        if start == storage.count {
            storage.removeAll(keepingCapacity: true)
            start = 0
        } else if start >= 256 && start * 2 >= storage.count {
            storage.removeFirst(start)
            start = 0
        }
        return e
    }

    mutating func drain() -> [Element] {
        let out = Array(storage[start...])
        storage.removeAll()
        start = 0
        return out
    }
}
