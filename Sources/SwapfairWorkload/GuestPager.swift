import Dispatch
import Synchronization

/// Where a guest pager keeps the pages it swaps out: its swap disk, of 4 KiB blocks (swap slots).
public protocol GuestSwapDisk {
    func write(block: Int, from page: UnsafeRawBufferPointer) throws
    func read(block: Int, into page: UnsafeMutableRawBufferPointer) throws
    /// Several pages at once, in any order or all together (a guest kernel's batch of swap writes
    /// is in flight at once, and pages bound for neighbouring blocks merge into one request);
    /// returns when all are written.
    func write(batch: [(block: Int, page: UnsafeRawBufferPointer)]) throws
}

extension GuestSwapDisk {
    public func write(batch: [(block: Int, page: UnsafeRawBufferPointer)]) throws {
        for (block, page) in batch { try write(block: block, from: page) }
    }
}

/// What a guest pager counts. "Host-swapped" is the ground truth of double paging: the frame was
/// not in the host's RAM at the moment the guest used it, so the host had to read it back first.
public struct GuestPagerCounters: Sendable, Equatable {
    public var accesses: UInt64 = 0
    /// Accesses to pages that were not in a frame (guest page faults).
    public var guestFaults: UInt64 = 0
    /// Pages written to the guest's swap disk to free their frame.
    public var swapOuts: UInt64 = 0
    /// Pages read back from the guest's swap disk.
    public var swapIns: UInt64 = 0
    /// Clean pages dropped from their frame without a write (the disk already held them).
    public var drops: UInt64 = 0
    /// Swap-outs of a frame the host had swapped out: double paging (the host reads the page back
    /// only for the guest to write it to its own disk).
    public var doublePaged: UInt64 = 0
    /// Swap-ins into a frame the host had swapped out: the host reads back a frame whose content
    /// the guest is about to overwrite whole (a "false swap read").
    public var falseReads: UInt64 = 0
    /// Pages whose content did not match what was last written to them when read back.
    public var corrupt: UInt64 = 0
    /// Faults that found no frame free and waited for reclaim (the background writer's batch or
    /// their own): a guest's direct reclaim.
    public var directReclaims: UInt64 = 0
    public init() {}
}

/// A guest's memory management in miniature, over a real mapping: `frameCount` 4 KiB frames of
/// "guest RAM" hold `pageCount` guest pages; when a page that is not in a frame is accessed, the
/// pager frees frames by the clock algorithm (second chance, a page's fault not counting as its
/// use), `reclaimBatch` at a time as a guest kernel's reclaim does, writes the victims whose disk
/// copy is not current to its swap disk together, and reads the page in (or fills a new one). As
/// a Linux guest does, it gives each page it writes out a swap slot from `SwapSlots` (a batch gets
/// neighbouring slots, written as few requests), keeps a page's slot while the page is clean in its
/// frame (dropping it again costs no write), and frees the slot when the page is written to, or
/// as it is read back once more than half the slots are in use. With
/// `reclaimAhead` frames to keep free, reclaim runs ahead of the faults as a guest's kswapd does: a
/// batch of victims is written by a background writer while the guest goes on, and a fault waits
/// only when no frame is free at all (direct reclaim). Freed frames are reused and overwritten, as
/// a guest's are. The host sees only the frames: when the host's memory
/// limit is below them, the host swaps frames too, and the pager records, for every swap-out and
/// swap-in, whether the frame was host-resident at that moment (`hostResident`, e.g. `mincore`).
///
/// Every page's content is a function of its number and version (bumped on each write access), so
/// each swap-in is checked against what was last written.
public final class GuestPager {
    public static let pageSize = 4096
    public let frameCount: Int
    public let pageCount: Int
    public private(set) var counters = GuestPagerCounters()
    /// Called once per written swap-out: the block (its swap slot), whether its frame was host-swapped (not
    /// resident), and whether its page-table entry was a swap entry (`hostSwapEntry`; nil when
    /// that is not known). The two differ for a frame the host read back by swap readahead: it is
    /// resident, in the swap cache, but the host did read it from its swap.
    public var onSwapOut: ((Int, Bool, Bool?) -> Void)?
    /// Whether the frame's page-table entry is a swap entry (e.g. `/proc/self/pagemap` bit 62).
    public var hostSwapEntry: ((UnsafeRawPointer) -> Bool?)?

