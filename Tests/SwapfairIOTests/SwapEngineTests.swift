import Foundation
import Synchronization
import Testing
@testable import SwapfairIO

#if canImport(Glibc)
import Glibc
#endif

/// The engine on a real file (O_DIRECT where the file system allows it): the inline path for a
/// lone request on an idle engine, and the scheduled path for everything else.
@Suite(.serialized) struct SwapEngineTests {
    let path = "/var/tmp/swapfair-engine-\(UUID().uuidString.prefix(8)).img"

    /// What `done` reported, and on which thread it ran.
    final class Outcome: Sendable {
        let state = Mutex<[(result: Int32, data: [UInt8]?, onEngine: Bool)]>([])
        let signal = DispatchSemaphore(value: 0)
        var all: [(result: Int32, data: [UInt8]?, onEngine: Bool)] { state.withLock { $0 } }
    }

    func request(_ engine: SwapEngine, _ volume: Volume, client: Int, _ op: BlockOp, block: UInt64, fill: UInt8? = nil,
                 into outcome: Outcome) -> BlockRequest {
        BlockRequest(client: client, volume: volume, op: op, offset: block * 4096, length: 4096,
                     payload: fill.map { [UInt8](repeating: $0, count: 4096) }) { result, buffer in
            let data = buffer.map { Array(UnsafeRawBufferPointer(start: $0.pointer, count: 4096)) }
            if let buffer { engine.pool.release(buffer) }
            outcome.state.withLock { $0.append((result, data, engine.onEngineThread)) }
            outcome.signal.signal()
        }
    }

    func withEngine(buffers: Int = 16, _ body: (SwapEngine, Volume) throws -> Void) throws {
        let volume = try Volume(path: path, size: 1 << 20)
        defer { unlink(path) }
        let engine = try SwapEngine(queueDepth: 8, pool: BufferPool(count: buffers, bufferSize: 64 << 10))
        engine.start()
        defer { engine.stop() }
        try body(engine, volume)
    }

    @Test func aLoneRequestOnAnIdleEngineIsServedInlineAndReadsBack() throws {
        try withEngine { engine, volume in
            let out = Outcome()
            #expect(engine.serveInline(request(engine, volume, client: 1, .write(fua: true), block: 3, fill: 0xA5, into: out)))
            #expect(engine.serveInline(request(engine, volume, client: 1, .read, block: 3, into: out)))
            // Both answered before serveInline returned, on this thread.
            let all = out.all
            #expect(all.count == 2)
            #expect(all.allSatisfy { $0.result == 4096 && !$0.onEngine })
            #expect(all.last?.data == [UInt8](repeating: 0xA5, count: 4096))
            let s = engine.statistics()[1]
            #expect(s?.inline == 2 && s?.reads == 1 && s?.writes == 1 && s?.writeBytes == 4096)
            // What went inline reads back through the ring too: same file, same blocks.
            engine.submit(request(engine, volume, client: 1, .read, block: 3, into: out))
            #expect(out.signal.wait(timeout: .now() + 1) == .success)  // the two inline answers
            #expect(out.signal.wait(timeout: .now() + 1) == .success)
            #expect(out.signal.wait(timeout: .now() + 5) == .success)
            #expect(out.all.last?.data == [UInt8](repeating: 0xA5, count: 4096))
            #expect(out.all.last?.onEngine == true)
        }
    }

