import Testing
@testable import SwapfairCgroup
import SwapfairSys

@Suite struct LRUGenTests {
    /// As printed by a 6.12 kernel (two memcgs, one node).
    static let sample = """
        memcg     1 /
         node     0
                  0       6180          0           0
                  1       6180          0          55
                  2       6180       1978           0
                  3       6180        103        1271
        memcg     2 /lab.slice/vm a
         node     0
                 18       6000      40979           3
                 19       4000          0           0
                 20       2000      10246           2
                 21          0          0           0

        """

    @Test func parsesMemcgsNodesAndGenerations() {
        let m = LRUGenFile.parse(Self.sample)
        #expect(m.count == 2)
        #expect(m[1].id == 2)
        #expect(m[1].path == "/lab.slice/vm a")
        let gens = m[1].nodes[0] ?? []
        #expect(gens.map(\.seq) == [18, 19, 20, 21])
        #expect(gens[0].anonPages == 40979 && gens[0].ageMilliseconds == 6000)
        #expect(gens.last?.pages == 0)
    }

    @Test func garbageLinesAreSkipped() {
        let m = LRUGenFile.parse("nonsense\nmemcg x /a\nmemcg 3 /b\n node 0\n 1 2 3\n 5 6 7 8\n")
        #expect(m.count == 1 && m[0].path == "/b" && m[0].nodes[0]?.count == 1)
    }

    /// What was touched since the sampler's previous aging is every generation born since, not
    /// just the two youngest: reclaim ages a memcg on its own, often several times a period.
    @Test func youngCountsEveryGenerationSinceThePreviousAging() {
        let gens = (LRUGenFile.parse(Self.sample)[1].nodes[0] ?? [])
        // Aged last at 19; reclaim made 20, this sampler 21: 19, 20 and 21 hold what was touched.
        let (y, t) = LRUGenSampler.young(gens, since: 19)
        #expect(t == 40979 + 3 + 10246 + 2)
        #expect(y == 10246 + 2)
        // Nothing newer than the previous aging survived: all is old.
        #expect(LRUGenSampler.young(gens, since: 22).young == 0)
        // Everything is newer than a generation already evicted.
        #expect(LRUGenSampler.young(gens, since: 5).young == t)
    }

    /// A memcg as MGLRU keeps it: an aging walks the page tables, moves what was touched into the
    /// youngest generation and adds a new, empty one (unless `stuck`: then the write does nothing).
    final class SimulatedMGLRU: LRUGenSource {
        var gens: [LRUGenFile.Generation] = [.init(seq: 3, ageMilliseconds: 0, anonPages: 1000, filePages: 0),
                                             .init(seq: 4, ageMilliseconds: 0, anonPages: 0, filePages: 0)]
        var touched: UInt64 = 0
        var stuck = false
        func read() throws(SysError) -> [LRUGenFile.Memcg] {
            [LRUGenFile.Memcg(id: 7, path: "/vm", nodes: [0: gens])]
        }
        func age(id: Int, node: Int, maxSeq: UInt64) throws(SysError) {
            guard !stuck, maxSeq == gens.last?.seq else { return }
            // The touched pages leave the older generations for the youngest.
            var moved: UInt64 = 0
            for i in gens.indices.dropLast() where moved < touched {
                let m = min(gens[i].anonPages, touched - moved)
                gens[i].anonPages -= m
                moved += m
            }
            gens[gens.count - 1].anonPages += moved
            gens.append(.init(seq: maxSeq + 1, ageMilliseconds: 0, anonPages: 0, filePages: 0))
            if gens.count > 4 {  // MAX_NR_GENS: the oldest folds into the next
                gens[1].anonPages += gens[0].anonPages
                gens.removeFirst()
            }
        }
    }

