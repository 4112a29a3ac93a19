import Foundation
import Testing
import SwapfairIO
import SwapfairTracking
import SwapfairUblk
import SwapfairConfig
import SwapfairExport
import Logging
@testable import SwapfairDaemon

/// Write elision over real files: the host's swap volume behind `ElidingTarget` (as its ublk
/// queue drives it), a guest's volume behind `ElisionSharing` (as its NBD export drives it), and
/// the tables on disk, reopened as a restarted daemon would.
@Suite struct WriteElisionTests {
    static let page = 4096

    final class Rig {
        let dir: String
        let host: Volume, guest: Volume
        var elision: WriteElision
        var target: ElidingTarget
        var sharing: ElisionSharing
        let buffer: UnsafeMutableRawPointer

        init() throws {
            dir = FileManager.default.temporaryDirectory.appendingPathComponent("elision-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            host = try Volume(path: dir + "/host.img", size: 64 * 4096)   // 48 slots and 16 spares
            guest = try Volume(path: dir + "/guest.img", size: 32 * 4096)
            buffer = UnsafeMutableRawPointer.allocate(byteCount: 8 * 4096, alignment: 4096)
            (elision, target, sharing) = try Self.open(dir, host, guest)
        }

        static func open(_ dir: String, _ host: Volume, _ guest: Volume) throws -> (WriteElision, ElidingTarget, ElisionSharing) {
            let map = SharedBlockMap(hostMap: try BlockTable(path: dir + "/host.map", count: 48), physicalBlocks: 64,
                                     guests: ["g": try BlockTable(path: dir + "/vm-g.refs", count: 32),
                                              SharedBlockMap.hostReferences: try BlockTable(path: dir + "/host.refs", count: 48)])
            let e = WriteElision(map: map, hostFD: host.fd)
            let tracker = DoublePagingTracker(window: 60)
            let t = ElidingTarget(inner: VolumeTarget(volume: host), tracker: tracker, elision: e, slots: 48, maxIOBytes: 8 * 4096)
            return (e, t, ElisionSharing(elision: e, tracker: tracker))
        }

        /// What a restarted daemon has: the same files, everything else rebuilt.
        func restart() throws { (elision, target, sharing) = try Self.open(dir, host, guest) }

        deinit {
            buffer.deallocate()
            try? FileManager.default.removeItem(atPath: dir)
        }

        static func fill(_ p: UnsafeMutableRawPointer, pages ids: [UInt64]) {
            for (i, id) in ids.enumerated() {
                let words = p.advanced(by: i * 4096).bindMemory(to: UInt64.self, capacity: 512)
                for w in 0..<512 { words[w] = id &* 0x9E37_79B9 &+ UInt64(w) }
            }
        }

        func hostWrite(slot: Int, _ ids: [UInt64]) -> Int32 {
            Self.fill(buffer, pages: ids)
            return target.serve(.write, offset: UInt64(slot * 4096), length: ids.count * 4096, buffer: buffer)
        }

        func hostRead(slot: Int, pages: Int) -> [UInt8] {
            let n = target.serve(.read, offset: UInt64(slot * 4096), length: pages * 4096, buffer: buffer)
            return n < 0 ? [] : Array(UnsafeRawBufferPointer(start: buffer, count: pages * 4096))
        }

        func guestWrite(block: Int, _ ids: [UInt64]) -> SharedWrite {
            var bytes = [UInt8](repeating: 0, count: ids.count * 4096)
            bytes.withUnsafeMutableBytes { Self.fill($0.baseAddress!, pages: ids) }
            return bytes.withUnsafeBytes { sharing.guestWrite(vm: "g", offset: UInt64(block * 4096), $0) }
        }

        /// The guest's block as its export serves it.
        func guestRead(block: Int, pages: Int = 1) -> [UInt8] {
            if let n = sharing.guestRead(vm: "g", offset: UInt64(block * 4096), length: pages * 4096, ownFD: guest.fd, into: buffer) {
                return n < 0 ? [] : Array(UnsafeRawBufferPointer(start: buffer, count: pages * 4096))
            }
            return ownBlock(block, pages: pages)
        }

        /// What the host volume's block holds, past the map.
        func ownHostBlock(_ block: Int) -> [UInt8] {
            #expect(pread(host.fd, buffer, 4096, off_t(block * 4096)) == 4096)
            return Array(UnsafeRawBufferPointer(start: buffer, count: 4096))
        }

        func ownBlock(_ block: Int, pages: Int = 1) -> [UInt8] {
            #expect(pread(guest.fd, buffer, pages * 4096, off_t(block * 4096)) == pages * 4096)
            return Array(UnsafeRawBufferPointer(start: buffer, count: pages * 4096))
        }

        static func expected(_ ids: [UInt64]) -> [UInt8] {
            var bytes = [UInt8](repeating: 0, count: ids.count * 4096)
            bytes.withUnsafeMutableBytes { fill($0.baseAddress!, pages: ids) }
            return bytes
        }
    }

