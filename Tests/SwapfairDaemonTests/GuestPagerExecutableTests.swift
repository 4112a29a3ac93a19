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
}
