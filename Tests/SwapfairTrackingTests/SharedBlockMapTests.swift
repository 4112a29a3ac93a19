import Foundation
import Testing
import SwapfairTracking

@Suite struct SharedBlockMapTests {
    static func map(slots: Int = 8, physical: Int = 12, guest: Int = 16) -> SharedBlockMap {
        SharedBlockMap(hostMap: BlockTable(anonymous: slots), physicalBlocks: physical, guests: ["a": BlockTable(anonymous: guest)])
    }

    @Test func aSharedSlotIsRedirectedWhenTheHostWritesIt() {
        var m = Self.map()
        #expect(m.spareBlocks == 4 && m.physical(ofSlot: 3) == 3)
        do { let ok = m.refer(vm: "a", block: 5, to: 3); #expect(ok) }
        #expect(m.promised == 1 && m.reference(vm: "a", block: 5) == 3)
        guard let target = m.writeTarget(slot: 3) else { Issue.record("no block for slot 3"); return }
        #expect(target != 3 && target >= 8)
        m.commitWrite(slot: 3, target: target)
        #expect(m.physical(ofSlot: 3) == target && m.promised == 0 && m.spareBlocks == 3)
        // The guest's block still names block 3, which nobody else may take now.
        #expect(m.reference(vm: "a", block: 5) == 3 && m.references(3) == 1)
        m.release(vm: "a", block: 5)
        #expect(m.spareBlocks == 4 && m.reference(vm: "a", block: 5) == nil)
        #expect(m.agreesWithTables())
    }

    @Test func anUnsharedSlotIsWrittenInPlace() {
        var m = Self.map()
        guard let t = m.writeTarget(slot: 2) else { Issue.record("no block for slot 2"); return }
        #expect(t == 2)
        m.commitWrite(slot: 2, target: t)
        #expect(m.physical(ofSlot: 2) == 2 && m.spareBlocks == 4)
    }

    /// A spare is never promised twice: with 4 spares, a fifth host-owned block cannot be shared.
    @Test func referencesStopWhenTheSparesCouldNotCoverThem() {
        var m = Self.map()
        for b in 0..<4 { let ok = m.refer(vm: "a", block: b, to: b); #expect(ok) }
        do { let ok = m.refer(vm: "a", block: 4, to: 4); #expect(!ok) }
        // A second reference to an already shared block needs no new spare.
        do { let ok = m.refer(vm: "a", block: 9, to: 2); #expect(ok) }
        #expect(m.promised == 4 && m.references(2) == 2)
    }

    @Test func aSpareIsNeverReferred() {
        var m = Self.map()
        do { let ok = m.refer(vm: "a", block: 0, to: 10); #expect(!ok) }
        do { let ok = m.refer(vm: "b", block: 0, to: 1); #expect(!ok) }
        do { let ok = m.refer(vm: "a", block: 99, to: 1); #expect(!ok) }
    }

    /// The guests all let go while the host's redirected write was under way: the old block
    /// becomes a spare when the write commits, and no promise is counted twice.
    @Test func referencesDroppedDuringARedirectLeaveTheAccountingExact() {
        var m = Self.map()
        do { let ok = m.refer(vm: "a", block: 1, to: 6); #expect(ok) }
        guard let t = m.writeTarget(slot: 6) else { Issue.record("no block for slot 6"); return }
        m.release(vm: "a", block: 1)
        m.commitWrite(slot: 6, target: t)
        #expect(m.promised == 0 && m.spareBlocks == 4 && m.agreesWithTables())
    }

    /// Random host writes, guest references and releases: the live accounting always equals a
    /// rebuild from the tables, as a restarted daemon would make it.
    @Test func theAccountingAlwaysMatchesARebuildFromTheTables() {
        var m = Self.map(slots: 32, physical: 40, guest: 64)
        var x: UInt64 = 0x1234_5678
        func next(_ n: Int) -> Int { x = x &* 6364136223846793005 &+ 1442695040888963407; return Int((x >> 33) % UInt64(n)) }
        for step in 0..<3000 {
            switch next(3) {
            case 0:
                let s = next(32)
                guard let t = m.writeTarget(slot: s) else { Issue.record("no block for slot s"); return }
                if next(10) == 0 { m.abandonWrite(slot: s, target: t) } else { m.commitWrite(slot: s, target: t) }
            case 1: _ = m.refer(vm: "a", block: next(64), to: m.physical(ofSlot: next(32)))
            default: m.release(vm: "a", block: next(64))
            }
            if step % 100 == 0 { #expect(m.agreesWithTables(), "step \(step)") }
            #expect(m.promised <= m.spareBlocks)
        }
        #expect(m.agreesWithTables())
    }

    /// A block being read for a guest is not reused even if its last reference goes meanwhile.
    @Test func aPinnedBlockIsNotReusedUntilUnpinned() {
        var m = Self.map()
        do { let ok = m.refer(vm: "a", block: 0, to: 2); #expect(ok) }
        guard let t = m.writeTarget(slot: 2) else { Issue.record("no spare"); return }
        m.commitWrite(slot: 2, target: t)       // block 2 is now only the guest's
        do { let ok = m.pin(2); #expect(ok) }
        m.release(vm: "a", block: 0)
        let sparesWhilePinned = m.spareBlocks
        m.unpin(2)
        #expect(m.spareBlocks == sparesWhilePinned + 1 && m.references(2) == 0)
    }

    /// Tables whose promises exceed the spares (tampered, or from another configuration): a host
    /// write that would need a spare fails instead of overwriting a guest's page.
    @Test func withoutASpareTheHostsWriteFailsRatherThanOverwrite() {
        let host = BlockTable(anonymous: 8), guest = BlockTable(anonymous: 8)
        for b in 0..<3 { guest[b] = UInt32(b + 1) }   // three host-owned blocks shared, one spare
        var m = SharedBlockMap(hostMap: host, physicalBlocks: 9, guests: ["a": guest])
        #expect(!m.problems.isEmpty)
        let first = m.writeTarget(slot: 0), second = m.writeTarget(slot: 1)
        #expect(first == 8 && second == nil)
        #expect(m.writeTarget(slot: 5) == 5)
    }

    @Test func tablesThatContradictThemselvesStopNewReferences() {
        let host = BlockTable(anonymous: 8)
        host[1] = 3  // slot 1 → block 2
        host[2] = 0  // slot 2 → block 2 as well
        var m = SharedBlockMap(hostMap: host, physicalBlocks: 12, guests: ["a": BlockTable(anonymous: 4)])
        #expect(m.problems.count == 1 && m.problems[0].contains("both map to block 2"))
        do { let ok = m.refer(vm: "a", block: 0, to: 5); #expect(!ok) }
    }

    @Test func aTableOnDiskKeepsItsEntriesAndRefusesAnotherSize() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("sbm-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        do {
            let t = try BlockTable(path: dir + "/t", count: 10)
            t[7] = 42
        }
        let again = try BlockTable(path: dir + "/t", count: 10)
        #expect(again[7] == 42)
        #expect(throws: BlockTable.Failure.self) { _ = try BlockTable(path: dir + "/t", count: 20) }
        again[7] = 0
        // All zeros: nothing is shared, so it may be resized.
        #expect(try BlockTable(path: dir + "/t", count: 20).count == 20)
    }
}