    @Test func aGuestSwapOutOfWhatTheHostReadBackIsAReferenceNotAWrite() throws {
        let r = try Rig()
        #expect(r.hostWrite(slot: 10, [1, 2, 3]) == 3 * 4096)
        #expect(r.hostRead(slot: 10, pages: 3) == Rig.expected([1, 2, 3]))
        #expect(r.guestWrite(block: 4, [2, 3]) == .writeNone)
        // Nothing was written to the guest's volume; its export serves the host's blocks.
        #expect(r.ownBlock(4, pages: 2) == [UInt8](repeating: 0, count: 2 * 4096))
        #expect(r.guestRead(block: 4, pages: 2) == Rig.expected([2, 3]))
        #expect(r.elision.counters()["g"]?.elidedBytes == 2 * 4096)
        // The same guest write told the tracker (one digest of each page served both): the host
        // read back pages 2 and 3 only for the guest to write them out, two events.
        #expect(r.target.tracker.counters()["g"]?.events == 2)
        #expect(r.target.tracker.counters()["g"]?.guestSwapOutBytes == 2 * 4096)
        // A write with one page the host never read: only that page is written.
        #expect(r.guestWrite(block: 8, [3, 99]) == .writeSome(elided: [true, false]))
        #expect(r.guestRead(block: 8) == Rig.expected([3]))
        #expect(r.guestWrite(block: 12, [98, 99]) == .writeAll)
    }

    /// A frame the host has just written out (still in its swap cache, so the guest reads it with
    /// no host read) is as much in the host's swap as one read back: its swap-out is elided too,
    /// and the report says where the copy came from.
    @Test func aGuestSwapOutOfWhatTheHostJustWroteIsAReference() throws {
        let r = try Rig()
        #expect(r.hostWrite(slot: 20, [31, 32]) == 2 * 4096)
        var bytes = Rig.expected([32, 31])
        var kinds: [(Int, Bool)] = []
        let result = bytes.withUnsafeMutableBytes { b in
            r.elision.guestWrite(vm: "g", offset: 6 * 4096, UnsafeRawBufferPointer(b)) { kinds.append(($0, $1)) }
        }
        #expect(result == .all)
        #expect(kinds.map(\.0) == [0, 1] && kinds.allSatisfy { $0.1 })
        #expect(r.guestRead(block: 6, pages: 2) == Rig.expected([32, 31]))
        // After a read of the same block the copy is the read's.
        _ = r.hostRead(slot: 20, pages: 1)
        kinds = []
        bytes = Rig.expected([31])
        _ = bytes.withUnsafeMutableBytes { b in
            r.elision.guestWrite(vm: "g", offset: 9 * 4096, UnsafeRawBufferPointer(b)) { kinds.append(($0, $1)) }
        }
        #expect(kinds.count == 1 && kinds.first?.1 == false)
        // The host then rewrites the slot: both guests' blocks keep what they referred to.
        #expect(r.hostWrite(slot: 20, [40, 41]) == 2 * 4096)
        #expect(r.guestRead(block: 6, pages: 2) == Rig.expected([32, 31]))
        #expect(r.guestRead(block: 9) == Rig.expected([31]))
        #expect(r.hostRead(slot: 20, pages: 2) == Rig.expected([40, 41]))
        #expect(r.elision.summary(check: true).consistent)
    }

