import Foundation
import Testing
import SwapfairCgroup
import SwapfairConfig
import SwapfairPolicy
import SwapfairTestSupport
@testable import SwapfairDaemon

@Suite struct ControlLoopTests {
    static let threeVMs = """
        [host]
        memory_budget = "4G"
        swap_budget = "2G"
        [[vm]]
        name = "a"
        cgroup = "machine.slice/a.scope"
        reservation = "256M"
        [[vm]]
        name = "b"
        cgroup = "machine.slice/b.scope"
        [[vm]]
        name = "c"
        weight = 200
        cgroup = "machine.slice/c.scope"
        io_weight = 500
        limit = "3G"
        """

    func setUp(_ tree: FakeCgroupTree, usage: UInt64 = 3 * GiB) throws {
        for name in ["a", "b", "c"] {
            var g = FakeCgroupTree.Group(current: usage)
            g.active = usage
            try tree.add("machine.slice/\(name).scope", g)
        }
    }

    @Test func aTickWritesEveryKnobWithinTheBudget() throws {
        let tree = try FakeCgroupTree()
        try setUp(tree)
        let log = LogCapture()
        let loop = ControlLoop(configuration: try configuration(Self.threeVMs), facts: facts,
                               root: CgroupRoot(path: tree.path), logger: log.logger(), now: 0)
        let plans = loop.tick(now: 0)
        #expect(plans.count == 3)
        var sum: UInt64 = 0
        for name in ["a", "b", "c"] {
            let high = try #require(UInt64(try tree.read("machine.slice/\(name).scope", "memory.high")), "\(log.all)")
            sum += high
        }
        #expect(sum <= 4 * GiB)
        #expect(try tree.read("machine.slice/a.scope", "memory.low") == "\(256 * MiB)")
        #expect(try tree.read("machine.slice/c.scope", "memory.max") == "\(3 * GiB)")
        #expect(try tree.read("machine.slice/c.scope", "io.weight") == "default 500")
        #expect(try tree.read("machine.slice/b.scope", "memory.max") == "max\n")  // no limit: left alone
        #expect(log.contains("memory.high max →"))
        #expect(log.contains("VM found"))
        // Every change says why.
        #expect(log.all.filter { $0.hasPrefix("info memory.high") }.allSatisfy { $0.contains("why=") })
    }

    @Test func weightsDecideTheSplitWhenAllWantMore() throws {
        let tree = try FakeCgroupTree()
        try setUp(tree, usage: 4 * GiB)
        let loop = ControlLoop(configuration: try configuration(Self.threeVMs), facts: facts,
                               root: CgroupRoot(path: tree.path), logger: LogCapture().logger(), now: 0)
        let plans = loop.tick(now: 0)
        let byName = Dictionary(uniqueKeysWithValues: plans.map { ($0.name, $0.entitled) })
        // 4 GiB by weights 100:100:200.
        #expect(abs(Double(byName["a"]!) - 1 * Double(GiB)) <= 4096)
        #expect(abs(Double(byName["b"]!) - 1 * Double(GiB)) <= 4096)
        #expect(abs(Double(byName["c"]!) - 2 * Double(GiB)) <= 4096)
    }

    @Test func aVMThatExitsIsDroppedAndOneThatReturnsIsPickedUp() throws {
        let tree = try FakeCgroupTree()
        try setUp(tree)
        let log = LogCapture()
        let loop = ControlLoop(configuration: try configuration(Self.threeVMs), facts: facts,
                               root: CgroupRoot(path: tree.path), logger: log.logger(), now: 0)
        loop.tick(now: 0)
        #expect(loop.runningVMs == ["a", "b", "c"])
        var gone = FakeCgroupTree.Group(current: 0)
        gone.populated = false
        gone.procs = []
        try tree.update("machine.slice/b.scope", gone)
        try tree.remove("machine.slice/c.scope")
        // A removed group is noticed within four ticks (at once on a real kernel: ENODEV).
        var plans: [VMPlan] = []
        for t in 1...4 { plans = loop.tick(now: Double(t)) }
        #expect(plans.map(\.name) == ["a"])
        #expect(loop.runningVMs == ["a"])
        #expect(log.contains("VM dropped") && log.contains("no processes in machine.slice/b.scope"))
        #expect(log.contains("vanished"))
        // The rest of the budget goes to the one left.
        #expect(UInt64(try tree.read("machine.slice/a.scope", "memory.high")) ?? 0 >= 3 * GiB)
        // b comes back.
        try tree.update("machine.slice/b.scope", FakeCgroupTree.Group(current: GiB))
        try tree.add("machine.slice/c.scope", FakeCgroupTree.Group(current: GiB))
        loop.tick(now: 5)
        loop.tick(now: 6)
        #expect(Set(loop.runningVMs) == ["a", "b", "c"])
    }

