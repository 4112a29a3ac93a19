import Foundation
import Testing

/// `swapfair-guestpager` as the double-paging benchmark runs it: its per-second report and its
/// verify pass, on a real file.
@Suite struct GuestPagerExecutableTests {
    var pager: String { productsDirectory() + "/swapfair-guestpager" }

    /// Each second's report says where the second went: the time in guest faults cannot exceed the
    /// second it is part of, is there when faults are, and the host's stalls (none expected here,
    /// nothing limits the pager's memory) fit beside it.
    @Test func eachSecondsReportSaysWhereTheSecondWent() throws {
        let disk = "/tmp/swapfair-gp-\(UUID().uuidString.prefix(8)).img"
        defer { unlink(disk) }
        let r = try run(pager, ["--ram", "4M", "--pages", "16M", "--disk", disk, "--duration", "2", "--verify"], timeout: 60)
        #expect(r.status == 0, "\(r.output.suffix(500))")
        let lines = r.output.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
        let seconds = lines.filter { $0["event"] == nil && $0["accesses"] != nil }
        try #require(seconds.count >= 2, "\(r.output.prefix(500))")
        var hotFaults = 0
        for s in seconds {
            let faults = (s["guest_faults"] as? Int) ?? -1
            let inFaults = try #require(s["fault_ms"] as? Double, "\(s)")
            let stalls = try #require(s["host_stall_ms"] as? Double, "\(s)")
            #expect(faults > 0, "a pager with 4 MiB of frames for 16 MiB of pages faults every second: \(s)")
            #expect(inFaults > 0 && inFaults <= 1100, "\(s)")
            #expect(stalls >= 0 && inFaults + stalls <= 1100, "\(s)")
            // The skewed pattern (the default): faults on the hot set are some of the faults.
            let hot = try #require(s["hot_faults"] as? Int, "\(s)")
            #expect(hot >= 0 && hot <= faults, "\(s)")
            hotFaults += hot
        }
        // The hot set's first touches fault, if nothing later does.
        #expect(hotFaults > 0)
        let verify = lines.first { ($0["event"] as? String) == "verify" }
        #expect((verify?["bad"] as? Int) == 0, "\(r.output.suffix(300))")
    }

    /// A reclaim batch lands on neighbouring swap slots and goes out as a few requests: on a real
    /// file, far fewer write requests than pages written, and every page reads back as written.
    @Test func aReclaimBatchGoesOutAsFewRequests() throws {
        let disk = "/tmp/swapfair-gp-\(UUID().uuidString.prefix(8)).img"
        defer { unlink(disk) }
        let r = try run(pager, ["--ram", "4M", "--pages", "16M", "--disk-size", "64M", "--disk", disk, "--duration", "2",
                                "--pattern", "uniform", "--verify"], timeout: 60)
        #expect(r.status == 0, "\(r.output.suffix(500))")
        let lines = r.output.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
        let summary = try #require(lines.first { ($0["event"] as? String) == "summary" }, "\(r.output.suffix(500))")
        let outs = try #require(summary["swap_outs"] as? Int), requests = try #require(summary["write_requests"] as? Int)
        let inUse = try #require(summary["slots_in_use"] as? Int)
        #expect(outs > 1000, "\(summary)")
        // A disk four times the pages: never half full, so slots are freed only by writes to pages
        // and most batches find neighbouring free slots (one request per page would fail this).
        #expect(requests * 6 < outs, "batches of 32 to neighbouring slots: \(requests) requests for \(outs) pages")
        #expect(inUse >= 3072 && inUse <= 4096, "at least the pages out of their 1,024 frames, at most one slot each: \(inUse)")
        var st = stat()
        #expect(stat(disk, &st) == 0 && st.st_size == 64 << 20, "the file is made the size asked for")
        let verify = lines.first { ($0["event"] as? String) == "verify" }
        #expect((verify?["bad"] as? Int) == 0, "\(r.output.suffix(300))")
    }

    @Test func aSwapDiskSmallerThanTheGuestsPagesIsRefused() throws {
        let r = try run(pager, ["--ram", "4M", "--pages", "16M", "--disk-size", "8M", "--disk", "/tmp/never-made.img", "--duration", "1"],
                        timeout: 30)
        #expect(r.status != 0)
        #expect(r.output.contains("bad --disk-size 8M"), "\(r.output.suffix(300))")
        #expect(access("/tmp/never-made.img", F_OK) != 0)
    }
}
