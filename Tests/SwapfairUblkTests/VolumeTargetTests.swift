import Foundation
import SwapfairIO
import SwapfairSys
import Testing
@testable import SwapfairUblk

/// A tag's scratch and room for transfers, as the queue sets them aside.
private final class TagRoom {
    let scratch = UnsafeMutableRawPointer.allocate(byteCount: 16, alignment: 16)
    let slots: UnsafeMutablePointer<UblkTransfer>
    let capacity: Int
    init(transfers: Int) {
        slots = .allocate(capacity: transfers)
        capacity = transfers
    }
    deinit {
        scratch.deallocate()
        slots.deallocate()
    }
    func transfers() -> UblkTransfers { UblkTransfers(base: slots, capacity: capacity) }
}

/// The host swap volume's target over a real file, served the way the queue serves it (start,
/// transfers, finish), one request at a time.
@Suite struct VolumeTargetTests {
    func volume(_ size: UInt64) throws -> (Volume, String) {
        let dir = NSTemporaryDirectory() + "swapfair-ublk-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return (try Volume(path: dir + "/v", size: size), dir)
    }

    @Test func writesReadBackAndAFlushAndADiscardAreDoneAtOnce() throws {
        let (v, dir) = try volume(1 << 20)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let t = VolumeTarget(volume: v)
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 8192, alignment: 4096)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0x5a, count: 8192)
        #expect(t.serve(.write, offset: 12288, length: 8192, buffer: buffer) == 8192)
        buffer.initializeMemory(as: UInt8.self, repeating: 0, count: 8192)
        #expect(t.serve(.read, offset: 12288, length: 8192, buffer: buffer) == 8192)
        #expect(UnsafeRawBufferPointer(start: buffer, count: 8192).allSatisfy { $0 == 0x5a })

        let room = TagRoom(transfers: 2)
        let scratch = room.scratch
        var transfers = room.transfers()
        let flush = UblkRequest(kind: .flush, offset: 0, length: 0, buffer: buffer, scratch: scratch)
        let flushed = t.start(flush, transfers: &transfers)
        #expect(flushed == .done(0))
        let discard = UblkRequest(kind: .discard, offset: 12288, length: 4096, buffer: buffer, scratch: scratch)
        let discarded = t.start(discard, transfers: &transfers)
        #expect(discarded == .done(0))
        #expect(transfers.count == 0)
        // The discarded page reads as zeros, the other as written.
        #expect(t.serve(.read, offset: 12288, length: 8192, buffer: buffer) == 8192)
        let bytes = UnsafeRawBufferPointer(start: buffer, count: 8192)
        #expect(bytes[0..<4096].allSatisfy { $0 == 0 } && bytes[4096...].allSatisfy { $0 == 0x5a })
    }

    @Test func aReadAsOneTransferOfTheWholeRequest() throws {
        let (v, dir) = try volume(1 << 20)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { buffer.deallocate() }
        let room = TagRoom(transfers: 1)
        let scratch = room.scratch
        var transfers = room.transfers()
        let r = UblkRequest(kind: .read, offset: 8192, length: 4096, buffer: buffer, scratch: scratch)
        let started = VolumeTarget(volume: v).start(r, transfers: &transfers)
        #expect(started == .transfer)
        #expect(transfers.count == 1 && transfers[0].fd == v.fd && transfers[0].offset == 8192 && transfers[0].length == 4096)
        let added = transfers.add(fd: v.fd, offset: 0, length: 4096, bufferOffset: 0)
        #expect(!added)  // no room left
    }

    @Test func aVolumeInRAMIsServedInlineAndOneOnDiskOnTheRing() throws {
        let ram = "/dev/shm/swapfair-ublk-\(UUID().uuidString.prefix(8))"
        defer { unlink(ram) }
        #expect(VolumeTarget(volume: try Volume(path: ram, size: 1 << 20)).transfersInline)
        let (v, dir) = try volume(1 << 20)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // On a disk file system that takes O_DIRECT (ext4 here), the ring does the transfers.
        #expect(VolumeTarget(volume: v).transfersInline == !v.direct)
        let type = try FileAccess.fileSystemType(dir)
        #expect(v.direct || type == 0x0102_1994)
    }

    @Test func aShortReadIsZerosAndAShortWriteAnError() {
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 8192, alignment: 4096)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0xff, count: 8192)
        let t = UblkTransfer(fd: 0, offset: 0, length: 4096, bufferOffset: 4096)
        #expect(UblkTransfers.outcome(of: t, kind: .read, result: 4096, buffer: buffer) == nil)
        #expect(UblkTransfers.outcome(of: t, kind: .read, result: 1024, buffer: buffer) == nil)
        let bytes = UnsafeRawBufferPointer(start: buffer, count: 8192)
        #expect(bytes[0..<5120].allSatisfy { $0 == 0xff } && bytes[5120...].allSatisfy { $0 == 0 })
        #expect(UblkTransfers.outcome(of: t, kind: .write, result: 1024, buffer: buffer) == -EIO)
        #expect(UblkTransfers.outcome(of: t, kind: .write, result: -Int(ENOSPC), buffer: buffer) == -ENOSPC)
    }
}