    @Test func aLimitedClientIsAlwaysScheduledAndABusyEngineServesNothingInline() throws {
        try withEngine { engine, volume in
            let out = Outcome()
            // Client 2 may do 2 requests a second: of 4 submitted, the last ones wait in the engine.
            engine.setShare(client: 2, IOShare(weight: 1, limit: 2))
            #expect(!engine.serveInline(request(engine, volume, client: 2, .read, block: 0, into: out)))
            engine.submit(contentsOf: (0..<4).map { request(engine, volume, client: 2, .read, block: UInt64($0), into: out) })
            // Meanwhile a lone request of an unlimited client is not served inline: the engine is busy.
            usleep(100_000)
            #expect(!engine.serveInline(request(engine, volume, client: 3, .read, block: 9, into: out)))
            for _ in 0..<4 { #expect(out.signal.wait(timeout: .now() + 10) == .success) }
            #expect(out.all.count == 4 && out.all.allSatisfy { $0.result == 4096 && $0.onEngine })
            // Idle again: inline once more.
            usleep(10_000)
            #expect(engine.serveInline(request(engine, volume, client: 3, .read, block: 9, into: out)))
            #expect(engine.statistics()[2]?.inline == 0 && engine.statistics()[3]?.inline == 1)
        }
    }

    @Test func aBatchOfWritesThenReadsComesBackBlockForBlock() throws {
        try withEngine { engine, volume in
            let out = Outcome()
            engine.submit(contentsOf: (0..<64).map {
                request(engine, volume, client: 4, .write(fua: false), block: UInt64($0), fill: UInt8($0 + 1), into: out)
            })
            for _ in 0..<64 { #expect(out.signal.wait(timeout: .now() + 10) == .success) }
            let reads = Outcome()
            engine.submit(contentsOf: (0..<64).map { request(engine, volume, client: 4, .read, block: UInt64($0), into: reads) })
            for _ in 0..<64 { #expect(reads.signal.wait(timeout: .now() + 10) == .success) }
            #expect(out.all.allSatisfy { $0.result == 4096 })
            let seen = Set(reads.all.compactMap { $0.data.flatMap { d in d.allSatisfy { $0 == d[0] } ? d[0] : nil } })
            #expect(seen == Set((1...64).map { UInt8($0) }))
        }
    }

    @Test func aRequestWaitsForABufferHeldElsewhereInsteadOfFailing() throws {
        try withEngine(buffers: 1) { engine, volume in
            let out = Outcome()
            // The pool's only buffer is out (as with a reply still being sent on another thread).
            let held = engine.pool.acquire(4096)
            engine.submit(request(engine, volume, client: 5, .read, block: 1, into: out))
            #expect(out.signal.wait(timeout: .now() + 0.3) == .timedOut)
            engine.pool.release(held)
            #expect(out.signal.wait(timeout: .now() + 5) == .success)
            #expect(out.all.first?.result == 4096)
            #expect(engine.statistics()[5]?.errors == 0)
        }
    }

    /// Requests on the submitter's memory (a ublk tag's buffer): written from it and read into it,
    /// inline and through the ring alike, with no pool buffer taken, even when the pool has none.
    @Test func requestsOnTheSubmittersMemoryTakeNoPoolBuffer() throws {
        try withEngine(buffers: 1) { engine, volume in
            let memory = UnsafeMutableRawPointer.allocate(byteCount: 8192, alignment: 4096)
            defer { memory.deallocate() }
            let held = engine.pool.acquire(4096)  // the pool is empty throughout
            defer { engine.pool.release(held) }
            let out = Outcome()
            func on(_ op: BlockOp, client: Int, block: UInt64, at: Int) -> BlockRequest {
                BlockRequest(client: client, volume: volume, op: op, offset: block * 4096, length: 4096,
                             memory: IOMemory(memory + at)) { result, buffer in
                    outcome(out, result, buffer == nil, engine.onEngineThread)
                }
            }
            memory.initializeMemory(as: UInt8.self, repeating: 0x3C, count: 4096)
            #expect(engine.serveInline(on(.write(fua: false), client: 6, block: 2, at: 0)))
            #expect(engine.serveInline(on(.read, client: 6, block: 2, at: 4096)))
            #expect(UnsafeRawBufferPointer(start: memory + 4096, count: 4096).allSatisfy { $0 == 0x3C })
            // A limited client goes through the ring.
            engine.setShare(client: 7, IOShare(weight: 1, limit: 1000))
            memory.initializeMemory(as: UInt8.self, repeating: 0x7E, count: 4096)
            engine.submit(on(.write(fua: false), client: 7, block: 5, at: 0))
            #expect(out.signal.wait(timeout: .now() + 1) == .success)
            #expect(out.signal.wait(timeout: .now() + 1) == .success)
            #expect(out.signal.wait(timeout: .now() + 5) == .success)
            memory.advanced(by: 4096).initializeMemory(as: UInt8.self, repeating: 0, count: 4096)
            engine.submit(on(.read, client: 7, block: 5, at: 4096))
            #expect(out.signal.wait(timeout: .now() + 5) == .success)
            #expect(UnsafeRawBufferPointer(start: memory + 4096, count: 4096).allSatisfy { $0 == 0x7E })
            let all = out.all
            #expect(all.count == 4 && all.allSatisfy { $0.result == 4096 && $0.data == nil })
            #expect(all.map(\.onEngine) == [false, false, true, true])
        }
    }

    /// Records an answer that carried no buffer (`data` nil) or one (an empty array).
    func outcome(_ out: Outcome, _ result: Int32, _ noBuffer: Bool, _ onEngine: Bool) {
        out.state.withLock { $0.append((result, noBuffer ? nil : [], onEngine)) }
        out.signal.signal()
    }
}
