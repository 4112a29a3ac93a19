import Testing
import Foundation
import Synchronization
import SwapfairWorkload

/// An in-memory swap disk that counts its I/O and can flip a bit to prove the check notices.
final class MemoryDisk: GuestSwapDisk {
    var blocks: [Int: [UInt8]] = [:]
    var writes = 0, reads = 0
    /// Calls of write(batch:) and the most pages one of them carried.
    var batches = 0, largestBatch = 0
    var corruptNextRead = false
    func write(batch: [(block: Int, page: UnsafeRawBufferPointer)]) throws {
        batches += 1
        largestBatch = max(largestBatch, batch.count)
        for (block, page) in batch { try write(block: block, from: page) }
    }
    func write(block: Int, from page: UnsafeRawBufferPointer) throws {
        blocks[block] = Array(page)
        writes += 1
    }
    func read(block: Int, into page: UnsafeMutableRawBufferPointer) throws {
        var b = try #require(blocks[block])
        if corruptNextRead { b[100] ^= 1; corruptNextRead = false }
        page.copyBytes(from: b)
        reads += 1
    }
}

/// An in-memory swap disk that the background writer's thread and the pager may use at once; a
/// batch holding `heldBlock` waits until `release()`, and writes may take a little while.
final class SharedMemoryDisk: GuestSwapDisk, @unchecked Sendable {
    struct State {
        var blocks: [Int: [UInt8]] = [:]
        var writes = 0, reads = 0
        var heldBlock: Int?
    }
    let state = Mutex(State())
    let gate = DispatchSemaphore(value: 0)
    let slowWrites: Bool
    init(slowWrites: Bool = false) { self.slowWrites = slowWrites }

    func hold(block: Int) { state.withLock { $0.heldBlock = block } }
    func release() { state.withLock { $0.heldBlock = nil }; gate.signal() }
    var reads: Int { state.withLock { $0.reads } }
    var writes: Int { state.withLock { $0.writes } }

    func write(batch: [(block: Int, page: UnsafeRawBufferPointer)]) throws {
        let held = state.withLock { s in batch.contains { $0.block == s.heldBlock } }
        if held { gate.wait() }
        for (block, page) in batch { try write(block: block, from: page) }
    }
    func write(block: Int, from page: UnsafeRawBufferPointer) throws {
        if slowWrites { usleep(UInt32.random(in: 0...200)) }
        let bytes = Array(page)
        state.withLock { $0.blocks[block] = bytes; $0.writes += 1 }
    }
    func read(block: Int, into page: UnsafeMutableRawBufferPointer) throws {
        let b = try #require(state.withLock { s in s.reads += 1; return s.blocks[block] })
        page.copyBytes(from: b)
    }
}

@Suite struct GuestPagerTests {
    static func withRAM(frames: Int, _ body: (UnsafeMutableRawPointer) throws -> Void) rethrows {
        let ram = UnsafeMutableRawPointer.allocate(byteCount: frames * GuestPager.pageSize, alignment: GuestPager.pageSize)
        defer { ram.deallocate() }
        try body(ram)
    }

    @Test func pagesBeyondItsRAMGoToItsDiskAndComeBackIntact() throws {
        try Self.withRAM(frames: 8) { ram in
            let disk = MemoryDisk()
            let pager = GuestPager(ram: ram, frameCount: 8, pageCount: 32, disk: disk) { _ in true }
            var x = XorShift(seed: 7)
            for _ in 0..<5000 {
                let r = x.next()
                try pager.access(page: Int(r % 32), write: r & 0x100 != 0)
            }
            let c = pager.counters
            #expect(c.guestFaults > 1000, "8 frames for 32 pages must fault often")
            #expect(c.swapOuts == UInt64(disk.writes) && c.swapIns == UInt64(disk.reads))
            #expect(c.swapOuts + c.drops + 8 >= c.guestFaults, "every fault past the first 8 frees a frame")
            #expect(c.drops > 0, "clean pages are dropped, not written again")
            #expect(c.corrupt == 0 && c.doublePaged == 0 && c.falseReads == 0)
            #expect(try pager.verifyAll() == 0)
        }
    }