    /// The host swaps a page it read back out again, unchanged, to another slot: the slot refers
    /// to the block that holds it and nothing is written. Each slot then lives its own life:
    /// the first slot's next write is redirected, the second's releases the reference.
    @Test func aHostReswapOfAnUnchangedPageIsAReference() throws {
        let r = try Rig()
        _ = r.hostWrite(slot: 3, [50])
        #expect(r.hostRead(slot: 3, pages: 1) == Rig.expected([50]))
        // Slot 9 gets the same bytes, next to a page of new ones in slot 10.
        #expect(r.hostWrite(slot: 9, [50, 51]) == 2 * 4096)
        #expect(r.ownHostBlock(9) == [UInt8](repeating: 0, count: 4096), "the unchanged page was written")
        #expect(r.ownHostBlock(10) == Rig.expected([51]))
        #expect(r.hostRead(slot: 9, pages: 2) == Rig.expected([50, 51]))
        var s = r.elision.summary(check: true)
        #expect(s.hostElidedBytes == 4096 && s.hostReferences == 1 && s.consistent)
        // Slot 3 is rewritten: its block is shared, so the write goes to a spare.
        _ = r.hostWrite(slot: 3, [60])
        #expect(r.hostRead(slot: 3, pages: 1) == Rig.expected([60]))
        #expect(r.hostRead(slot: 9, pages: 1) == Rig.expected([50]))
        // A restarted daemon finds the same.
        try r.restart()
        #expect(r.hostRead(slot: 9, pages: 1) == Rig.expected([50]))
        #expect(r.elision.summary(check: true).consistent)
        // Slot 9 is rewritten with new bytes: it holds its own again, and the old block is free.
        _ = r.hostWrite(slot: 9, [70])
        #expect(r.hostRead(slot: 9, pages: 1) == Rig.expected([70]))
        s = r.elision.summary(check: true)
        #expect(s.hostReferences == 0 && s.sharedBlocks == 0 && s.consistent)
        #expect(r.hostRead(slot: 3, pages: 1) == Rig.expected([60]))
    }

    /// The same bytes written again to the same slot need no write; a guest that refers to the
    /// block keeps it; a discard makes referring slots let go.
    @Test func anUnchangedRewriteInPlaceAndADiscard() throws {
        let r = try Rig()
        _ = r.hostWrite(slot: 4, [80])
        _ = r.hostRead(slot: 4, pages: 1)
        #expect(r.guestWrite(block: 2, [80]) == .writeNone)
        #expect(r.hostWrite(slot: 4, [80]) == 4096)
        var s = r.elision.summary(check: true)
        #expect(s.hostElidedBytes == 4096 && s.redirects == 0 && s.consistent)
        _ = r.hostWrite(slot: 11, [80])   // a re-swap to another slot: a reference
        #expect(r.elision.summary().hostReferences == 1)
        #expect(r.target.serve(.discard, offset: 11 * 4096, length: 4096, buffer: r.buffer) == 0)
        s = r.elision.summary(check: true)
        #expect(s.hostReferences == 0 && s.consistent)
        #expect(r.guestRead(block: 2) == Rig.expected([80]))
    }

    /// The host reuses the slot: its write goes to a spare, the guest's content stays put.
    @Test func theHostsNextWriteOfASharedSlotGoesElsewhere() throws {
        let r = try Rig()
        _ = r.hostWrite(slot: 5, [7])
        _ = r.hostRead(slot: 5, pages: 1)
        #expect(r.guestWrite(block: 0, [7]) == .writeNone)
        #expect(r.hostWrite(slot: 5, [8]) == 4096)
        #expect(r.hostRead(slot: 5, pages: 1) == Rig.expected([8]))
        #expect(r.guestRead(block: 0) == Rig.expected([7]))
        let s = r.elision.summary(check: true)
        #expect(s.redirects == 1 && s.sharedBlocks == 1 && s.consistent)
    }

