import Foundation
import Testing
import SwapfairCgroup
import SwapfairTestSupport
@testable import SwapfairDaemon

/// Swap-in prefetch: which memory of a VM's processes is walked, which pages count as swapped,
/// and the walk against a real process (its own pidfd and `process_madvise`).
@Suite struct SwapPrefetchTests {
    @Test func onlyPrivateAnonymousRegionsAreWalked() {
        let maps = """
            55d0c0000000-55d0c0021000 r--p 00000000 fd:01 1234    /usr/bin/qemu-system-x86_64
            55d0c2000000-55d0c2400000 rw-p 00000000 00:00 0       [heap]
            7f0000000000-7f0040000000 rw-p 00000000 00:00 0
            7f0040000000-7f0080000000 rw-s 00000000 00:01 99      /memfd:pc.ram (deleted)
            7f0080000000-7f0080001000 ---p 00000000 00:00 0
            7f00a0000000-7f00a0100000 rw-p 00000000 fd:01 55      /var/lib/data.bin
            7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0       [stack]
            garbage line
            """
        #expect(AnonymousRegions.parse(maps) == [0x55d0_c200_0000..<0x55d0_c240_0000, 0x7f00_0000_0000..<0x7f00_4000_0000])
    }

    @Test func swappedPagesMakeRunsUpToTheBudget() {
        let swapped: UInt64 = 1 << 62, present: UInt64 = 1 << 63
        let entries: [UInt64] = [swapped, swapped, 0, present, swapped | 0x1234, swapped, swapped, present | swapped]
        var runs = SwappedRuns(budget: 4 * 4096)
        let taken = entries.withUnsafeBufferPointer { runs.add($0, from: 0x10000) }
        #expect(runs.runs.map(\.start) == [0x10000, 0x14000])
        #expect(runs.runs.map(\.length) == [0x2000, 0x2000])
        #expect(runs.full)
        #expect(taken == 6)  // it stopped after the fourth swapped page
        var all = SwappedRuns(budget: 1 << 30)
        #expect(entries.withUnsafeBufferPointer { all.add($0, from: 0) } == entries.count)
        #expect(all.bytes == 5 * 4096)  // a present page is not swapped, whatever bit 62 says
    }