    /// The fault is not a use: with every frame full, a page touched again since its fault keeps its
    /// frame and one touched only by its fault goes, whatever the order they came in (a clock that
    /// counted the fault would clear every bit and evict the oldest, page 0).
    @Test func aPageTouchedOnlyByItsFaultGoesBeforeOneTouchedAgain() throws {
        try Self.withRAM(frames: 4) { (ram) throws in
            let pager = GuestPager(ram: ram, frameCount: 4, pageCount: 16, disk: MemoryDisk()) { _ in true }
            for p in 0..<4 { #expect(try pager.access(page: p, write: true)) }
            for p in [0, 1] { #expect(try pager.access(page: p, write: false) == false) }
            #expect(try pager.access(page: 4, write: true))
            #expect(try pager.access(page: 0, write: false) == false)
            #expect(try pager.access(page: 1, write: false) == false)
            #expect(try pager.access(page: 3, write: false) == false)
            #expect(try pager.access(page: 2, write: false), "page 2, touched only by its fault, was the victim")
            #expect(try pager.verifyAll() == 0)
        }
    }

    /// Swap slots: a batch's victims get neighbouring slots; a page read back keeps its slot while
    /// clean (dropping it again writes nothing), gives it up when written to, and goes out again
    /// to a new one.
    @Test func aBatchGetsNeighbouringSlotsAndAWrittenPageANewOne() throws {
        try Self.withRAM(frames: 4) { ram in
            let disk = MemoryDisk()
            let pager = GuestPager(ram: ram, frameCount: 4, pageCount: 16, disk: disk, diskBlocks: 64, reclaimBatch: 4) { _ in true }
            var blocks: [Int] = []
            pager.onSwapOut = { block, _, _ in blocks.append(block) }
            for p in 0..<4 { try pager.access(page: p, write: true) }
            try pager.access(page: 4, write: true)
            #expect(blocks == [0, 1, 2, 3] && disk.batches == 1, "one batch of four, slots 0-3")
            // Pages 0-2 back from slots 0-2 into the free frames, clean; page 4 is dirty.
            for p in 0..<3 { try pager.access(page: p, write: false) }
            #expect(pager.slots.isUsed(0) && pager.slots.inUse == 4)
            // The next batch takes all four: only page 4 is written (slot 4); 0-2 go with no write.
            try pager.access(page: 3, write: false)
            #expect(blocks == [0, 1, 2, 3, 4] && disk.writes == 5)
            try pager.access(page: 0, write: false)
            #expect(pager.slots.isUsed(0))
            try pager.access(page: 0, write: true)
            #expect(!pager.slots.isUsed(0), "a write frees the page's slot")
            // Page 0, touched since its fault, outlives one pass of the hand; at the next it goes
            // with the new pages 5 and 6, to the next slots: 5 for it, 6 and 7 for them.
            for p in [1, 2, 4, 5, 6, 7] { try pager.access(page: p, write: false) }
            #expect(blocks == [0, 1, 2, 3, 4, 5, 6, 7], "page 0 went to a new slot")
            #expect(try pager.verifyAll() == 0)
        }
    }

    /// Over half the slots in use, a page read back gives its slot up (Linux's vm_swap_full) and
    /// must be written again when it goes; below that it keeps it.
    @Test func aPageReadBackGivesUpItsSlotOnceHalfAreInUse() throws {
        for (blocks, keeps) in [(16, false), (64, true)] {
            try Self.withRAM(frames: 4) { ram in
                let disk = MemoryDisk()
                let pager = GuestPager(ram: ram, frameCount: 4, pageCount: 16, disk: disk, diskBlocks: blocks) { _ in true }
                for p in 0..<16 { try pager.access(page: p, write: true) }
                #expect(pager.slots.inUse == 12)
                try pager.access(page: 0, write: false)
                #expect(disk.reads == 1)
                #expect(pager.slots.inUse == (keeps ? 13 : 12), "\(blocks) slots: the fault wrote page 12 out, and page 0 kept or gave up its slot")
                #expect(try pager.verifyAll() == 0)
            }
        }
    }

    /// Reclaim in batches: with no frame free the clock frees up to `reclaimBatch` at once and the
    /// stale ones among them go to the disk in one write, so most faults find a free frame.
    @Test func reclaimFreesABatchOfFramesAtOnce() throws {
        try Self.withRAM(frames: 16) { ram in
            let disk = MemoryDisk()
            let pager = GuestPager(ram: ram, frameCount: 16, pageCount: 64, disk: disk, reclaimBatch: 8) { _ in true }
            var x = XorShift(seed: 11)
            for _ in 0..<4000 {
                let r = x.next()
                try pager.access(page: Int(r % 64), write: r & 0x100 != 0)
            }
            let c = pager.counters
            let reclaimed = Int(c.guestFaults) - 16
            #expect(reclaimed > 1000)
            #expect(disk.largestBatch > 1 && disk.largestBatch <= 8)
            #expect(disk.batches * 8 >= reclaimed, "a batch frees at most 8 frames")
            #expect(disk.batches * 4 < reclaimed, "most batches free more than half of 8")
            #expect(c.swapOuts == UInt64(disk.writes) && c.corrupt == 0)
            #expect(try pager.verifyAll() == 0)
        }
    }

    /// The balloon: it takes empty frames first, then clean ones (dropped with no write), dirty
    /// ones last; the frames it holds are released and never used while it holds them; growing
    /// brings them back; every page stays intact throughout.
    @Test func theBalloonTakesFreeThenCleanFramesAndGivesThemBack() throws {
        try Self.withRAM(frames: 64) { ram in
            let disk = MemoryDisk()
            // A disk with room: pages read back keep their slots (never half full).
            let pager = GuestPager(ram: ram, frameCount: 64, pageCount: 128, disk: disk, diskBlocks: 512) { _ in true }
            var x = XorShift(seed: 3)
            func run(_ n: Int, writes: Bool = true) throws {
                for _ in 0..<n {
                    let r = x.next()
                    try pager.access(page: Int(r % 128), write: writes && r & 0x100 != 0)
                }
            }
            // Ten frames in use, 54 never used: the balloon takes 24 of the empty ones, no I/O.
            for p in 0..<10 { try pager.access(page: p, write: true) }
            var released: [Int] = []
            func take(_ n: Int) throws {
                try pager.setUsableFrames(n) { p, len in
                    #expect(len == GuestPager.pageSize)
                    released.append((p - ram) / GuestPager.pageSize)
                }
            }
            try take(40)
            #expect(pager.usableFrames == 40 && released.count == 24)
            #expect(disk.writes == 0, "empty frames cost nothing")
            try run(3000)
            // The least recently used go first: after reads of every page, the last 40 read are
            // resident and clean; the 20 read first of them are taken, dropped with no write.
            for p in 0..<128 { try pager.access(page: p, write: false) }
            let writes = disk.writes, faults = pager.counters.guestFaults
            released = []
            try take(20)
            #expect(released.count == 20 && disk.writes == writes, "clean pages are dropped, not written")
            for p in 108..<128 { try pager.access(page: p, write: false) }
            #expect(pager.counters.guestFaults == faults, "the 20 used last stay in")
            // All the balloon's frames are left alone while it holds them.
            let held = Set(released)
            for f in held { (ram + f * GuestPager.pageSize).initializeMemory(as: UInt8.self, repeating: 0xA5, count: GuestPager.pageSize) }
            try run(3000)
            for f in held {
                #expect(UnsafeRawBufferPointer(start: ram + f * GuestPager.pageSize, count: GuestPager.pageSize).allSatisfy { $0 == 0xA5 })
            }
            #expect(try pager.verifyAll() == 0)
            // Dirty frames go last, written out first: with all 20 frames in play dirty, taking 4
            // writes 4.
            for p in 0..<20 { try pager.access(page: p, write: true) }
            let before = disk.writes
            var prefetched = 0
            try pager.setUsableFrames(16, prefetch: { _, n in prefetched += n / GuestPager.pageSize }, release: { _, _ in })
            #expect(prefetched == 4, "the frames to write are announced first")
            #expect(pager.usableFrames == 16)
            #expect(disk.writes == before + 4)
            #expect(try pager.verifyAll() == 0)
            // Growing: every frame is used again.
            try pager.setUsableFrames(1000) { _, _ in Issue.record("growing releases nothing") }
            #expect(pager.usableFrames == 64)
            try run(6000)
            for f in held {
                #expect(!UnsafeRawBufferPointer(start: ram + f * GuestPager.pageSize, count: GuestPager.pageSize).allSatisfy { $0 == 0xA5 },
                        "frame \(f) is in use again")
            }
            #expect(try pager.verifyAll() == 0 && pager.counters.corrupt == 0)
            try pager.setUsableFrames(0) { _, _ in }
            #expect(pager.usableFrames == 16, "the balloon leaves the guest at least 16 frames")
            #expect(try pager.verifyAll() == 0)
        }
    }

    /// Among the least recently used the balloon takes the clean frames before the dirty ones, as
    /// a guest's reclaim frees the clean pages of its inactive tail at once: no write, and no
    /// host read of a frame the host swapped. It looks no further than twice what it needs.
    @Test func theBalloonTakesTheColdCleanFramesBeforeTheColdDirtyOnes() throws {
        try Self.withRAM(frames: 32) { ram in
            let disk = MemoryDisk()
            let pager = GuestPager(ram: ram, frameCount: 32, pageCount: 64, disk: disk, reclaimBatch: 1) { _ in true }
            func resident(_ pages: Range<Int>) throws -> Bool {
                let faults = pager.counters.guestFaults
                for p in pages { try pager.access(page: p, write: false) }
                return pager.counters.guestFaults == faults
            }
            // Pages 16-31 dirty in their frames; 0-15 written out by the balloon, read back clean.
            for p in 0..<32 { try pager.access(page: p, write: true) }
            try pager.setUsableFrames(16) { _, _ in }
            #expect(disk.writes == 16)
            try pager.setUsableFrames(32) { _, _ in }
            for p in 0..<16 { try pager.access(page: p, write: false) }
            #expect(try resident(16..<32) && resident(0..<16))
            // Least recently used first: dirty 16-23, clean 0-7, dirty 24-31, clean 8-15.
            #expect(try resident(16..<24) && resident(0..<8) && resident(24..<32) && resident(8..<16))
            let writes = disk.writes
            var released: [Int] = []
            try pager.setUsableFrames(24) { p, _ in released.append((p - ram) / GuestPager.pageSize) }
            #expect(released.count == 8 && pager.usableFrames == 24)
            #expect(disk.writes == writes, "the eight coldest clean frames go, with no write")
            #expect(try resident(16..<24), "the colder dirty frames stay")
            #expect(try resident(8..<16), "the clean frames beyond twice what it needed stay")
            #expect(try pager.verifyAll() == 0)
        }
    }

    @Test func aPageThatComesBackWrongIsCounted() throws {
        try Self.withRAM(frames: 2) { ram in
            let disk = MemoryDisk()
            let pager = GuestPager(ram: ram, frameCount: 2, pageCount: 3, disk: disk) { _ in true }
            for p in 0..<3 { try pager.access(page: p, write: true) }  // page 0 goes to disk
            disk.corruptNextRead = true
            try pager.access(page: 0, write: false)
            #expect(pager.counters.corrupt == 1)
        }
    }

    /// The ground truth of double paging: a swap-out of a frame the host does not hold is counted,
    /// one of a frame it holds is not; the same for swap-ins into such frames.
    @Test func swapOutsOfHostSwappedFramesAreDoublePaging() throws {
        try Self.withRAM(frames: 4) { ram in
            let disk = MemoryDisk()
            var hostSwapped: Set<Int> = []
            let pager = GuestPager(ram: ram, frameCount: 4, pageCount: 64, disk: disk) { p in
                !hostSwapped.contains((p - UnsafeRawPointer(ram)) / GuestPager.pageSize)
            }
            var flagged: [(Int, Bool)] = []
            pager.onSwapOut = { flagged.append(($0, $1)); _ = $2 }
            for p in 0..<4 { try pager.access(page: p, write: true) }
            hostSwapped = [1, 3]  // the host swaps two frames out
            // Four new pages: the clock takes frames 0..3 in turn, each holding a dirty page.
            for p in 4..<8 { try pager.access(page: p, write: false) }
            #expect(pager.counters.swapOuts == 4)
            #expect(pager.counters.doublePaged == 2)
            #expect(flagged.map(\.0) == [0, 1, 2, 3] && flagged.map(\.1) == [false, true, false, true])
            // Swap-ins into host-swapped frames: page 0 comes back into frame 0 (held), 1 into 1 (not).
            for p in 0..<2 { try pager.access(page: p, write: false) }
            #expect(pager.counters.falseReads == 1 && pager.counters.swapIns == 2)
        }
    }

    /// Background reclaim: once fewer than `reclaimAhead` frames are free, the next victims are
    /// written while the guest goes on; a page accessed while its write is in flight keeps its
    /// frame (a write makes it dirty again), the others' frames come free, and every page still
    /// reads back as last written.
    @Test func backgroundReclaimWritesAheadAndKeepsPagesTouchedMeanwhile() throws {
        try Self.withRAM(frames: 16) { ram in
            let disk = SharedMemoryDisk()
            let pager = GuestPager(ram: ram, frameCount: 16, pageCount: 64, disk: disk, reclaimBatch: 4, reclaimAhead: 4) { _ in true }
            // Block 0 is in the first background batch (the clock's first victims are pages 0-3,
            // chosen once the 16th frame is taken); hold that batch.
            disk.hold(block: 0)
            for p in 0..<16 { #expect(try pager.access(page: p, write: true)) }
            #expect(pager.counters.directReclaims == 0 && pager.counters.swapOuts == 0)
            // Pages 0 and 1 are under writeback, still in their frames: no fault.
            #expect(try pager.access(page: 0, write: true) == false)
            #expect(try pager.access(page: 1, write: false) == false)
            disk.release()
            // No frame free: this fault takes in the written batch (waiting for it if need be).
            #expect(try pager.access(page: 16, write: true))
            #expect(pager.counters.swapOuts >= 4 && pager.counters.directReclaims <= 1)
            // The pages touched during their write kept their frames; the others were freed.
            #expect(try pager.access(page: 0, write: false) == false)
            #expect(try pager.access(page: 1, write: false) == false)
            let reads = disk.reads
            #expect(try pager.access(page: 2, write: false))
            #expect(try pager.access(page: 3, write: false))
            #expect(disk.reads == reads + 2 && pager.counters.corrupt == 0)
            try pager.finishWriteback()
            #expect(pager.counters.swapOuts == UInt64(disk.writes))
            #expect(try pager.verifyAll() == 0)
        }
    }

    /// Background reclaim under load: random accesses, a third of them writes, while the writer
    /// thread writes batches slowly; nothing is lost or mixed up, and faults mostly find a frame.
    @Test func backgroundReclaimUnderLoadLosesNothing() throws {
        try Self.withRAM(frames: 32) { ram in
            let disk = SharedMemoryDisk(slowWrites: true)
            let pager = GuestPager(ram: ram, frameCount: 32, pageCount: 256, disk: disk, reclaimBatch: 8, reclaimAhead: 12) { _ in true }
            var x = XorShift(seed: 5)
            for _ in 0..<20_000 {
                let r = x.next()
                try pager.access(page: Int(r % 64 == 0 ? r % 256 : r % 48), write: r & 0x300 == 0)
            }
            try pager.finishWriteback()
            let c = pager.counters
            #expect(c.guestFaults > 2_000)
            #expect(c.swapOuts == UInt64(disk.writes) && c.corrupt == 0)
            #expect(c.directReclaims < c.guestFaults)
            #expect(try pager.verifyAll() == 0)
        }
    }
}

/// The ground-truth log is read back by the lab as JSON lines: every line must parse, with the
/// fields it was given, whether it went out when the buffer filled or at the flush.
@Suite struct SwapOutLogTests {
    @Test func everyLineIsJSONWithItsFields() throws {
        let path = "/tmp/swapfair-swapoutlog-\(getpid()).jsonl"
        defer { unlink(path) }
        let log = try SwapOutLog(path: path, flushAt: 200)  // small: most lines go out as the buffer fills
        for i in 0..<50 {
            log.record(t: Double(i) * 0.125, clock: 1_000_000.5 + Double(i), block: i * 7, hostSwapped: i % 2 == 0,
                       swapEntry: i % 3 == 0 ? nil : i % 3 == 1)
        }
        try log.flush()
        let text = try String(contentsOfFile: path, encoding: .utf8)
        let lines = text.split(separator: "\n")
        #expect(lines.count == 50)
        for (i, line) in lines.enumerated() {
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            let o = try #require(object, "line \(i) is not a JSON object: \(line)")
            #expect(o["block"] as? Int == i * 7)
            #expect(o["t"] as? Double == Double(i) * 0.125)
            #expect(o["clock"] as? Double == 1_000_000.5 + Double(i))
            #expect(o["host_swapped"] as? Bool == (i % 2 == 0))
            #expect(o["swap_entry"] as? Bool == (i % 3 == 0 ? nil : i % 3 == 1))
        }
    }

    @Test func aPathThatCannotBeWrittenIsAnError() {
        #expect(throws: SwapOutLog.Failure.self) { try SwapOutLog(path: "/nonexistent-dir/truth.jsonl") }
    }
}