    let ram: UnsafeMutableRawPointer
    let disk: any GuestSwapDisk
    let hostResident: (UnsafeRawPointer) -> Bool
    let seed: UInt64
    /// Page → frame, or -1.
    var frameOfPage: [Int32]
    /// Frame → page, or -1 while free.
    var pageOfFrame: [Int32]
    var referenced: [Bool]
    /// The frame holds a version of its page that its disk block does not.
    var dirty: [Bool]
    /// Page → its swap slot (the disk block holding a copy), or -1.
    var slotOfPage: [Int32]
    public private(set) var slots: SwapSlots
    var version: [UInt32]
    var hand = 0
    /// Frames below this have been used; the rest are handed out before the clock runs.
    var neverUsed = 0
    /// Empty frames (given back by the balloon), handed out before the clock runs.
    var freeFrames: [Int32] = []
    /// Frames the balloon holds (given back to the host): never used until it lets them go.
    var ballooned: [Bool]
    /// When each frame was last accessed (the access count then), for the balloon's choice.
    var lastUse: [UInt64]
    /// Frames in play: the rest are the balloon's (`setUsableFrames`).
    public private(set) var usableFrames: Int
    /// Victims the clock frees at once when no frame is free: a guest kernel reclaims a batch
    /// (SWAP_CLUSTER_MAX, 32 pages) and writes its dirty pages together, not one per fault.
    public let reclaimBatch: Int
    /// Free frames the background reclaimer keeps (0: none; every fault that finds no free frame
    /// reclaims itself, synchronously).
    public let reclaimAhead: Int
    /// Frames whose page the background writer is writing out.
    var underWriteback: [Bool]
    /// The batch the background writer has in hand, if any.
    var inFlight: Writeback?
    let writer = DispatchQueue(label: "guest-kswapd")

    /// A page about to be written out of its frame, with the ground truth taken as it is chosen:
    /// whether the frame was host-swapped, and whether its page-table entry was a swap entry.
    typealias SwapOut = (block: Int, page: UnsafeRawBufferPointer, swapped: Bool, entry: Bool?)

    /// A batch handed to the background writer: its frames and the swap-outs they hold.
    final class Writeback: @unchecked Sendable {
        let frames: [Int]
        let outs: [SwapOut]
        let disk: any GuestSwapDisk
        /// Set by the writer before `finished` (released there, acquired by the pager).
        var failure: (any Error)?
        let finished = Atomic<Bool>(false)
        let done = DispatchSemaphore(value: 0)

        init(frames: [Int], outs: [SwapOut], disk: any GuestSwapDisk) {
            self.frames = frames
            self.outs = outs
            self.disk = disk
        }

        func run() {
            do { try disk.write(batch: outs.map { ($0.block, $0.page) }) } catch { failure = error }
            finished.store(true, ordering: .releasing)
            done.signal()
        }
    }

    /// `ram` must hold `frameCount` page-aligned frames and stay mapped while the pager lives.
    /// With `reclaimAhead` > 0 the disk is written from a background thread while the pager reads
    /// other blocks of it, so it must allow that. The disk has `diskBlocks` slots (default and
    /// least: one per page, so that every page can be out at once).
    public init(ram: UnsafeMutableRawPointer, frameCount: Int, pageCount: Int, disk: any GuestSwapDisk, diskBlocks: Int? = nil,
                seed: UInt64 = 1, reclaimBatch: Int = 1, reclaimAhead: Int = 0, hostResident: @escaping (UnsafeRawPointer) -> Bool) {
        precondition(frameCount > 0 && pageCount > 0 && reclaimBatch > 0 && reclaimAhead >= 0)
        precondition((diskBlocks ?? pageCount) >= pageCount, "a swap disk of fewer blocks than pages")
        self.reclaimBatch = min(reclaimBatch, frameCount)
        // At most half the frames kept free: the rest hold pages.
        self.reclaimAhead = min(reclaimAhead, frameCount / 2)
        underWriteback = Array(repeating: false, count: frameCount)
        self.ram = ram
        self.frameCount = frameCount
        self.pageCount = pageCount
        self.disk = disk
        self.seed = seed
        self.hostResident = hostResident
        usableFrames = frameCount
        ballooned = Array(repeating: false, count: frameCount)
        lastUse = Array(repeating: 0, count: frameCount)
        frameOfPage = Array(repeating: -1, count: pageCount)
        pageOfFrame = Array(repeating: -1, count: frameCount)
        referenced = Array(repeating: false, count: frameCount)
        dirty = Array(repeating: false, count: frameCount)
        slotOfPage = Array(repeating: -1, count: pageCount)
        slots = SwapSlots(count: min(diskBlocks ?? pageCount, Int(Int32.max)))
        version = Array(repeating: 0, count: pageCount)
    }

