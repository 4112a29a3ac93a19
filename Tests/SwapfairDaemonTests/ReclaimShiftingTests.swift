import Foundation
import Synchronization
import Testing
import SwapfairCgroup
import SwapfairConfig
import SwapfairQMP
import SwapfairTestSupport
import SwapfairTracking
@testable import SwapfairDaemon

/// Reclaim shifting through the control loop: the tracker's double paging grows the shift, the
/// VM's balloon (a real QMP peer on a socket) is asked for it, memory.high is raised by what the
/// balloon took, the shift survives a restart through its record, and a clean stop undoes it.
@Suite struct ReclaimShiftingTests {
    /// A VMM's balloon that takes what it is asked at once.
    final class Balloon: Sendable {
        final class Target: Sendable { let value = Mutex<UInt64>(2 * GiB) }
        let target = Target()
        let responder: BalloonResponder
        init(path: String) throws {
            let t = target
            responder = try BalloonResponder(path: path, setTarget: { v in t.value.withLock { $0 = v } },
                                             actual: { t.value.withLock { $0 } })
            responder.start()
        }
        var now: UInt64 { target.value.withLock { $0 } }
    }

    let dir = "/tmp/swapfair-shift-\(UUID().uuidString.prefix(8))"

    func config(_ qmp: String) throws -> SwapfairConfiguration {
        try configuration("""
            [host]
            memory_budget = "4G"
            state_dir = "\(dir)"
            host_swap_device = "/dev/null"
            [[vm]]
            name = "a"
            cgroup = "machine.slice/a.scope"
            swap_device = { size = "1G" }
            balloon_qmp = "\(qmp)"
            guest_memory = "2G"
            [[vm]]
            name = "b"
            cgroup = "machine.slice/b.scope"
            """)
    }

    /// `pages` host swap-ins of VM a's pages, each swapped out by its guest right after.
    func doublePage(_ tracker: DoublePagingTracker, pages: Int, now: Double, seed: inout UInt64) {
        let page = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { page.deallocate() }
        for _ in 0..<pages {
            seed &+= 1
            for w in 0..<512 { page.storeBytes(of: seed &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(w), toByteOffset: w * 8, as: UInt64.self) }
            tracker.hostSwappedIn(UnsafeRawBufferPointer(page), now: now)
            tracker.guestSwappedOut(vm: "a", UnsafeRawBufferPointer(page), now: now)
        }
    }

    /// One tick, then waits for the balloon exchange it started (it runs on the driver's queue).
    func tick(_ loop: ControlLoop, _ t: Double) -> [String: UInt64] {
        let plans = loop.tick(now: t)
        for _ in 0..<250 where loop.vms[0].balloon?.state.busy == true { usleep(4000) }
        return Dictionary(uniqueKeysWithValues: plans.map { ($0.name, $0.memoryHigh) })
    }

    @Test func doublePagingShiftsReclaimIntoTheGuestAndACalmUndoesIt() throws {
        let tree = try FakeCgroupTree()
        for name in ["a", "b"] {
            var g = FakeCgroupTree.Group(current: 1800 * MiB)
            g.active = 1800 * MiB
            try tree.add("machine.slice/\(name).scope", g)
        }
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let qmp = "/tmp/swapfair-shift-\(UUID().uuidString.prefix(8)).qmp"
        let balloon = try Balloon(path: qmp)
        defer { balloon.responder.stop() }
        let log = LogCapture()
        let tracker = DoublePagingTracker()
        var loop = ControlLoop(configuration: try config(qmp), facts: facts, root: CgroupRoot(path: tree.path),
                               logger: log.logger(), now: 0)
        loop.tracker = tracker
        var seed: UInt64 = 0
        let base = tick(loop, 0)
        #expect(loop.vms[0].balloon?.state.guestMemory == 2 * GiB)
        #expect(balloon.now == 2 * GiB, "nothing asked of a balloon while there is no double paging")
        var highs: [[String: UInt64]] = []
        for t in 1...6 {
            doublePage(tracker, pages: 256, now: Double(t) - 0.5, seed: &seed)  // 1 MiB/s, every swap-out
            highs.append(tick(loop, Double(t)))
        }
        // 2 GiB guest: steps of 128 MiB up to 25% (512 MiB).
        #expect(loop.vms[0].shift?.shift == 512 * MiB)
        #expect(balloon.now == 1536 * MiB, "the balloon leaves the guest 1.5 GiB")
        #expect(log.contains("reclaim shift 0 B → 128 MiB"), "\(log.all.filter { $0.contains("shift") })")
        let raised = try #require(loop.vms[0].plan?.reclaimShift)
        #expect(raised == 512 * MiB, "memory.high is raised by what the balloon took")
        let written = UInt64(try tree.read("machine.slice/a.scope", "memory.high").trimmingCharacters(in: .whitespacesAndNewlines))
        #expect(written != nil && written == highs.last?["a"], "the raised limit is what was written")
        #expect((highs.last?["a"] ?? 0) > (base["a"] ?? 0) + 256 * MiB)
        // The record a restart resumes from.
        #expect(try ShiftRecord.load(stateDir: dir, vm: "a") == ShiftRecord(guestMemory: 2 * GiB, shift: 512 * MiB))
        let status = loop.report(now: 6).vms[0].reclaimShift
        #expect(status?.shift == 512 * MiB && status?.balloonActual == 1536 * MiB && status?.error == nil)
        #expect(StatusTable.render(loop.report(now: 6)).contains("reclaim shifting"))

        // A restart (a crash: nothing undone) resumes the shift.
        loop = ControlLoop(configuration: try config(qmp), facts: facts, root: CgroupRoot(path: tree.path),
                           logger: log.logger(), now: 7)
        loop.tracker = DoublePagingTracker()
        #expect(loop.vms[0].shift?.shift == 512 * MiB)
        #expect(log.contains("reclaim shift resumed from before the restart"))
        _ = tick(loop, 7)
        #expect(loop.vms[0].plan?.reclaimShift == 512 * MiB, "the raise stays across the restart")

        // Calm: a step back after 30 quiet ticks.
        for t in 8...38 { _ = tick(loop, Double(t)) }
        #expect(loop.vms[0].shift?.shift == 384 * MiB)
        #expect(balloon.now == 1664 * MiB)

        // A clean stop gives the guest all its RAM back and forgets the record.
        loop.finish()
        #expect(balloon.now == 2 * GiB)
        #expect(try ShiftRecord.load(stateDir: dir, vm: "a") == nil)
        #expect(log.contains("reclaim shift undone at stop"))
    }

