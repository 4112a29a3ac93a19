import Foundation
import Synchronization
import SwapfairExport
import SwapfairIO
import Testing
@testable import SwapfairUblk

/// Write elision as a VM's block device sees it, scripted: what the next write becomes, which
/// pages read as references (and what they hold), and what the device reported overwritten.
private final class ScriptedSharing: BlockSharing {
    struct State {
        var nextWrite = SharedWrite.writeAll
        var references: [UInt64: UInt8] = [:]  // page offset → the byte its reference holds
        var overwritten: [Range<UInt64>] = []
    }
    let state = Mutex(State())

    func guestWrite(vm: String, offset: UInt64, _ bytes: UnsafeRawBufferPointer) -> SharedWrite {
        state.withLock { s in
            defer { s.nextWrite = .writeAll }
            if case .writeSome(let elided) = s.nextWrite {
                for (i, e) in elided.enumerated() where e { s.references[offset + UInt64(i * 4096)] = bytes[i * 4096] }
            } else if s.nextWrite == .writeNone {
                for i in 0..<(bytes.count / 4096) { s.references[offset + UInt64(i * 4096)] = bytes[i * 4096] }
            }
            return s.nextWrite
        }
    }

    func guestReadsShared(vm: String, offset: UInt64, length: Int) -> Bool {
        state.withLock { s in stride(from: offset, to: offset + UInt64(length), by: 4096).contains { s.references[$0] != nil } }
    }

    func guestRead(vm: String, offset: UInt64, length: Int, ownFD: Int32, into: UnsafeMutableRawPointer) -> Int32? {
        let refs = state.withLock { $0.references }
        for (i, page) in stride(from: offset, to: offset + UInt64(length), by: 4096).enumerated() {
            if let b = refs[page] {
                (into + i * 4096).initializeMemory(as: UInt8.self, repeating: b, count: 4096)
            } else if pread(ownFD, into + i * 4096, 4096, off_t(page)) != 4096 {
                return -EIO
            }
        }
        return Int32(length)
    }

    func guestOverwrote(vm: String, offset: UInt64, length: Int) {
        state.withLock { s in
            s.overwritten.append(offset..<offset + UInt64(length))
            for page in stride(from: offset, to: offset + UInt64(length), by: 4096) { s.references[page] = nil }
        }
    }
}

/// The guest writes the tracker was told of: offset and length.
final class Observed: Sendable {
    let writes = Mutex<[(UInt64, Int)]>([])
}

/// A VM's volume served as a ublk target through the swap engine, on real files: the queue's way
/// of calling it (`serve`: start, then the answer, now or pending), one request at a time.
@Suite(.serialized) struct EngineTargetTests {
    let path = "/var/tmp/swapfair-engine-target-\(UUID().uuidString.prefix(8)).img"