    func frame(_ f: Int) -> UnsafeMutableRawPointer { ram + f * Self.pageSize }

    /// The content of `page` at `version`: a header word, then words from a generator seeded by both.
    func fill(_ p: UnsafeMutableRawPointer, page: Int, version v: UInt32) {
        let words = p.assumingMemoryBound(to: UInt64.self)
        var x = XorShift(seed: (UInt64(page) &* 0x9E37_79B9_7F4A_7C15) ^ (UInt64(v) << 40) ^ seed)
        words[0] = UInt64(page) << 32 | UInt64(v)
        for i in 1..<(Self.pageSize / 8) { words[i] = x.next() }
    }

    func matches(_ p: UnsafeRawPointer, page: Int, version v: UInt32) -> Bool {
        let words = p.assumingMemoryBound(to: UInt64.self)
        guard words[0] == UInt64(page) << 32 | UInt64(v) else { return false }
        var x = XorShift(seed: (UInt64(page) &* 0x9E37_79B9_7F4A_7C15) ^ (UInt64(v) << 40) ^ seed)
        for i in 1..<(Self.pageSize / 8) where words[i] != x.next() { return false }
        return true
    }

    /// One access by the guest. Returns true when it faulted (the page was not in a frame).
    @discardableResult
    public func access(page: Int, write: Bool) throws -> Bool {
        counters.accesses += 1
        var f = Int(frameOfPage[page])
        let faulted = f < 0
        if faulted {
            f = try fault(page)
        } else {
            // Only a second touch counts: the faulting access is not a reference. A page faulted
            // in and never touched again goes at the hand's next pass, while a page touched since
            // keeps its frame, as Linux keeps new anonymous pages on its inactive list until they
            // are used again ("look twice"). A clock that counted the fault would give every new
            // page the hot pages' second chance, and when the frames first fill its hand would
            // clear them all and evict in fault order, hot pages with the cold.
            referenced[f] = true
        }
        lastUse[f] = counters.accesses
        if write {
            version[page] &+= 1
            fill(frame(f), page: page, version: version[page])
            dirty[f] = true
            // Its slot holds an older version now (one being written keeps it until the write is in).
            if !underWriteback[f] { freeSlot(of: page) }
        } else {
            // A read: the guest's access touches the frame (the host sees it as an access).
            _ = frame(f).load(fromByteOffset: (page % 511 + 1) * 8, as: UInt64.self)
        }
        if faulted { startWriteback() }
        return faulted
    }

    func fault(_ page: Int) throws -> Int {
        counters.guestFaults += 1
        let f = try freeFrame()
        let p = frame(f)
        let slot = Int(slotOfPage[page])
        if slot >= 0 {
            if !hostResident(p) { counters.falseReads += 1 }
            try disk.read(block: slot, into: UnsafeMutableRawBufferPointer(start: p, count: Self.pageSize))
            counters.swapIns += 1
            if !matches(p, page: page, version: version[page]) { counters.corrupt += 1 }
            if slots.isHalfFull {
                // Linux's vm_swap_full: the slot goes, and the page must be written out again.
                freeSlot(of: page)
                dirty[f] = true
            } else {
                dirty[f] = false
            }
        } else {
            fill(p, page: page, version: version[page])
            dirty[f] = true
        }
        frameOfPage[page] = Int32(f)
        pageOfFrame[f] = Int32(page)
        return f
    }

    /// An empty frame, or one the clock freed: with none free it takes up to `reclaimBatch`
    /// victims, writes those whose disk copy is stale in one batch, and keeps the rest free. With
    /// `reclaimAhead`, the background writer's finished batch is taken in first and the next one
    /// started (by `access`, once the faulted page has its frame) while fewer frames than that are
    /// free; a fault waits for the writer only when no frame is free at all.
    func freeFrame() throws -> Int {
        try reapWriteback(wait: false)
        if let f = freeFrames.popLast() { return Int(f) }
        while neverUsed < frameCount {
            neverUsed += 1
            if !ballooned[neverUsed - 1] { return neverUsed - 1 }
        }
        counters.directReclaims += 1
        if inFlight != nil {
            try reapWriteback(wait: true)
            if let f = freeFrames.popLast() { return Int(f) }
        }
        let victims = clockVictims()
        try evict(victims[...])
        let f = victims[0]
        freeFrames.append(contentsOf: victims.dropFirst().reversed().map(Int32.init))
        return f
    }

