import ArgumentParser
import Foundation
import Synchronization
import SwapfairQMP
import SwapfairWorkload
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

// A paging benchmark workload that behaves like a guest with its own swap: "guest RAM" is a
// mapping in this process (the host's memory limit on its cgroup decides how much of it the host
// keeps in RAM), the guest's own page replacement runs over those frames, and its swap disk is a
// block device or file (a swapfair NBD export attached with nbd-client, or a plain one). Every
// guest swap-out and swap-in records whether the host had swapped that frame at the moment
// (mincore on the mapping): the ground truth of double paging. Reports JSON lines.

let stopRequested = Atomic<Bool>(false)
/// The balloon's target in frames (-1: none yet), set by the QMP responder's thread, and the frames
/// the guest has now, for its answers.
let balloonTarget = Atomic<Int>(-1)
let framesInPlay = Atomic<Int>(0)

struct GuestPagerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "swapfair-guestpager",
        abstract: "A guest with its own swap, in miniature: pages its memory to its own disk and records double paging (JSON lines).")

    @Option(help: "Guest RAM: the frames the guest pages into (e.g. 96M). The host may swap them.") var ram: String = "96M"
    @Option(help: "Guest memory: the pages the guest uses, more than --ram (e.g. 160M).") var pages: String = "160M"
    @Option(help: "The guest's swap disk: a block device or a file (created if missing).") var disk: String
    @Option(help: "Swap slots the guest uses on its disk, as a size (e.g. 256M; at least --pages, the default). Over half of them in use, a page read back gives up its slot, as in Linux.")
    var diskSize: String?
    @Option(help: "Access pattern: uniform or skewed (90% of accesses in the hot set).") var pattern: String = "skewed"
    @Option(help: "Hot set of the skewed pattern (e.g. 32M). Default: a fifth of --pages.") var hotSet: String?
    @Option(help: "Share of accesses that write the page (0 to 1).") var writes: Double = 0.3
    @Option(help: "Seconds to run.") var duration: Double = 30
    @Option(help: "Seconds per report line.") var interval: Double = 1
    @Option(help: "Accesses per second (0: as fast as it can).") var rate: Double = 0
    @Option(help: "Write the JSON lines here instead of standard output.") var output: String?
    @Option(help: "Write one line per guest swap-out here: time (also as CLOCK_MONOTONIC), block, whether the frame was host-swapped.")
    var events: String?
    @Option(help: "Name put in every line.") var label: String = "guest"
    @Option(help: "Random seed.") var seed: UInt64 = 1
    @Flag(help: "At the end, read every page back and check it holds what was last written; exit status 3 on any mismatch.")
    var verify = false
    @Option(help: "Before the verify pass, close the swap disk, report \"paused\" and wait until this file exists, then open it again (a test restarts the disk's server meanwhile).")
    var pauseBeforeVerify: String?
    @Option(help: "Frames the guest's reclaim frees at once when none is free, their dirty pages written together (a kernel's SWAP_CLUSTER_MAX is 32; 1: one victim per fault).")
    var reclaimBatch: Int = 32
    @Option(help: "Free frames a background reclaimer keeps, as a guest's kswapd does: it writes the next victims while the guest goes on, and a fault waits only when none is free (0: every fault that finds none reclaims itself). Default: 256 (1 MiB), at most half of --ram.")
    var reclaimAhead: Int?
    @Option(help: "Serve a balloon on this Unix socket, speaking QMP's balloon and query-balloon as QEMU does, so that swapfaird can shrink and grow the guest.")
    var balloon: String?

    func run() throws {
        guard let ramBytes = parseSize(ram), ramBytes >= 16 * 4096 else { throw ValidationError("bad --ram \(ram): at least 64K") }
        guard let pageBytes = parseSize(pages), pageBytes >= ramBytes else {
            throw ValidationError("bad --pages \(pages): a size at least --ram (\(ram))")
        }
        guard pattern == "uniform" || pattern == "skewed" else { throw ValidationError("--pattern is uniform or skewed") }
        guard (0...1).contains(writes) else { throw ValidationError("--writes is a share, 0 to 1") }
        guard (1...1024).contains(reclaimBatch) else { throw ValidationError("--reclaim-batch is 1 to 1024 frames") }
        let frameCount = Int(ramBytes / 4096), pageCount = Int(pageBytes / 4096)
        var diskBlocks = pageCount
        if let diskSize {
            guard let b = parseSize(diskSize), b >= pageBytes, b % 4096 == 0, b / 4096 <= UInt64(Int32.max) else {
                throw ValidationError("bad --disk-size \(diskSize): a multiple of 4K, at least --pages (\(pages))")
            }
            diskBlocks = Int(b / 4096)
        }
        let reclaimAhead = reclaimAhead ?? min(256, frameCount / 2)
        guard (0...frameCount / 2).contains(reclaimAhead) else {
            throw ValidationError("--reclaim-ahead is 0 to \(frameCount / 2) frames (half of --ram \(ram))")
        }
        let hot: Int
        if let hotSet {
            guard let h = parseSize(hotSet), h >= 4096, h <= pageBytes else { throw ValidationError("bad --hot-set \(hotSet)") }
            hot = Int(h / 4096)
        } else {
            hot = max(1, pageCount / 5)
        }
        signal(SIGTERM) { _ in stopRequested.store(true, ordering: .relaxed) }
        signal(SIGINT) { _ in stopRequested.store(true, ordering: .relaxed) }

        let out = try JSONLines(path: output)
        let eventLog = try events.map { try SwapOutLog(path: $0) }
        let swapDisk = try BlockFileDisk(path: disk, blocks: diskBlocks)
        guard let mapped = mmap(nil, Int(ramBytes), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              mapped != MAP_FAILED else { throw ValidationError("cannot map \(ram) of guest RAM: \(Errno(rawValue: errno))") }
        defer { munmap(mapped, Int(ramBytes)) }
        // mincore: whether the host holds the frame in RAM now (a frame in the swap cache counts as held).
        var residentByte: UInt8 = 0
        let pager = GuestPager(ram: mapped, frameCount: frameCount, pageCount: pageCount, disk: swapDisk, diskBlocks: diskBlocks, seed: seed,
                               reclaimBatch: reclaimBatch, reclaimAhead: reclaimAhead) { p in
            mincore(UnsafeMutableRawPointer(mutating: p), 4096, &residentByte) != 0 || residentByte & 1 == 1
        }
        framesInPlay.store(frameCount, ordering: .relaxed)
        let responder = try balloon.map { path in
            try BalloonResponder(path: path, setTarget: { bytes in
                balloonTarget.store(Int(min(bytes, UInt64(Int.max)) / 4096), ordering: .relaxed)
            }, actual: { UInt64(framesInPlay.load(ordering: .relaxed)) * 4096 })
        }
        responder?.start()
        defer { responder?.stop() }
        // The balloon's work runs on this thread, between accesses, as a guest's balloon driver
        // makes its own kernel reclaim.
        func followBalloon() throws {
            let want = balloonTarget.load(ordering: .relaxed)
            guard want >= 0, want != pager.usableFrames, min(max(want, 16), frameCount) != pager.usableFrames else { return }
            let before = pager.usableFrames
            try pager.setUsableFrames(want, prefetch: { p, n in _ = madvise(p, n, MADV_WILLNEED) },
                                      release: { p, n in _ = madvise(p, n, MADV_DONTNEED) })
            framesInPlay.store(pager.usableFrames, ordering: .relaxed)
            out.emit(["label": label, "event": "balloon", "t": now() - start, "from": before * 4096, "to": pager.usableFrames * 4096])
        }
        let start = now()
        if let eventLog {
            // /proc/self/pagemap: bit 62 of a page's entry says it is swapped (its page-table entry
            // is a swap entry, even if swap readahead has brought it back into the swap cache).
            let pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC)
            if pagemap >= 0 {
                pager.hostSwapEntry = { p in
                    var entry: UInt64 = 0
                    let at = off_t(UInt(bitPattern: p) / 4096 * 8)
                    guard pread(pagemap, &entry, 8, at) == 8 else { return nil }
                    return entry & (1 << 62) != 0
                }
            }
            pager.onSwapOut = { block, swapped, entry in
                let t = now()
                eventLog.record(t: t - start, clock: t, block: block, hostSwapped: swapped, swapEntry: entry)
            }
        }
        out.emit(["label": label, "event": "start", "pid": Int(getpid()), "ram": ramBytes, "pages": pageBytes,
                  "disk": disk, "direct_io": swapDisk.direct, "pattern": pattern, "hot_set": hot * 4096, "writes": writes])

        var rng = XorShift(seed: seed)
        let skewed = pattern == "skewed"
        let writeThreshold = UInt64(writes * Double(UInt64.max >> 11)) // compared with 53 random bits
        var last = pager.counters
        var lastRequests = 0
        var lastFaults = faults()
        var faultLatency = Latencies(), allFaults = Latencies()
        // Where each second went: in guest faults (a read, a wait for a free frame), and in
        // accesses without one that took long enough to be a host fault (the pager cannot see
        // those otherwise; a preempted access counts too); the rest is the access loop's own work.
        var faultSeconds = 0.0, hostStallSeconds = 0.0
        // Guest faults on the hot set (skewed): whether the guest's replacement keeps its working set.
        var hotFaults = 0
        let hostStallThreshold = 50e-6
        var t = now()
        let end = start + duration
        while t < end && !stopRequested.load(ordering: .relaxed) {
            let intervalEnd = min(end, t + interval)
            faultLatency.reset()
            faultSeconds = 0
            hostStallSeconds = 0
            hotFaults = 0
            let budget = rate > 0 ? Int(rate * (intervalEnd - t)) : Int.max
            var n = 0
            while n < budget {
                if n & 63 == 0 {
                    if now() >= intervalEnd || stopRequested.load(ordering: .relaxed) { break }
                    try followBalloon()
                }
                n += 1
                let r = rng.next()
                let page = skewed && r % 10 != 0 ? Int((r >> 8) % UInt64(hot)) : Int((r >> 8) % UInt64(pageCount))
                let write = (rng.next() >> 11) < writeThreshold
                let a = now()
                let guestFault = try pager.access(page: page, write: write)
                let took = max(0, now() - a)
                if guestFault {
                    let ns = UInt64(took * 1e9)
                    faultLatency.add(ns)
                    allFaults.add(ns)
                    faultSeconds += took
                    if skewed && page < hot { hotFaults += 1 }
                } else if took >= hostStallThreshold {
                    hostStallSeconds += took
                }
            }
            if rate > 0 { while now() < intervalEnd && !stopRequested.load(ordering: .relaxed) { usleep(10_000) } }
            let c = pager.counters, f = faults(), res = residency()
            let requests = swapDisk.writeRequests.load(ordering: .relaxed)
            let elapsed = max(now() - t, 1e-6)
            out.emit([
                "label": label, "t": now() - start,
                "accesses": c.accesses - last.accesses, "rate": Double(c.accesses - last.accesses) / elapsed,
                "guest_faults": c.guestFaults - last.guestFaults, "swap_outs": c.swapOuts - last.swapOuts,
                "write_requests": requests - lastRequests,
                "swap_ins": c.swapIns - last.swapIns, "double_paged": c.doublePaged - last.doublePaged,
                "false_reads": c.falseReads - last.falseReads, "direct_reclaims": c.directReclaims - last.directReclaims,
                "host_majflt": f.major - lastFaults.major,
                "fault_p50_us": faultLatency.percentile(0.5), "fault_p99_us": faultLatency.percentile(0.99),
                "fault_ms": faultSeconds * 1000, "host_stall_ms": hostStallSeconds * 1000, "hot_faults": hotFaults,
                "rss": res.rss, "swap": res.swap, "guest_ram": pager.usableFrames * 4096,
            ])
            last = c
            lastRequests = requests
            lastFaults = f
            t = now()
        }
        let secs = max(now() - start, 1e-6)
        try pager.finishWriteback()
        let c = pager.counters
        try eventLog?.flush()
        out.emit(["label": label, "event": "summary", "t": secs, "accesses": c.accesses, "rate": Double(c.accesses) / secs,
                  "guest_faults": c.guestFaults, "swap_outs": c.swapOuts, "swap_ins": c.swapIns, "drops": c.drops,
                  "write_requests": swapDisk.writeRequests.load(ordering: .relaxed), "slots_in_use": pager.slots.inUse,
                  "double_paged": c.doublePaged, "false_reads": c.falseReads, "corrupt": c.corrupt,
                  "direct_reclaims": c.directReclaims,
                  "fault_p50_us": allFaults.percentile(0.5), "fault_p99_us": allFaults.percentile(0.99)])
        if let pauseBeforeVerify {
            swapDisk.close()
            out.emit(["label": label, "event": "paused", "t": now() - start])
            let waited = now()
            while access(pauseBeforeVerify, F_OK) != 0 {
                guard now() - waited < 900 else { throw ValidationError("\(pauseBeforeVerify) did not appear within 900 s") }
                usleep(100_000)
            }
            try swapDisk.reopen()
            out.emit(["label": label, "event": "resumed", "t": now() - start])
        }
        if verify {
            let bad = try pager.verifyAll()
            out.emit(["label": label, "event": "verify", "pages": pageCount, "bad": bad, "swap_ins": pager.counters.swapIns])
            try eventLog?.flush()
            if bad > 0 { Foundation.exit(3) }
        }
    }
}

GuestPagerCommand.main()