    /// Above `parallelReadThreshold` groups the reads run on several threads: every VM must still
    /// get its own group's numbers, and exits and removals must still be noticed.
    @Test func manyVMsAreReadInParallelEachFromItsOwnGroup() throws {
        let n = ControlLoop.parallelReadThreshold * 2 + 7
        let tree = try FakeCgroupTree()
        var text = "[host]\nmemory_budget = \"12G\"\nswap_budget = \"8G\"\n"
        for i in 0..<n {
            var g = FakeCgroupTree.Group(current: UInt64(100 + i) << 20)
            g.swap = UInt64(i) << 20
            try tree.add("machine.slice/vm\(i).scope", g)
            text += "[[vm]]\nname = \"vm\(i)\"\ncgroup = \"machine.slice/vm\(i).scope\"\n"
        }
        let loop = ControlLoop(configuration: try configuration(text), facts: facts,
                               root: CgroupRoot(path: tree.path), logger: LogCapture().logger(), now: 0)
        loop.tick(now: 0)
        #expect(loop.runningVMs.count == n)
        for i in 0..<n {
            #expect(loop.vms[i].observation?.memoryCurrent == UInt64(100 + i) << 20)
            #expect(loop.vms[i].observation?.swapCurrent == UInt64(i) << 20)
        }
        var gone = FakeCgroupTree.Group(current: 0)
        gone.populated = false
        try tree.update("machine.slice/vm3.scope", gone)
        try tree.remove("machine.slice/vm\(n - 1).scope")
        loop.tick(now: 1)
        #expect(loop.runningVMs.count == n - 2)
        #expect(!loop.runningVMs.contains("vm3") && !loop.runningVMs.contains("vm\(n - 1)"))
    }

    /// "populated" is read when inotify says cgroup.events changed, not every tick: an exit is
    /// still seen on the very next tick, between the periodic re-reads.
    @Test func anExitIsSeenOnTheNextTickThroughInotify() throws {
        let tree = try FakeCgroupTree()
        try setUp(tree)
        let loop = ControlLoop(configuration: try configuration(Self.threeVMs), facts: facts,
                               root: CgroupRoot(path: tree.path), logger: LogCapture().logger(), now: 0)
        for t in 0..<3 { loop.tick(now: Double(t)) }
        #expect(loop.runningVMs == ["a", "b", "c"])
        var gone = FakeCgroupTree.Group(current: GiB)
        gone.populated = false
        try tree.update("machine.slice/b.scope", gone)
        loop.tick(now: 3)
        #expect(loop.runningVMs == ["a", "c"])
        try tree.update("machine.slice/b.scope", FakeCgroupTree.Group(current: GiB))
        loop.tick(now: 4)
        #expect(loop.runningVMs == ["a", "b", "c"])
    }

    @Test func aRestartedDaemonResumesFromTheLimitsItFinds() throws {
        let tree = try FakeCgroupTree()
        try setUp(tree)
        let config = try configuration(Self.threeVMs)
        let first = ControlLoop(configuration: config, facts: facts, root: CgroupRoot(path: tree.path),
                                logger: LogCapture().logger(), now: 0)
        for t in 0..<5 { first.tick(now: Double(t)) }
        let before = try ["a", "b", "c"].map { try tree.read("machine.slice/\($0).scope", "memory.high") }
        // A new daemon: no memory of the old one but the cgroup files.
        let log = LogCapture()
        let second = ControlLoop(configuration: config, facts: facts, root: CgroupRoot(path: tree.path),
                                 logger: log.logger(), now: 100)
        let plans = second.tick(now: 100)
        #expect(plans.allSatisfy { if case .start = $0.decision { return true } else { return false } })
        let after = try ["a", "b", "c"].map { try tree.read("machine.slice/\($0).scope", "memory.high") }
        for (x, y) in zip(before, after) {
            let d = Double(UInt64(x) ?? 0) - Double(UInt64(y) ?? 0)
            #expect(abs(d) <= Double(300 * MiB), "restart moved memory.high from \(x) to \(y)")
        }
        #expect(!log.contains("memory.high max"))
    }

