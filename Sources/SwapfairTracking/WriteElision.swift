import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Write elision for double paging: a guest swap-out of a page whose bytes the host's swap already
/// holds is not written again; the guest's block refers to the host's physical block instead
/// (`SharedBlockMap`), which stays put until every reference is gone.
///
/// A match is exact: every page the host reads back from its swap or writes to it is copied into
/// a fixed ring of recent pages (`cachePages`, reserved and locked up front, so serving swap never
/// needs memory), and a guest page is elided only when its bytes equal the copy of a block whose
/// content has not changed since (any host write to the block drops its copy first). A digest
/// picks the candidate; it is never trusted alone.
///
/// A copy matches for as long as it is in the ring, however long ago the host read or wrote it:
/// the tracker's window defines a double-paging event (a host read that fed the swap-out), but
/// eliding a write only needs the bytes to be in the host's block. That matters for the frames
/// the host keeps in its swap cache with their slot: one that swap readahead brought back seconds
/// earlier, or one the host has just written out, reaches the guest's swap-out with no host read
/// at all. With a 2 s window on elision, every redundant write a long lab run missed (11.7% of
/// them) was such a frame.
public final class WriteElision: @unchecked Sendable {
    public static let pageSize = PageDigest.pageSize
    public let cachePages: Int
    /// The host swap volume, for guest reads of shared blocks.
    let hostFD: Int32
    /// The copies, `cachePages` pages.
    private let copies: UnsafeMutableRawPointer

    struct Cached {
        var physical: Int32 = -1
        var digest: UInt64 = 0
        /// Kept from a host write (else from a host read).
        var written = false
    }

    struct State {
        var map: SharedBlockMap
        var ring: [Cached]
        var next = 0
        var byDigest: [UInt64: Int]
        var byPhysical: [Int32: Int]
        var counters: [String: Counters] = [:]
        var redirects: UInt64 = 0
        /// Host writes of pages a block already held (re-swaps of unchanged pages), not written.
        var hostElidedBytes: UInt64 = 0
    }

    /// What elision did for one VM.
    public struct Counters: Sendable, Equatable {
        /// Guest swap-out bytes recorded as references instead of written.
        public var elidedBytes: UInt64 = 0
        /// Guest swap-in bytes served from the host's blocks.
        public var sharedReadBytes: UInt64 = 0
    }

    private let state: Mutex<State>

    public init(map: SharedBlockMap, hostFD: Int32, cachePages: Int = 8192) {
        self.cachePages = max(1, cachePages)
        self.hostFD = hostFD
        var raw: UnsafeMutableRawPointer?
        guard posix_memalign(&raw, 4096, self.cachePages * Self.pageSize) == 0, let raw else {
            fatalError("cannot reserve \(self.cachePages) pages for write elision")
        }
        mlock(raw, self.cachePages * Self.pageSize)
        copies = raw
        var byDigest: [UInt64: Int] = [:], byPhysical: [Int32: Int] = [:]
        byDigest.reserveCapacity(self.cachePages)
        byPhysical.reserveCapacity(self.cachePages)
        // Every VM's counters exist from the start: nothing is inserted while the lock is held.
        let counters = Dictionary(uniqueKeysWithValues: map.guests.keys.map { ($0, Counters()) })
        state = Mutex(State(map: map, ring: Array(repeating: Cached(), count: self.cachePages),
                            byDigest: byDigest, byPhysical: byPhysical, counters: counters))
    }

    deinit { free(copies) }

    // MARK: the host's side (its swap device's queue)

    /// A run of pages of one host request that lie in consecutive physical blocks.
    public struct Run: Sendable, Equatable {
        public var slot: Int
        public var physical: Int
        public var pages: Int
        /// Page index of the run's first page in the request's buffer.
        public var first: Int
        public init(slot: Int, physical: Int, pages: Int, first: Int) {
            self.slot = slot
            self.physical = physical
            self.pages = pages
            self.first = first
        }
    }

