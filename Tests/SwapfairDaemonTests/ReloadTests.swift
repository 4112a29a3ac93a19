import Foundation
import Synchronization
import Testing
import SwapfairCgroup
import SwapfairConfig
import SwapfairPolicy
import SwapfairSys
import SwapfairTestSupport
@testable import SwapfairDaemon

/// Whether `condition` holds within `seconds`.
func eventually(_ seconds: Double = 3, _ condition: () -> Bool) -> Bool {
    let deadline = monotonicSeconds() + seconds
    while monotonicSeconds() < deadline {
        if condition() { return true }
        usleep(10_000)
    }
    return condition()
}

/// A reload as the daemon runs it: the file read again, the difference put in force between ticks.
@Suite struct ReloadTests {
    static let twoVMs = """
        [host]
        memory_budget = "4G"
        swap_budget = "2G"
        [[vm]]
        name = "a"
        cgroup = "machine.slice/a.scope"
        [[vm]]
        name = "b"
        cgroup = "machine.slice/b.scope"
        """

    struct Setup {
        let tree: FakeCgroupTree
        let file: String
        let loop: ControlLoop
        let reloader: Reloader
        let log: LogCapture
    }

    func setUp() throws -> Setup {
        let tree = try FakeCgroupTree()
        for name in ["a", "b", "c"] {
            var g = FakeCgroupTree.Group(current: 3 * GiB)
            g.active = 3 * GiB
            try tree.add("machine.slice/\(name).scope", g)
        }
        let file = tree.path + "/swapfair.toml"
        try Self.twoVMs.write(toFile: file, atomically: true, encoding: .utf8)
        let log = LogCapture()
        let c = try ConfigLoader.load(path: file, facts: facts)
        let loop = ControlLoop(configuration: c, facts: facts, root: CgroupRoot(path: tree.path), logger: log.logger(), now: 0)
        let reloader = Reloader(explicitPath: file, facts: facts, current: c, devices: nil, logger: log.logger(), apply: { change in
            loop.reconfigure(change, now: 0)
        })
        return Setup(tree: tree, file: file, loop: loop, reloader: reloader, log: log)
    }

    @Test func aVMAddedIsManagedAndOneRemovedIsLetGoWithNoLimitOfOurs() throws {
        let s = try setUp()
        s.loop.tick(now: 0)
        // A write that outlasts the writer's bound finishes in the background: wait for it.
        #expect(eventually { (try? s.tree.read("machine.slice/b.scope", "memory.high")) != "max\n" }, "\(s.log.all)")
        try (Self.twoVMs.replacingOccurrences(of: "name = \"b\"\ncgroup = \"machine.slice/b.scope\"",
                                              with: "name = \"c\"\nweight = 300\ncgroup = \"machine.slice/c.scope\""))
            .write(toFile: s.file, atomically: true, encoding: .utf8)
        let report = s.reloader.reload()
        #expect(report.outcome == .applied)
        #expect(report.changes == ["vm c: added", "vm b: removed"])
        // b's group is left as without swapfair: no soft limit, no protection, no swap cap.
        #expect(eventually {
            (try? s.tree.read("machine.slice/b.scope", "memory.high")) == "max"
                && (try? s.tree.read("machine.slice/b.scope", "memory.low")) == "0"
                && (try? s.tree.read("machine.slice/b.scope", "memory.swap.max")) == "max"
        }, "\(s.log.all)")
        let plans = s.loop.tick(now: 1)
        #expect(plans.map(\.name) == ["a", "c"])
        // c's weight of 300 against a's 100: three quarters of the budget, from the first plan on.
        let c = try #require(plans.first { $0.name == "c" })
        #expect(abs(Double(c.entitled) - 3 * Double(GiB)) <= Double(MiB))
        #expect(s.loop.report(now: 1).vms.map(\.name) == ["a", "c"])
    }

    @Test func aChangedWeightMovesTheShareAtTheNextTickAndKeepsTheState() throws {
        let s = try setUp()
        s.loop.tick(now: 0)
        let stateBefore = s.loop.vms[0].state
        try Self.twoVMs.replacingOccurrences(of: "name = \"a\"", with: "name = \"a\"\nweight = 300")
            .write(toFile: s.file, atomically: true, encoding: .utf8)
        #expect(s.reloader.reload().changes == ["vm a: weight, swap_weight changed"])
        #expect(s.loop.vms[0].state == stateBefore)
        let a = try #require(s.loop.tick(now: 1).first { $0.name == "a" })
        #expect(abs(Double(a.entitled) - 3 * Double(GiB)) <= Double(MiB))
    }

    @Test func anInvalidFileIsRefusedWholeWithEveryProblemAndNothingChanges() throws {
        let s = try setUp()
        s.loop.tick(now: 0)
        let before = s.loop.configuration
        try (Self.twoVMs + "\n[[vm]]\nname = \"a\"\nweight = -1\nbogus = 1\n").write(toFile: s.file, atomically: true, encoding: .utf8)
        let report = s.reloader.reload()
        #expect(report.outcome == .refused)
        #expect(report.errors.count >= 2, "\(report.errors)")
        #expect(s.loop.configuration == before && s.reloader.current == before)
        #expect(s.log.all.filter { $0.contains("reload refused: the configuration is invalid") }.count == report.errors.count)
        #expect(s.loop.tick(now: 1).map(\.name) == ["a", "b"])
    }

    @Test func aKeyThatCannotChangeLiveIsRefusedByNameAndTheRestApplies() throws {
        let s = try setUp()
        try Self.twoVMs.replacingOccurrences(of: "[host]", with: "[host]\nslice = \"other.slice\"\ninterval = 2")
            .write(toFile: s.file, atomically: true, encoding: .utf8)
        let report = s.reloader.reload()
        #expect(report.outcome == .applied)
        #expect(report.changes == ["host.interval changed"])
        #expect(report.refused.count == 1 && report.refused[0].hasPrefix("host.slice"))
        #expect(s.loop.configuration.host.interval == 2 && s.loop.configuration.host.slice == "swapfair.slice")
        // The same file again: nothing new to refuse or apply beyond the kept key.
        #expect(s.reloader.reload().changes.isEmpty)
    }

    /// Reloads asked for while the loop sleeps run between its ticks, and every asker gets the outcome.
    @Test func reloadsAskedForMeanwhileRunBetweenTicks() throws {
        let s = try setUp()
        let daemon = Daemon()
        let ticks = Mutex(0)
        let done = DispatchSemaphore(value: 0)
        startThread(named: "test-loop") {
            daemon.run(interval: { 0.05 }, maxTicks: 40, reload: { ReloadReport(outcome: .unchanged) }) {
                ticks.withLock { $0 += 1 }
                return UInt64(ticks.withLock { $0 })
            }
            done.signal()
        }
        _ = s
        let outcomes = (0..<3).map { _ in daemon.reloadAndWait(timeout: 5).outcome }
        #expect(outcomes == [.unchanged, .unchanged, .unchanged])
        daemon.requestStop()
        #expect(done.wait(timeout: .now() + 5) == .success)
    }
}