    /// Up to `reclaimBatch` frames the clock chooses: not referenced since the hand last passed,
    /// not the balloon's, not empty, not being written. One turn of the hand past the first victim at most,
    /// so no frame is taken twice; a batch may come out short when nearly every frame was
    /// referenced. Never empty while some usable frame is not being written.
    func clockVictims() -> [Int] {
        var victims: [Int] = []
        victims.reserveCapacity(reclaimBatch)
        var stop = -1, passed = 0
        while victims.count < reclaimBatch && hand != stop && passed < 2 * frameCount {
            passed += 1
            if referenced[hand] || ballooned[hand] || underWriteback[hand] || pageOfFrame[hand] < 0 {
                referenced[hand] = false
            } else {
                if victims.isEmpty { stop = hand }
                victims.append(hand)
            }
            hand = (hand + 1) % frameCount
        }
        return victims
    }

    /// Background reclaim (kswapd): while fewer than `reclaimAhead` frames are free and the writer
    /// is idle, the clock's next victims are taken: clean ones freed at once, the others handed
    /// to the writer, their frames left mapped until written. The dirty bit is cleared as the
    /// write starts, so an access meanwhile keeps the frame (a write marks it dirty again).
    func startWriteback() {
        guard reclaimAhead > 0, inFlight == nil, neverUsed >= frameCount, freeFrames.count < reclaimAhead else { return }
        var frames: [Int] = [], outs: [SwapOut] = []
        for f in clockVictims() {
            if let out = swapOut(f) {
                outs.append(out)
                frames.append(f)
                underWriteback[f] = true
            } else {
                counters.drops += 1
                empty(f)
                freeFrames.append(Int32(f))
            }
            dirty[f] = false
        }
        guard !frames.isEmpty else { return }
        let job = Writeback(frames: frames, outs: outs, disk: disk)
        inFlight = job
        writer.async { job.run() }
    }

    /// Takes in the writer's batch once written (waiting for it if `wait`): its pages are on the
    /// disk; its frames are free unless accessed meanwhile (those stay, clean unless written).
    func reapWriteback(wait: Bool) throws {
        guard let job = inFlight else { return }
        if !wait && !job.finished.load(ordering: .acquiring) { return }
        job.done.wait()
        inFlight = nil
        for f in job.frames { underWriteback[f] = false }
        if let failure = job.failure {
            // Not written: the pages stay in their frames, dirty, for a later reclaim to retry.
            for f in job.frames {
                dirty[f] = true
                freeSlot(of: Int(pageOfFrame[f]))
            }
            throw failure
        }
        written(job.outs)
        // A page written to during its write-out: the copy just written is already old.
        for f in job.frames where dirty[f] { freeSlot(of: Int(pageOfFrame[f])) }
        for f in job.frames where !referenced[f] && !dirty[f] && !ballooned[f] {
            empty(f)
            freeFrames.append(Int32(f))
        }
    }

    /// Whether frame `f` holds a page whose disk copy is stale (dirty, or never written).
    func isStale(_ f: Int) -> Bool {
        let page = Int(pageOfFrame[f])
        return page >= 0 && (dirty[f] || slotOfPage[page] < 0)
    }

    /// The swap-out of frame `f`'s page, if its disk copy is stale (nil: empty or clean), to a
    /// new slot: called for a batch's victims in turn, so that they get neighbouring slots.
    func swapOut(_ f: Int) -> SwapOut? {
        guard isStale(f) else { return nil }
        let victim = Int(pageOfFrame[f])
        freeSlot(of: victim)
        // Never nil: a page holds one slot at most, and there are at least as many as pages.
        guard let slot = slots.allocate() else { preconditionFailure("no swap slot free for page \(victim)") }
        slotOfPage[victim] = Int32(slot)
        return (slot, UnsafeRawBufferPointer(start: frame(f), count: Self.pageSize), !hostResident(frame(f)), hostSwapEntry?(frame(f)))
    }

    func freeSlot(of page: Int) {
        guard page >= 0, slotOfPage[page] >= 0 else { return }
        slots.free(Int(slotOfPage[page]))
        slotOfPage[page] = -1
    }

    /// Records swap-outs once written: the pages are on the disk, and the ground truth is told.
    func written(_ outs: [SwapOut]) {
        for o in outs {
            if o.swapped { counters.doublePaged += 1 }
            counters.swapOuts += 1
            onSwapOut?(o.block, o.swapped, o.entry)
        }
    }