    /// A copy is dropped the moment the host writes its block: the old bytes are no match.
    @Test func aBlockTheHostRewroteInPlaceIsNoLongerAMatch() throws {
        let r = try Rig()
        _ = r.hostWrite(slot: 3, [4])
        _ = r.hostRead(slot: 3, pages: 1)
        _ = r.hostWrite(slot: 3, [5])
        #expect(r.guestWrite(block: 1, [4]) == .writeAll)
    }

    /// The guest overwrites its block: the reference goes and the block is its own again.
    @Test func aGuestOverwriteEndsTheReference() throws {
        let r = try Rig()
        _ = r.hostWrite(slot: 2, [6])
        _ = r.hostRead(slot: 2, pages: 1)
        #expect(r.guestWrite(block: 9, [6]) == .writeNone)
        r.sharing.guestOverwrote(vm: "g", offset: 9 * 4096, length: 4096)
        #expect(r.sharing.guestRead(vm: "g", offset: 9 * 4096, length: 4096, ownFD: r.guest.fd, into: r.buffer) == nil)
        #expect(r.elision.summary().sharedBlocks == 0)
    }

    /// A restarted daemon rebuilds the accounting from the tables: the same references, the same
    /// redirects, every page readable as before.
    @Test func referencesAndRedirectsSurviveARestart() throws {
        let r = try Rig()
        _ = r.hostWrite(slot: 0, [11, 12, 13, 14])
        _ = r.hostRead(slot: 0, pages: 4)
        #expect(r.guestWrite(block: 20, [11, 12]) == .writeNone)
        #expect(r.guestWrite(block: 30, [14]) == .writeNone)
        _ = r.hostWrite(slot: 0, [21, 22])   // both shared: redirected
        let before = r.elision.summary(check: true)
        try r.restart()
        let after = r.elision.summary(check: true)
        #expect(after.consistent && after.problems.isEmpty)
        #expect(after.sharedBlocks == before.sharedBlocks && after.spareBlocks == before.spareBlocks
                && after.promised == before.promised)
        #expect(r.guestRead(block: 20, pages: 2) == Rig.expected([11, 12]))
        #expect(r.guestRead(block: 30) == Rig.expected([14]))
        #expect(r.hostRead(slot: 0, pages: 4) == Rig.expected([21, 22, 13, 14]))
    }

    @Test func requestsPastTheDevicesSlotsAreRefused() throws {
        let r = try Rig()
        #expect(r.target.size == 48 * 4096)
        // Refused before the target sees it, as the queue refuses it (the kernel gets EIO).
        #expect(r.hostWrite(slot: 47, [1, 2]) == -EIO)
        #expect(r.hostWrite(slot: 47, [1]) == 4096)
    }
}

/// What the daemon makes of the tables it finds at start.
@Suite struct WriteElisionStartTests {
    static func config(_ dir: String, elision: Bool) throws -> SwapfairConfiguration {
        try ConfigLoader.parse("""
            [host]
            state_dir = "\(dir)"
            host_swap_device = "/dev/null"
            write_elision = \(elision)
            shared_map_dir = "\(dir)/shared"
            """, source: "test.toml", facts: HostFacts(memoryTotal: 8 << 30, swapTotal: 8 << 30))
    }

