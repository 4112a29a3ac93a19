import Synchronization

/// A 64-bit digest of a 4 KiB page's content, or nil for a page of zeros (zero pages are alike in
/// every VM and tell nothing about where a page came from).
public enum PageDigest {
    public static let pageSize = 4096

    public static func of(_ page: UnsafeRawBufferPointer) -> UInt64? {
        precondition(page.count == pageSize)
        var h: UInt64 = 0x9E37_79B9_7F4A_7C15
        var any: UInt64 = 0
        for i in 0..<(pageSize / 8) {
            let w = page.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self)
            any |= w
            h = (h ^ w) &* 0xFF51_AFD7_ED55_8CCD
            h ^= h >> 29
        }
        return any == 0 ? nil : h
    }

    /// Each page's digest into `digests` (0 for a page of zeros): made once for a request whose
    /// pages both the tracker and write elision look up.
    public static func fill(_ bytes: UnsafeRawBufferPointer, into digests: UnsafeMutableBufferPointer<UInt64>) {
        let pages = bytes.count / pageSize
        precondition(digests.count >= pages)
        for i in 0..<pages { digests[i] = of(UnsafeRawBufferPointer(rebasing: bytes[(i * pageSize)..<((i + 1) * pageSize)])) ?? 0 }
    }

    /// Page `i`'s digest: from `digests` if given (0: zeros, none), else computed.
    static func digest(_ bytes: UnsafeRawBufferPointer, page i: Int, _ digests: UnsafeBufferPointer<UInt64>?) -> UInt64? {
        if let digests { return digests[i] == 0 ? nil : digests[i] }
        return of(UnsafeRawBufferPointer(rebasing: bytes[(i * pageSize)..<((i + 1) * pageSize)]))
    }
}

/// What the tracker counted for one VM.
public struct DoublePagingCounters: Sendable, Equatable, Codable {
    /// Guest swap-outs (4 KiB blocks written to the VM's swap device) of content that the host had
    /// just read back from its own swap: double paging.
    public var events: UInt64 = 0
    /// Host swap-in bytes that only fed such a guest swap-out.
    public var redundantReadBytes: UInt64 = 0
    /// Guest swap-out bytes of content the host's swap already held (what write elision saves).
    public var redundantWriteBytes: UInt64 = 0
    /// All guest swap-out bytes seen.
    public var guestSwapOutBytes: UInt64 = 0
    public init() {}
}

/// Detects double paging from both sides of the I/O: the host's swap device (served by swapfaird
/// over ublk) reports every page the host swaps in; each VM's swap device (its NBD export) reports
/// every page its guest swaps out. A guest swap-out whose content the host read back from its
/// swap within `window` seconds is a double-paging event of that VM: the host swapped the page
/// out, the guest then chose the same page, and the host had to read it back only for it to be
/// written out again. One host swap-in feeds at most one event. The window (10 s by default) has
/// to cover swap readahead: a page the host brought back with a neighbour's fault sits in its swap
/// cache until the guest reads it to write it out, which in the lab came many seconds later (the
/// tracker missed, of the swapped pages the guest wrote out, 6-7% at 0.5 s, 1-7% at 2 s and 0.1%
/// at 10 s, all of them such pages, with no false detection at any of them). It stays short
/// against the guest's own turnover: a page the host read back because the guest used it, and
/// that the guest's replacement evicted much later, is not double paging.
///
/// The table of recent swap-ins has a fixed capacity, reserved up front: it is filled from the
/// host swap device's queue, which must never need memory to make progress. When it is full the
/// oldest entries go first; nothing grows.
public final class DoublePagingTracker: Sendable {
    public let window: Double
    public let capacity: Int

    struct State {
        /// Digest → time of the latest host swap-in of that content.
        var recent: [UInt64: Double]
        /// The same entries in arrival order, for expiry: a ring of `capacity`.
        var order: [(time: Double, digest: UInt64)]
        var head = 0, count = 0
        var perVM: [String: DoublePagingCounters] = [:]
        var hostSwapInBytes: UInt64 = 0
        var hostSwapOutBytes: UInt64 = 0
    }

    private let state: Mutex<State>

    public init(window: Double = 10, capacity: Int = 1 << 16) {
        self.window = window
        self.capacity = max(1, capacity)
        var recent: [UInt64: Double] = [:]
        recent.reserveCapacity(self.capacity)
        state = Mutex(State(recent: recent, order: Array(repeating: (0, 0), count: self.capacity)))
    }

    /// The host wrote `buffer` (whole pages) to its swap.
    public func hostSwappedOut(bytes: Int) {
        state.withLock { $0.hostSwapOutBytes &+= UInt64(bytes) }
    }

    /// The host read `buffer` (whole pages) back from its swap at `now` (seconds, any monotonic
    /// clock). `digests`: its pages' (`PageDigest.fill`), if already made.
    public func hostSwappedIn(_ buffer: UnsafeRawBufferPointer, digests: UnsafeBufferPointer<UInt64>? = nil, now: Double) {
        let pages = buffer.count / PageDigest.pageSize
        state.withLock { s in
            s.hostSwapInBytes &+= UInt64(buffer.count)
            expire(&s, now: now)
            for p in 0..<pages {
                guard let d = PageDigest.digest(buffer, page: p, digests) else { continue }
                if s.count == capacity { dropOldest(&s) }
                s.order[(s.head + s.count) % capacity] = (now, d)
                s.count += 1
                s.recent[d] = now
            }
        }
    }

    /// VM `vm`'s guest wrote `buffer` (whole pages) to its swap device at `now`. Returns the number
    /// of double-paging events among them; `event` is told the index of each such page.
    /// `digests`: its pages' (`PageDigest.fill`), if already made.
    @discardableResult
    public func guestSwappedOut(vm: String, _ buffer: UnsafeRawBufferPointer, digests: UnsafeBufferPointer<UInt64>? = nil,
                                now: Double, event: ((Int) -> Void)? = nil) -> Int {
        let pages = buffer.count / PageDigest.pageSize
        var found: [Int] = []
        state.withLock { s in
            expire(&s, now: now)
            var c = s.perVM[vm] ?? DoublePagingCounters()
            c.guestSwapOutBytes &+= UInt64(buffer.count)
            for p in 0..<pages {
                guard let d = PageDigest.digest(buffer, page: p, digests), let t = s.recent[d], now - t <= window else { continue }
                s.recent[d] = nil  // consumed: that swap-in has fed its one swap-out
                c.events += 1
                c.redundantReadBytes &+= UInt64(PageDigest.pageSize)
                c.redundantWriteBytes &+= UInt64(PageDigest.pageSize)
                found.append(p)
            }
            s.perVM[vm] = c
        }
        if let event { found.forEach(event) }
        return found.count
    }

    public func counters() -> [String: DoublePagingCounters] { state.withLock { $0.perVM } }
    public func hostBytes() -> (swapIn: UInt64, swapOut: UInt64) { state.withLock { ($0.hostSwapInBytes, $0.hostSwapOutBytes) } }

    private func expire(_ s: inout State, now: Double) {
        while s.count > 0 && now - s.order[s.head].time > window { dropOldest(&s) }
    }

    private func dropOldest(_ s: inout State) {
        let (t, d) = s.order[s.head]
        if s.recent[d] == t { s.recent[d] = nil }
        s.head = (s.head + 1) % capacity
        s.count -= 1
    }
}