    @Test func aMissingCgroupIsReportedOnceAndNotFatal() throws {
        let tree = try FakeCgroupTree()
        let log = LogCapture()
        let loop = ControlLoop(configuration: try configuration(Self.threeVMs), facts: facts,
                               root: CgroupRoot(path: tree.path), logger: log.logger(), now: 0)
        for t in 0..<3 { loop.tick(now: Double(t)) }
        #expect(loop.runningVMs.isEmpty)
        #expect(log.all.filter { $0.contains("cgroup machine.slice/a.scope does not exist") }.count == 1)
        let report = loop.report(now: 3)
        #expect(report.vms.allSatisfy { $0.state.contains("does not exist") })
    }

    /// A reading that fails is not known, not zero: the VM is planned from what was last known,
    /// so its share and limits stay where they were, and it is read again next tick.
    @Test func unreadableStatisticsHoldWhatWasLastKnown() throws {
        let tree = try FakeCgroupTree()
        try setUp(tree)
        let log = LogCapture()
        let loop = ControlLoop(configuration: try configuration(Self.threeVMs), facts: facts,
                               root: CgroupRoot(path: tree.path), logger: log.logger(), now: 0)
        let first = loop.tick(now: 0)
        let high = try tree.read("machine.slice/a.scope", "memory.high")
        try tree.write("machine.slice/a.scope", "memory.stat", "garbage\n")
        let plans = loop.tick(now: 1)
        #expect(plans.map(\.name) == ["a", "b", "c"])
        #expect(plans[0].entitled == first[0].entitled && plans[0].memoryHigh == first[0].memoryHigh)
        #expect(try tree.read("machine.slice/a.scope", "memory.high") == high)
        #expect(log.contains("holding what was last known") && log.contains("malformed"))
        try tree.update("machine.slice/a.scope", FakeCgroupTree.Group(current: GiB))
        #expect(loop.tick(now: 2).map(\.name) == ["a", "b", "c"])
        #expect(loop.vms[0].observation?.memoryCurrent == GiB)
    }

    @Test func aPidFileVMIsMovedIntoItsScope() throws {
        let tree = try FakeCgroupTree()
        let proc = try FakeCgroupTree()
        try FileManager.default.createDirectory(atPath: proc.path + "/321", withIntermediateDirectories: true)
        try "0::/user.slice\n".write(toFile: proc.path + "/321/cgroup", atomically: false, encoding: .utf8)
        try "321\n".write(toFile: proc.path + "/vm.pid", atomically: false, encoding: .utf8)
        // The fake kernel: the slice exists with controller files, so the scope can be made.
        try tree.add("swapfair.slice/vm-p.scope", FakeCgroupTree.Group(current: GiB))
        try tree.write("swapfair.slice/vm-p.scope", "cgroup.procs", "")
        let config = try configuration("""
            [[vm]]
            name = "p"
            pidfile = "\(proc.path)/vm.pid"
            """)
        let loop = ControlLoop(configuration: config, facts: facts, root: CgroupRoot(path: tree.path),
                               logger: LogCapture().logger(), proc: proc.path, now: 0)
        loop.tick(now: 0)
        #expect(try tree.read("swapfair.slice/vm-p.scope", "cgroup.procs") == "321")
        #expect(loop.runningVMs == ["p"])
    }

    @Test func dryRunWritesNothing() throws {
        let tree = try FakeCgroupTree()
        try setUp(tree)
        let loop = ControlLoop(configuration: try configuration(Self.threeVMs), facts: facts,
                               root: CgroupRoot(path: tree.path), logger: LogCapture().logger(), now: 0)
        let plans = loop.dryRun(now: 0)
        #expect(plans.count == 3)
        for name in ["a", "b", "c"] {
            #expect(try tree.read("machine.slice/\(name).scope", "memory.high") == "max\n")
        }
    }
}