    func withTarget(sharing: (any BlockSharing)? = nil, limited: Bool = false,
                    _ body: (EngineTarget, SwapEngine, UnsafeMutableRawPointer, Observed) throws -> Void) throws {
        let volume = try Volume(path: path, size: 1 << 20)
        defer { unlink(path) }
        // One pool buffer, held throughout: the device's requests use its tags' buffers, not the pool's.
        let engine = try SwapEngine(queueDepth: 8, pool: BufferPool(count: 1, bufferSize: 64 << 10))
        let held = engine.pool.acquire(4096)
        engine.start()
        defer {
            engine.stop()
            engine.pool.release(held)
        }
        if limited { engine.setShare(client: 3, IOShare(weight: 1, limit: 10_000)) }
        let observed = Observed()
        let target = EngineTarget(name: "web", volume: volume, client: 3, engine: engine,
                                  writeObserver: { vm, offset, bytes in
                                      #expect(vm == "web")
                                      observed.writes.withLock { $0.append((offset, bytes.count)) }
                                  }, sharing: sharing)
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 64 << 10, alignment: 4096)
        defer { buffer.deallocate() }
        try body(target, engine, buffer, observed)
    }

    func fill(_ p: UnsafeMutableRawPointer, _ bytes: [UInt8]) {
        for (i, b) in bytes.enumerated() { (p + i * 4096).initializeMemory(as: UInt8.self, repeating: b, count: 4096) }
    }

    func pages(_ p: UnsafeMutableRawPointer, _ n: Int) -> [UInt8?] {
        (0..<n).map { i in
            let page = UnsafeRawBufferPointer(start: p + i * 4096, count: 4096)
            return page.allSatisfy { $0 == page[0] } ? page[0] : nil
        }
    }

    func fileBytes(at offset: Int, pages n: Int) throws -> [UInt8?] {
        let data = try #require(FileManager.default.contents(atPath: path))
        return (0..<n).map { i in
            let page = data[(offset + i * 4096)..<(offset + (i + 1) * 4096)]
            return page.allSatisfy { $0 == page.first } ? page.first : nil
        }
    }

    @Test(arguments: [false, true])
    func writesAndReadsGoThroughTheEngineOnTheTagsBuffer(limited: Bool) throws {
        try withTarget(limited: limited) { (target, engine, buffer, observed) throws in
            fill(buffer, [1, 2, 3])
            #expect(target.serve(.write, offset: 8192, length: 12288, buffer: buffer) == 12288)
            #expect(try fileBytes(at: 8192, pages: 3) == [1, 2, 3] as [UInt8?])
            #expect(observed.writes.withLock { $0.map(\.0) == [8192] && $0.map(\.1) == [12288] })
            fill(buffer, [0, 0, 0, 0])
            #expect(target.serve(.read, offset: 4096, length: 16384, buffer: buffer) == 16384)
            #expect(pages(buffer, 4) == [0, 1, 2, 3])
            let s = try #require(engine.statistics()[3])
            #expect(s.reads == 1 && s.writes == 1 && s.errors == 0)
            // An idle engine serves an unlimited VM's lone request on the queue's thread; a limited
            // VM's always waits for the engine (pending, answered from the engine's thread).
            #expect(s.inline == (limited ? 0 : 2))
        }
    }

    @Test func aLimitedVMsRequestIsPendingAndAnsweredOnce() throws {
        try withTarget(limited: true) { (target, _, buffer, _) throws in
            let scratch = UnsafeMutableRawPointer.allocate(byteCount: 16, alignment: 16)
            let slot = UnsafeMutablePointer<UblkTransfer>.allocate(capacity: 1)
            defer {
                scratch.deallocate()
                slot.deallocate()
            }
            let answers = Mutex<[Int32]>([])
            let answered = DispatchSemaphore(value: 0)
            fill(buffer, [9])
            var request = UblkRequest(kind: .write, offset: 0, length: 4096, buffer: buffer, scratch: scratch)
            request.completion = UblkCompletion { r in
                answers.withLock { $0.append(r) }
                answered.signal()
            }
            var transfers = UblkTransfers(base: slot, capacity: 1)
            #expect(target.start(request, transfers: &transfers) == .pending)
            #expect(transfers.count == 0)
            #expect(answered.wait(timeout: .now() + 5) == .success)
            #expect(answered.wait(timeout: .now() + 0.2) == .timedOut)
            #expect(answers.withLock { $0 } == [4096])
            #expect(try fileBytes(at: 0, pages: 1) == [9] as [UInt8?])
        }
    }

    @Test func aFlushAndADiscardGoThroughTheEngineAndTheDiscardedPagesReadAsZeros() throws {
        let sharing = ScriptedSharing()
        try withTarget(sharing: sharing) { (target, _, buffer, _) throws in
            fill(buffer, [4, 5, 6])
            #expect(target.serve(.write, offset: 0, length: 12288, buffer: buffer) == 12288)
            #expect(target.serve(.flush, offset: 0, length: 0, buffer: buffer) == 0)
            #expect(target.serve(.discard, offset: 4096, length: 4096, buffer: buffer) == 0)
            #expect(target.serve(.writeZeroes, offset: 8192, length: 4096, buffer: buffer) == 0)
            #expect(target.serve(.read, offset: 0, length: 12288, buffer: buffer) == 12288)
            #expect(pages(buffer, 3) == [4, 0, 0])
            // Each of them left the guest's own data in its range: no reference may outlive it.
            #expect(sharing.state.withLock { $0.overwritten } == [0..<12288, 4096..<8192, 8192..<12288])
        }
    }

    @Test func elidedPagesAreNotWrittenAndTheirReadsComeFromTheReferences() throws {
        let sharing = ScriptedSharing()
        try withTarget(sharing: sharing) { (target, _, buffer, observed) throws in
            // All four pages are references: nothing reaches the volume.
            sharing.state.withLock { $0.nextWrite = .writeNone }
            fill(buffer, [7, 7, 7, 7])
            #expect(target.serve(.write, offset: 0, length: 16384, buffer: buffer) == 16384)
            #expect(try fileBytes(at: 0, pages: 4) == [0, 0, 0, 0] as [UInt8?])
            // Pages 0 and 2 become references; 1 and 3 are written, a run each.
            sharing.state.withLock { $0.nextWrite = .writeSome(elided: [true, false, true, false]) }
            fill(buffer, [8, 9, 10, 11])
            #expect(target.serve(.write, offset: 32768, length: 16384, buffer: buffer) == 16384)
            #expect(try fileBytes(at: 32768, pages: 4) == [0, 9, 0, 11] as [UInt8?])
            #expect(sharing.state.withLock { $0.overwritten } == [36864..<40960, 45056..<49152])
            // The tracker saw both writes whole, elided or not.
            #expect(observed.writes.withLock { $0.map(\.0) } == [0, 32768])
            // Reads: references from where they point, the rest from the volume.
            fill(buffer, [0, 0, 0, 0])
            #expect(target.serve(.read, offset: 32768, length: 16384, buffer: buffer) == 16384)
            #expect(pages(buffer, 4) == [8, 9, 10, 11])
            #expect(target.serve(.read, offset: 0, length: 8192, buffer: buffer) == 8192)
            #expect(pages(buffer, 2) == [7, 7])
        }
    }
}