    /// Where the host's request for `pages` slots from `slot` goes, as runs written into `runs`
    /// (room for `pages`; the swap queue's own, so nothing is allocated per request); returns how
    /// many. For a write, `bytes` is what it writes and `digests` scratch of room for `pages`. A
    /// written page whose bytes a copy holds is a re-swap of an unchanged page: the slot then
    /// refers to the copy's block (or, if that is its own block, stays as it is), and the page
    /// gets no run. For the other pages the blocks' old copies are dropped first and shared blocks
    /// are redirected to spares; the runs must then be given to `hostWrote`. A write whose block
    /// cannot be chosen (tables that failed their rebuild) returns -1 with nothing taken: it must
    /// fail.
    public func hostRuns(slot: Int, pages: Int, write: Bool, bytes: UnsafeRawBufferPointer? = nil,
                         digests: UnsafeMutableBufferPointer<UInt64>? = nil,
                         into runs: UnsafeMutableBufferPointer<Run>) -> Int {
        precondition(runs.count >= pages)
        // Digests outside the lock (0: a page of zeros, or no bytes given).
        let bytes = write ? bytes : nil
        if let bytes, let digests {
            precondition(digests.count >= pages && bytes.count >= pages * Self.pageSize)
            for i in 0..<pages {
                digests[i] = PageDigest.of(UnsafeRawBufferPointer(rebasing: bytes[(i * Self.pageSize)..<((i + 1) * Self.pageSize)])) ?? 0
            }
        }
        return state.withLock { s in
            var n = 0, elided = 0
            for i in 0..<pages {
                let slotI = slot + i
                let p: Int
                if write {
                    if let bytes, let base = bytes.baseAddress, let digests, digests[i] != 0,
                       let k = s.byDigest[digests[i]], s.ring[k].physical >= 0,
                       memcmp(copies + k * Self.pageSize, base + i * Self.pageSize, Self.pageSize) == 0 {
                        let held = Int(s.ring[k].physical)
                        if held == s.map.physical(ofSlot: slotI) {
                            s.map.release(vm: SharedBlockMap.hostReferences, block: slotI)
                            elided += 1
                            continue
                        }
                        if s.map.refer(vm: SharedBlockMap.hostReferences, block: slotI, to: held) {
                            elided += 1
                            continue
                        }
                    }
                    forget(&s, physical: s.map.physical(ofSlot: slotI))
                    guard let target = s.map.writeTarget(slot: slotI) else {
                        // Give back the spares taken for the pages before this one.
                        for r in runs[0..<n] {
                            for k in 0..<r.pages { s.map.abandonWrite(slot: r.slot + k, target: r.physical + k) }
                        }
                        return -1
                    }
                    p = target
                    forget(&s, physical: p)
                } else {
                    p = s.map.reference(vm: SharedBlockMap.hostReferences, block: slotI) ?? s.map.physical(ofSlot: slotI)
                }
                if n > 0, runs[n - 1].physical + runs[n - 1].pages == p, runs[n - 1].first + runs[n - 1].pages == i {
                    runs[n - 1].pages += 1
                } else {
                    runs[n] = Run(slot: slotI, physical: p, pages: 1, first: i)
                    n += 1
                }
            }
            s.hostElidedBytes &+= UInt64(elided * Self.pageSize)
            return n
        }
    }

    /// The host discarded `pages` slots from `slot`: what they held is unspecified from now on,
    /// so slots that refer to other blocks let go of them.
    public func hostDiscarded(slot: Int, pages: Int) {
        var b = slot
        while b < slot + pages {
            let end = min(slot + pages, b + 4096)
            let more = state.withLock { s -> Bool in
                guard s.map.holdsReferences(SharedBlockMap.hostReferences) else { return false }
                for i in b..<end where i < s.map.hostSlots { s.map.release(vm: SharedBlockMap.hostReferences, block: i) }
                return true
            }
            if !more { return }
            b = end
        }
    }

    /// The host's write of `runs` (from `buffer`, the request's pages) completed (`ok`) or failed.
    /// What it wrote is kept: the host may still hold the frame in its swap cache, and the
    /// guest's swap-out of it then comes with no host read. `digests`: those `hostRuns` made of
    /// the same request, if it was given scratch.
    public func hostWrote(_ runs: UnsafeMutableBufferPointer<Run>.SubSequence, ok: Bool, _ buffer: UnsafeRawBufferPointer,
                          digests: UnsafeMutableBufferPointer<UInt64>? = nil) {
        state.withLock { s in
            for r in runs {
                for i in 0..<r.pages {
                    if ok {
                        if r.physical + i != s.map.physical(ofSlot: r.slot + i) { s.redirects += 1 }
                        s.map.commitWrite(slot: r.slot + i, target: r.physical + i)
                        // The slot holds its own content again (after the write, so that a death
                        // before it leaves the slot as it was).
                        s.map.release(vm: SharedBlockMap.hostReferences, block: r.slot + i)
                    } else {
                        s.map.abandonWrite(slot: r.slot + i, target: r.physical + i)
                    }
                }
            }
            if ok { keep(&s, runs, buffer, digests: digests, written: true) }
        }
    }