    @Test func theReferencesOfAVMNoLongerConfiguredStillCount() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("elision-start-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        try FileManager.default.createDirectory(atPath: dir + "/shared", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let host = try Volume(path: dir + "/host.img", size: 64 * 4096)
        do {
            let old = try BlockTable(path: dir + "/shared/vm-gone.refs", count: 16)
            old[3] = 5 + 1   // block 3 of VM "gone" refers to host block 5
        }
        let logger = Logger(label: "test")
        guard let e = try SwapDevices.writeElision(try Self.config(dir, elision: true), hostVolume: host, guests: [("here", 32 * 4096)],
                                                   logger: logger) else { Issue.record("no elision"); return }
        let s = e.elision.summary(check: true)
        #expect(s.sharedBlocks == 1 && s.promised == 1 && s.problems.isEmpty && s.consistent)
        #expect(e.slots == 56)
    }

    @Test func turningElisionOffWhileBlocksAreSharedIsRefused() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("elision-off-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        try FileManager.default.createDirectory(atPath: dir + "/shared", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let host = try Volume(path: dir + "/host.img", size: 64 * 4096)
        let logger = Logger(label: "test")
        // Empty tables: nothing shared, off is fine.
        _ = try BlockTable(path: dir + "/shared/vm-a.refs", count: 16)
        #expect(try SwapDevices.writeElision(try Self.config(dir, elision: false), hostVolume: host, guests: [], logger: logger) == nil)
        do {
            let t = try BlockTable(path: dir + "/shared/vm-a.refs", count: 16)
            t[0] = 1
        }
        do {
            _ = try SwapDevices.writeElision(try Self.config(dir, elision: false), hostVolume: host, guests: [], logger: logger)
            Issue.record("elision off over shared blocks was accepted")
        } catch {
            #expect("\(error)".contains("write_elision is off"))
        }
    }
}

/// Write elision as a real NBD client sees it: nbdsh writes two pages in one request, one of them
/// a page the host has just read back from its swap, and reads them back.
@Suite(.serialized) struct WriteElisionOverNBDTests {
    @Test func aWriteWithOnePageTheHostHoldsWritesOnlyTheOther() throws {
        let r = try WriteElisionTests.Rig()
        // The host's slot 7 holds a page of 0xab, and the host has just read it back.
        memset(r.buffer, 0xab, 4096)
        #expect(r.target.serve(.write, offset: 7 * 4096, length: 4096, buffer: r.buffer) == 4096)
        #expect(r.target.serve(.read, offset: 7 * 4096, length: 4096, buffer: r.buffer) == 4096)

        let pool = BufferPool(count: 8, bufferSize: 1 << 20)
        let engine = try SwapEngine(queueDepth: 8, pool: pool)
        engine.setShare(client: 0, IOShare(weight: 100))
        engine.start()
        defer { engine.stop() }
        let socket = r.dir + "/g.sock"
        let server = try ExportServer(name: "g", socketPath: socket, volume: r.guest, client: 0, engine: engine, pool: pool,
                                      access: ExportAccess(uids: [getuid()]), logger: Logger(label: "test"), sharing: r.sharing)
        server.start()
        defer { server.stop() }
        let uri = "nbd+unix:///g?socket=\(socket)"
        // qemu-io writes the two pages from a file in one request, then reads them back.
        let source = r.dir + "/pages"
        try makeFile(source, Data(repeating: 0xab, count: 4096) + Data(repeating: 0xcd, count: 4096))
        let out = try run(try tool("qemu-io"), ["-f", "raw", uri, "-c", "write -s \(source) 12k 8k",
                                                "-c", "read -P 0xab 12k 4k", "-c", "read -P 0xcd 16k 4k"])
        #expect(out.status == 0 && !out.output.contains("Pattern verification failed") && out.output.contains("read 4096/4096"),
                "\(out.output)")
        // Block 3 is a reference (nothing written to the guest's volume); block 4 was written.
        #expect(r.ownBlock(3) == [UInt8](repeating: 0, count: 4096))
        #expect(r.ownBlock(4) == [UInt8](repeating: 0xcd, count: 4096))
        #expect(r.elision.counters()["g"]?.elidedBytes == 4096)
        #expect(r.elision.counters()["g"]?.sharedReadBytes == 4096)
    }
}