    /// A fake /proc for this process: its maps name one real anonymous mapping of this test, its
    /// pagemap says which of that mapping's pages are "swapped". The advice itself is real
    /// (`process_madvise(MADV_WILLNEED)` through a pidfd on this process).
    @Test func aWalkAdvisesTheSwappedPagesAndMovesOn() throws {
        let pages = 64
        let size = pages * 4096
        guard let base = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              base != MAP_FAILED else { Issue.record("mmap failed"); return }
        defer { munmap(base, size) }
        let start = UInt64(UInt(bitPattern: base))
        let pid = getpid()
        let proc = NSTemporaryDirectory() + "swapfair-proc-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: "\(proc)/\(pid)", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: proc) }
        try String(format: "%lx-%lx rw-p 00000000 00:00 0\n", start, start + UInt64(size))
            .write(toFile: "\(proc)/\(pid)/maps", atomically: true, encoding: .utf8)
        // Pages 8-15 and 40-47 swapped.
        var entries = [UInt64](repeating: 0, count: pages)
        for p in Array(8..<16) + Array(40..<48) { entries[p] = 1 << 62 }
        let fd = open("\(proc)/\(pid)/pagemap", O_CREAT | O_WRONLY, 0o600)
        #expect(fd >= 0)
        let wrote = entries.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(start / 4096 * 8)) }
        close(fd)
        #expect(wrote == pages * 8)

        let tree = try FakeCgroupTree()
        var g = FakeCgroupTree.Group(current: 0)
        g.procs = [pid]
        try tree.add("swapfair.slice/vm-a.scope", g)
        let group = CgroupRoot(path: tree.path).group("swapfair.slice/vm-a.scope")
        let log = LogCapture()
        let prefetcher = SwapPrefetcher(proc: proc, logger: log.logger())
        defer { prefetcher.stop() }
        let job = SwapPrefetcher.Job(vm: "a", group: group, bytes: 8 * 4096)
        let (first, cursor) = prefetcher.prefetch(job, from: nil)
        #expect(first == 8 * 4096)
        #expect(cursor?.pid == pid && cursor?.address == start + 16 * 4096, "\(String(describing: cursor))")
        // The next request goes on from the cursor to the second run, then wraps to the start.
        let (second, cursor2) = prefetcher.prefetch(job, from: cursor)
        #expect(second == 8 * 4096)
        #expect(cursor2?.address == start + 48 * 4096)
        let (all, cursor3) = prefetcher.prefetch(SwapPrefetcher.Job(vm: "a", group: group, bytes: 1 << 30), from: cursor2)
        #expect(all == 16 * 4096)
        #expect(cursor3 == nil)
        #expect(log.contains("swap-in prefetch: 32 KiB"), "\(log.all)")

        // A walk bounded to 20 pages a request stops there and goes on from there next time.
        let short = SwapPrefetcher(proc: proc, scanLimit: 20, logger: log.logger())
        defer { short.stop() }
        let big = SwapPrefetcher.Job(vm: "a", group: group, bytes: 1 << 30)
        let (a, c1) = short.prefetch(big, from: nil)
        #expect(a == 8 * 4096 && c1?.address == start + 20 * 4096, "\(a) \(String(describing: c1))")
        let (b, c2) = short.prefetch(big, from: c1)
        #expect(b == 0 && c2?.address == start + 40 * 4096, "\(b) \(String(describing: c2))")
        let (c, c3) = short.prefetch(big, from: c2)
        #expect(c == 8 * 4096 && c3?.address == start + 60 * 4096, "\(c) \(String(describing: c3))")

        // Through the prefetcher's own thread, as the control loop asks.
        let threaded = SwapPrefetcher(proc: proc, logger: log.logger())
        defer { threaded.stop() }
        #expect(threaded.request(vm: "a", group: group, bytes: 1 << 30))
        var waited = 0
        while threaded.prefetched("a") == 0 && waited < 500 { usleep(10_000); waited += 1 }
        #expect(threaded.prefetched("a") == 16 * 4096)
        #expect(threaded.prefetched("b") == 0)
    }

    @Test func aProcessThatIsGoneIsSkippedQuietly() throws {
        let tree = try FakeCgroupTree()
        var g = FakeCgroupTree.Group(current: 0)
        g.procs = [Int32.max - 1]
        try tree.add("swapfair.slice/vm-a.scope", g)
        let prefetcher = SwapPrefetcher(logger: LogCapture().logger())
        defer { prefetcher.stop() }
        let (advised, _) = prefetcher.prefetch(SwapPrefetcher.Job(vm: "a", group: CgroupRoot(path: tree.path).group("swapfair.slice/vm-a.scope"),
                                                                 bytes: 1 << 20), from: nil)
        #expect(advised == 0)
    }

    @Test func aWalkOverARealProcessFailsOnNothing() throws {
        // This process's own memory through the real /proc (these hosts have no swap, so there is
        // little or nothing to read back): the maps, the pagemap and the pidfd all work.
        let tree = try FakeCgroupTree()
        var g = FakeCgroupTree.Group(current: 0)
        g.procs = [getpid()]
        try tree.add("swapfair.slice/vm-a.scope", g)
        let log = LogCapture()
        let prefetcher = SwapPrefetcher(logger: log.logger())
        defer { prefetcher.stop() }
        let (advised, _) = prefetcher.prefetch(SwapPrefetcher.Job(vm: "a", group: CgroupRoot(path: tree.path).group("swapfair.slice/vm-a.scope"),
                                                                 bytes: 1 << 20), from: nil)
        #expect(advised <= 1 << 20)
        #expect(!log.contains("failed"), "\(log.all)")
    }
}