    /// The host read `buffer` (the request's pages) from `runs`: keep copies. `digests`: the
    /// request's pages' (`PageDigest.fill`), if already made.
    public func hostRead(_ runs: UnsafeMutableBufferPointer<Run>.SubSequence, _ buffer: UnsafeRawBufferPointer,
                         digests: UnsafeMutableBufferPointer<UInt64>? = nil) {
        state.withLock { s in keep(&s, runs, buffer, digests: digests, written: false) }
    }

    private func keep(_ s: inout State, _ runs: UnsafeMutableBufferPointer<Run>.SubSequence, _ buffer: UnsafeRawBufferPointer,
                      digests: UnsafeMutableBufferPointer<UInt64>?, written: Bool) {
        for r in runs {
            for i in 0..<r.pages {
                let page = UnsafeRawBufferPointer(rebasing: buffer[((r.first + i) * Self.pageSize)..<((r.first + i + 1) * Self.pageSize)])
                // Zero pages are not kept (0 in the scratch: a page of zeros).
                let d: UInt64
                if let digests {
                    guard digests[r.first + i] != 0 else { continue }
                    d = digests[r.first + i]
                } else {
                    guard let x = PageDigest.of(page) else { continue }
                    d = x
                }
                let p = Int32(r.physical + i)
                forget(&s, physical: Int(p))
                let k = s.next
                s.next = (s.next + 1) % cachePages
                let old = s.ring[k]
                if old.physical >= 0 {
                    if s.byPhysical[old.physical] == k { s.byPhysical[old.physical] = nil }
                    if s.byDigest[old.digest] == k { s.byDigest[old.digest] = nil }
                }
                guard let from = page.baseAddress else { continue }
                (copies + k * Self.pageSize).copyMemory(from: from, byteCount: Self.pageSize)
                s.ring[k] = Cached(physical: p, digest: d, written: written)
                s.byPhysical[p] = k
                s.byDigest[d] = k
            }
        }
    }

    private func forget(_ s: inout State, physical p: Int) {
        guard let k = s.byPhysical.removeValue(forKey: Int32(p)) else { return }
        if s.byDigest[s.ring[k].digest] == k { s.byDigest[s.ring[k].digest] = nil }
        s.ring[k].physical = -1
    }

    // MARK: the guests' side (their swap devices)

    /// VM `vm` writes `bytes` at `offset` (4 KiB aligned). Each page found among the host's recent
    /// reads and writes becomes a reference and needs no writing; the others must be written (and
    /// their blocks released once written, see `guestOverwrote`). `elided` is told each elided
    /// page's index and whether its copy came from a host write (else from a host read).
    /// `digests`: the pages' (`PageDigest.fill`), if already made.
    public func guestWrite(vm: String, offset: UInt64, _ bytes: UnsafeRawBufferPointer, digests given: UnsafeBufferPointer<UInt64>? = nil,
                           elided report: ((Int, Bool) -> Void)? = nil) -> ElisionResult {
        let pages = bytes.count / Self.pageSize
        guard pages > 0, offset % UInt64(Self.pageSize) == 0, bytes.count % Self.pageSize == 0,
              let base = bytes.baseAddress else { return .none }
        // Digests outside the lock: they are the costly part.
        var digests: [UInt64?] = []
        digests.reserveCapacity(pages)
        for i in 0..<pages { digests.append(PageDigest.digest(bytes, page: i, given)) }
        guard digests.contains(where: { $0 != nil }) else { return .none }
        let first = Int(offset / UInt64(Self.pageSize))
        var elided = [Bool](repeating: false, count: pages), fromWrite = elided
        let count = state.withLock { s -> Int in
            var n = 0
            for i in 0..<pages {
                guard let d = digests[i], let k = s.byDigest[d], s.ring[k].physical >= 0,
                      memcmp(copies + k * Self.pageSize, base + i * Self.pageSize, Self.pageSize) == 0,
                      s.map.refer(vm: vm, block: first + i, to: Int(s.ring[k].physical))
                else { continue }
                elided[i] = true
                fromWrite[i] = s.ring[k].written
                n += 1
            }
            s.counters[vm]?.elidedBytes &+= UInt64(n * Self.pageSize)
            return n
        }
        if count == 0 { return .none }
        if let report { for i in 0..<pages where elided[i] { report(i, fromWrite[i]) } }
        return count == pages ? .all : .pages(elided)
    }