    /// Frame `f` holds no page any more.
    func empty(_ f: Int) {
        let page = Int(pageOfFrame[f])
        if page >= 0 { frameOfPage[page] = -1 }
        pageOfFrame[f] = -1
    }

    /// Waits for the background writer's batch, if any, and takes it in: before the balloon
    /// moves, the verify pass, or the disk is closed.
    public func finishWriteback() throws {
        try reapWriteback(wait: true)
    }

    /// The balloon: the guest keeps `count` frames (at least 16, at most all). To shrink, the
    /// balloon takes what a guest's allocator would hand its balloon driver: empty frames first,
    /// then from the least recently used, twice as many as it still needs, the clean ones (already
    /// on the disk: dropped at once), then the dirty ones (swapped out first), as a guest's reclaim
    /// frees its inactive tail's clean pages at once while the dirty ones wait for their writes.
    /// Each frame taken is given back to the host (`release`, e.g. `madvise(MADV_DONTNEED)`, which
    /// also frees its host swap slot unread). Growing lets frames go: they are empty.
    /// `prefetch` is told the frames about to be written out first, a batch at a time (e.g.
    /// `madvise(MADV_WILLNEED)`, so the host reads back those it swapped in parallel, as it would
    /// for a guest kernel's batch of swap writes).
    public func setUsableFrames(_ count: Int, prefetch: (UnsafeMutableRawPointer, Int) -> Void = { _, _ in },
                                release: (UnsafeMutableRawPointer, Int) -> Void) throws {
        try finishWriteback()
        let n = min(max(count, 16), frameCount)
        if n > usableFrames {
            var k = n - usableFrames
            for f in 0..<frameCount where k > 0 && ballooned[f] {
                ballooned[f] = false
                if f < neverUsed { freeFrames.append(Int32(f)) }
                k -= 1
            }
        } else if n < usableFrames {
            let wanted = usableFrames - n
            // Empty frames first, then the least recently used (a guest kernel's reclaim takes
            // its inactive list's tail; the clock's referenced bits are too coarse for that when
            // the hand moves slowly, and a balloon that took hot pages would make the guest fault
            // them straight back).
            var empty: [Int] = [], used: [Int] = []
            for f in 0..<frameCount where !ballooned[f] {
                if pageOfFrame[f] < 0 { empty.append(f) } else { used.append(f) }
            }
            used.sort { lastUse[$0] < lastUse[$1] }
            let cold = used.prefix(max(0, wanted - empty.count) * 2)
            let taken = Array((empty + cold.filter { !isStale($0) } + cold.filter(isStale)).prefix(wanted))
            // In batches of 32, as a kernel's reclaim writes (SWAP_CLUSTER_MAX): each batch is
            // announced just before it is written.
            for start in stride(from: 0, to: taken.count, by: 32) {
                let batch = taken[start..<min(taken.count, start + 32)]
                for f in batch where isStale(f) {
                    prefetch(frame(f), Self.pageSize)
                }
                try evict(batch)
                for f in batch {
                    ballooned[f] = true
                    release(frame(f), Self.pageSize)
                }
            }
            let gone = Set(taken.map(Int32.init))
            freeFrames.removeAll { gone.contains($0) }
        }
        usableFrames = n
    }

    /// Empties the frames of a batch, writing the stale pages among them in one batch.
    func evict(_ frames: ArraySlice<Int>) throws {
        var outs: [SwapOut] = []
        for f in frames {
            referenced[f] = false
            if let out = swapOut(f) {
                outs.append(out)
            } else if pageOfFrame[f] >= 0 {
                counters.drops += 1
            }
        }
        do {
            try disk.write(batch: outs.map { ($0.block, $0.page) })
        } catch {
            // Not written: the pages stay in their frames, dirty, without the slots they were given.
            for f in frames where dirty[f] { freeSlot(of: Int(pageOfFrame[f])) }
            throw error
        }
        written(outs)
        for f in frames {
            empty(f)
            dirty[f] = false
        }
    }

    /// Reads every page (through faults where needed) and counts those whose content is not what
    /// was last written. Returns the number of bad pages.
    public func verifyAll() throws -> Int {
        try finishWriteback()
        var bad = 0
        for page in 0..<pageCount where version[page] != 0 || slotOfPage[page] >= 0 || frameOfPage[page] >= 0 {
            let before = counters.corrupt
            var f = Int(frameOfPage[page])
            if f < 0 { f = try fault(page) }
            if counters.corrupt > before || !matches(frame(f), page: page, version: version[page]) { bad += 1 }
        }
        return bad
    }
}