    @Test func anIdleVMReadsIdleAndAStuckAgingIsNotCountedAsActivity() throws {
        let kernel = SimulatedMGLRU()
        let sampler = LRUGenSampler(file: kernel)
        kernel.touched = 1000
        #expect(try sampler.sample(["vm"]).isEmpty)  // the first period primes
        #expect(try sampler.sample(["vm"])["vm"] == 1)  // busy: all of it touched
        kernel.touched = 10
        // A fall from all to almost nothing waits one period for confirmation.
        #expect(try sampler.sample(["vm"])["vm"] == 1)
        #expect(sampler.lastDetails.contains { $0.contains("read 1% active, held at 100%") })
        let idle = try #require(try sampler.sample(["vm"])["vm"])
        #expect(idle < 0.02, "idle read as \(idle)")
        // The aging stops working: nothing is measured (the youngest generation still holds what
        // was touched before), and the sampler says which VM.
        kernel.touched = 1000
        _ = try sampler.sample(["vm"])
        kernel.stuck = true
        #expect(try sampler.sample(["vm"])["vm"] == nil)
        #expect(sampler.lastStuck == ["vm"])
        kernel.stuck = false
        kernel.touched = 10
        #expect(try sampler.sample(["vm"]).isEmpty)  // primes again
        #expect(sampler.lastStuck.isEmpty)
        #expect(try sampler.sample(["vm"])["vm"] == 1)  // the fall from before the spell, held once
        let after = try #require(try sampler.sample(["vm"])["vm"])
        #expect(after < 0.02, "idle read as \(after) after the aging came back")
    }

    /// One period that reads a busy VM as idle (an aging that could not walk its page tables) is
    /// not reported; a smaller fall, or a rise, is reported at once.
    @Test func aSingleCollapsedReadingIsHeldAndARealOneFollowsAPeriodLater() throws {
        let kernel = SimulatedMGLRU()
        let sampler = LRUGenSampler(file: kernel)
        kernel.touched = 1000
        _ = try sampler.sample(["vm"])
        #expect(try sampler.sample(["vm"])["vm"] == 1)
        kernel.touched = 0               // the walk skipped: nothing moved
        #expect(try sampler.sample(["vm"])["vm"] == 1)
        kernel.touched = 1000            // and the next period walks again
        #expect(try sampler.sample(["vm"])["vm"] == 1)
        kernel.touched = 600             // a fall of less than half: at once
        let f = try #require(try sampler.sample(["vm"])["vm"])
        #expect(abs(f - 0.6) < 0.01)
        kernel.touched = 1000            // a rise: at once
        #expect(try sampler.sample(["vm"])["vm"] == 1)
    }

    /// A group removed and made again under the same name (a VM restarted in its scope) leaves its
    /// old memcg dying beside the new one while pages are still charged to it. Those pages are
    /// mapped by no process and never turn young; the live memcg alone is measured.
    @Test func aDyingMemcgUnderTheSamePathDoesNotDiluteTheLiveOne() throws {
        final class TwoMemcgs: LRUGenSource {
            let live = SimulatedMGLRU(), dying = SimulatedMGLRU()
            init() {
                live.touched = 1000
                dying.gens[0].anonPages = 300
            }
            func read() throws(SysError) -> [LRUGenFile.Memcg] {
                [LRUGenFile.Memcg(id: 3, path: "/vm", nodes: [0: dying.gens]),
                 LRUGenFile.Memcg(id: 9, path: "/vm", nodes: [0: live.gens])]
            }
            func age(id: Int, node: Int, maxSeq: UInt64) throws(SysError) {
                try (id == 3 ? dying : live).age(id: id, node: node, maxSeq: maxSeq)
            }
        }
        let sampler = LRUGenSampler(file: TwoMemcgs())
        #expect(try sampler.sample(["vm"]).isEmpty)
        #expect(try sampler.sample(["vm"])["vm"] == 1)
        #expect(LRUGenSampler.largestPerPath(try TwoMemcgs().read()) == [9])
    }
}