    /// VM `vm`'s blocks in `offset..<offset+length` hold their own content again (a write, trim
    /// or zeroing of them completed).
    public func guestOverwrote(vm: String, offset: UInt64, length: Int) {
        let first = Int(offset / UInt64(Self.pageSize)), pages = (length + Self.pageSize - 1) / Self.pageSize
        // In chunks, so that a trim of gigabytes does not hold up the host's swap for long.
        var b = first
        while b < first + pages {
            let end = min(first + pages, b + 4096)
            let more = state.withLock { s -> Bool in
                guard s.map.holdsReferences(vm) else { return false }
                for block in b..<end { s.map.release(vm: vm, block: block) }
                return true
            }
            if !more { return }
            b = end
        }
    }

    /// Whether any of VM `vm`'s blocks in the range is a reference.
    public func guestReadsShared(vm: String, offset: UInt64, length: Int) -> Bool {
        let first = Int(offset / UInt64(Self.pageSize)), pages = (length + Self.pageSize - 1) / Self.pageSize
        return state.withLock { s in
            s.map.holdsReferences(vm) && (first..<(first + pages)).contains { s.map.reference(vm: vm, block: $0) != nil }
        }
    }

    /// Reads VM `vm`'s `length` bytes at `offset` into `buffer` (aligned for direct I/O) when any
    /// of those blocks is shared: its own blocks from `ownFD`, shared ones from the host's volume.
    /// Returns nil when none is shared (the caller reads as usual), else bytes read or -errno.
    public func guestRead(vm: String, offset: UInt64, length: Int, ownFD: Int32, into buffer: UnsafeMutableRawPointer) -> Int32? {
        guard offset % UInt64(Self.pageSize) == 0, length % Self.pageSize == 0 else { return nil }
        let first = Int(offset / UInt64(Self.pageSize)), pages = length / Self.pageSize
        // -1: the guest's own block; else the host block, pinned until it has been read (the
        // reference may go meanwhile, and its block must not be reused under this read).
        var plan = [Int](repeating: -1, count: pages)
        let any = state.withLock { s -> Bool in
            guard s.map.holdsReferences(vm) else { return false }
            var shared = 0
            for i in 0..<pages {
                if let p = s.map.reference(vm: vm, block: first + i), s.map.pin(p) {
                    plan[i] = p
                    shared += 1
                }
            }
            s.counters[vm]?.sharedReadBytes &+= UInt64(shared * Self.pageSize)
            return shared > 0
        }
        guard any else { return nil }
        defer { state.withLock { s in for p in plan where p >= 0 { s.map.unpin(p) } } }
        for (i, p) in plan.enumerated() {
            let (fd, at) = p >= 0 ? (hostFD, off_t(p) * off_t(Self.pageSize)) : (ownFD, off_t(offset) + off_t(i * Self.pageSize))
            var done = 0
            while done < Self.pageSize {
                let n = pread(fd, buffer + i * Self.pageSize + done, Self.pageSize - done, at + off_t(done))
                if n < 0 && errno == EINTR { continue }
                if n < 0 { return -errno }
                if n == 0 {
                    (buffer + i * Self.pageSize + done).initializeMemory(as: UInt8.self, repeating: 0, count: Self.pageSize - done)
                    break
                }
                done += n
            }
        }
        return Int32(length)
    }

    // MARK: accounting

    public struct Summary: Sendable, Equatable {
        public var sharedBlocks: Int
        public var spareBlocks: Int
        public var promised: Int
        public var redirects: UInt64
        /// Host swap-out bytes that were re-swaps of unchanged pages, recorded as references.
        public var hostElidedBytes: UInt64
        /// Host slots that refer to another slot's block now.
        public var hostReferences: Int
        public var problems: [String]
        public var consistent: Bool
    }

    /// The shared-block accounting, checked against a rebuild from the tables when `check`.
    public func summary(check: Bool = false) -> Summary {
        state.withLock { s in
            Summary(sharedBlocks: s.map.sharedBlocks, spareBlocks: s.map.spareBlocks, promised: s.map.promised,
                    redirects: s.redirects, hostElidedBytes: s.hostElidedBytes,
                    hostReferences: s.map.referencesHeld(SharedBlockMap.hostReferences), problems: s.map.problems, consistent: check ? s.map.agreesWithTables() : true)
        }
    }

    public func counters() -> [String: Counters] { state.withLock { $0.counters } }
}

/// What write elision made of a guest write.
public enum ElisionResult: Sendable, Equatable {
    /// Every page must be written.
    case none
    /// Every page is now a reference: nothing to write.
    case all
    /// The pages marked true are references; the others must be written.
    case pages([Bool])
}