    /// A balloon that accepts targets and never moves (a guest without a balloon driver): the
    /// raise goes ahead of it for a grace period only, then falls back to what it took: nothing.
    @Test func aBalloonThatDoesNotMoveGetsNoRaiseAfterItsGrace() throws {
        let tree = try FakeCgroupTree()
        for name in ["a", "b"] { try tree.add("machine.slice/\(name).scope", FakeCgroupTree.Group(current: 1800 * MiB)) }
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let qmp = "/tmp/swapfair-shift-\(UUID().uuidString.prefix(8)).qmp"
        let stuck = try BalloonResponder(path: qmp, setTarget: { _ in }, actual: { 2 * GiB })
        stuck.start()
        defer { stuck.stop() }
        let loop = ControlLoop(configuration: try config(qmp), facts: facts, root: CgroupRoot(path: tree.path),
                               logger: LogCapture().logger(), now: 0)
        let tracker = DoublePagingTracker()
        loop.tracker = tracker
        var seed: UInt64 = 0
        _ = tick(loop, 0)
        doublePage(tracker, pages: 256, now: 0.5, seed: &seed)
        _ = tick(loop, 1)
        doublePage(tracker, pages: 256, now: 1.5, seed: &seed)
        _ = tick(loop, 2)
        #expect(loop.vms[0].shift?.shift == 128 * MiB, "no second step while the balloon has taken nothing")
        #expect(loop.vms[0].plan?.reclaimShift == 128 * MiB, "ahead of the balloon: the target it accepted")
        loop.balloonGrace = 0
        _ = tick(loop, 3)
        #expect(loop.vms[0].plan?.reclaimShift == 0, "past its grace a balloon that took nothing gets no raise")
    }

    /// A record from before a restart whose VMM has since started afresh (all its RAM): forgotten,
    /// nothing raised, nothing asked of the new balloon.
    @Test func aRecordedShiftIsForgottenWhenTheGuestHasAllItsRAM() throws {
        let tree = try FakeCgroupTree()
        for name in ["a", "b"] { try tree.add("machine.slice/\(name).scope", FakeCgroupTree.Group(current: 1800 * MiB)) }
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try ShiftRecord(guestMemory: 2 * GiB, shift: 256 * MiB).save(stateDir: dir, vm: "a")
        let qmp = "/tmp/swapfair-shift-\(UUID().uuidString.prefix(8)).qmp"
        let balloon = try Balloon(path: qmp)
        defer { balloon.responder.stop() }
        let log = LogCapture()
        let loop = ControlLoop(configuration: try config(qmp), facts: facts, root: CgroupRoot(path: tree.path),
                               logger: log.logger(), now: 0)
        loop.tracker = DoublePagingTracker()
        for _ in 0..<250 where loop.vms[0].balloon?.state.answered != true { usleep(4000) }
        _ = tick(loop, 1)
        _ = tick(loop, 2)
        #expect(log.contains("the shift recorded before the restart is forgotten"))
        #expect(loop.vms[0].shift?.shift == 0 && loop.vms[0].plan?.reclaimShift == 0)
        #expect(try ShiftRecord.load(stateDir: dir, vm: "a") == nil)
        #expect(balloon.now == 2 * GiB)
    }

    @Test func aBalloonThatCannotBeReachedIsNamedAndNothingIsRaised() throws {
        let tree = try FakeCgroupTree()
        for name in ["a", "b"] { try tree.add("machine.slice/\(name).scope", FakeCgroupTree.Group(current: 1800 * MiB)) }
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let log = LogCapture()
        let loop = ControlLoop(configuration: try config("/nonexistent/a.qmp"), facts: facts,
                               root: CgroupRoot(path: tree.path), logger: log.logger(), now: 0)
        let tracker = DoublePagingTracker()
        loop.tracker = tracker
        var seed: UInt64 = 0
        _ = tick(loop, 0)
        for t in 1...3 {
            doublePage(tracker, pages: 256, now: Double(t) - 0.5, seed: &seed)
            _ = tick(loop, Double(t))
        }
        // The shift is asked for (configured guest memory), but the balloon took nothing: no raise.
        #expect((loop.vms[0].shift?.shift ?? 0) > 0)
        #expect(loop.vms[0].plan?.reclaimShift == 0)
        #expect(log.contains("cannot reach the VM's balloon"))
        #expect(loop.report(now: 3).vms[0].reclaimShift?.error?.contains("/nonexistent/a.qmp") == true)
    }
}
