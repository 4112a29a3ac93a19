import Foundation
import Synchronization
import Testing
import SwapfairCgroup
import SwapfairConfig
import SwapfairTestSupport
@testable import SwapfairDaemon

/// A backend that is as slow as systemd reclaiming inside PID 1, and may fail after the wait.
final class SlowBackend: LimitBackend {
    let delay: Double
    let fails: Mutex<Bool>
    let writes = Mutex<[[KnobChange]]>([])
    init(delay: Double, fails: Bool) {
        self.delay = delay
        self.fails = Mutex(fails)
    }
    var name: String { "slow" }
    var writesMayBlock: Bool { true }
    var removesEmptyScopes: Bool { true }
    func write(_ changes: [KnobChange], to group: Cgroup) throws(BackendError) {
        usleep(UInt32(delay * 1e6))
        writes.withLock { $0.append(changes) }
        if fails.withLock({ $0 }) { throw .cgroup(.busy(cgroup: group.description, operation: "a test")) }
        try CgroupfsBackend().write(changes, to: group)
    }
    func place(pid: Int32, vm: String, in scope: Cgroup) throws(BackendError) {}
    func scope(for vm: String, slice: String, root: CgroupRoot) -> Cgroup { root.group("\(slice)/vm-\(vm).scope") }
    func defaultUnit(for vm: String) -> String? { nil }
}

@Suite struct KnobWriterTests {
    @Test func aSlowWriteFinishesInTheBackgroundAndIsHandedBack() throws {
        let tree = try FakeCgroupTree()
        try tree.add("m/a.scope", FakeCgroupTree.Group(current: GiB))
        let g = CgroupRoot(path: tree.path).group("m/a.scope")
        let writer = KnobWriter(backend: SlowBackend(delay: 0.4, fails: false), bound: .milliseconds(50))
        let r = writer.set(g, [KnobChange(.memoryHigh, .bytes(512 * MiB))], mayReclaim: true)
        guard case .slow = r else { Issue.record("expected .slow, got \(r)"); return }
        #expect(writer.isPending(g))
        guard case .skipped = writer.set(g, [KnobChange(.memoryLow, .bytes(MiB))], mayReclaim: false) else {
            Issue.record("a second write to a busy group must wait"); return
        }
        #expect(writer.takeFinished(g) == nil)
        usleep(600_000)
        guard case .written = writer.takeFinished(g) else { Issue.record("the outcome is handed back"); return }
        #expect(writer.takeFinished(g) == nil)  // once
        #expect(try tree.read("m/a.scope", "memory.high") == "\(512 * MiB)")
    }

    @Test func theStatusShowsWhatIsInForceNotWhatASlowWriteAttempted() throws {
        let tree = try FakeCgroupTree()
        try tree.add("m/a.scope", FakeCgroupTree.Group(current: 3 * GiB))
        try tree.add("m/b.scope", FakeCgroupTree.Group(current: 3 * GiB))
        let backend = SlowBackend(delay: 0.3, fails: true)
        let log = LogCapture()
        let config = try configuration("""
            [host]
            memory_budget = "4G"
            [[vm]]
            name = "a"
            cgroup = "m/a.scope"
            [[vm]]
            name = "b"
            cgroup = "m/b.scope"
            """)
        let loop = ControlLoop(configuration: config, facts: facts, root: CgroupRoot(path: tree.path), logger: log.logger(),
                               writer: KnobWriter(backend: backend, bound: .milliseconds(20)), now: 0)
        loop.tick(now: 0)
        // Still running: nothing is in force yet, and the report says so.
        #expect(loop.report(now: 0).vms.allSatisfy { $0.memoryHigh == nil }, "\(loop.report(now: 0).vms.map(\.memoryHigh))")
        usleep(500_000)
        loop.tick(now: 1)
        #expect(log.contains("a slow write failed; reading the group's limits again"), "\(log.all)")
        #expect(loop.report(now: 1).vms.allSatisfy { $0.memoryHigh == nil })
        // Once the backend works again, the next ticks write the plan and the report follows.
        backend.fails.withLock { $0 = false }
        for t in 2...4 { loop.tick(now: Double(t)); usleep(400_000) }
        loop.tick(now: 5)
        let high = try #require(UInt64(try tree.read("m/a.scope", "memory.high")))
        #expect(loop.report(now: 5).vms.first { $0.name == "a" }?.memoryHigh == high)
    }
}
