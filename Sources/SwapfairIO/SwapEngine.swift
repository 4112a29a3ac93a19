import Dispatch
import Foundation
import Synchronization
import SwapfairSys
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// What a block request does.
public enum BlockOp: Sendable, Equatable {
    case read
    case write(fua: Bool)
    case flush
    /// Discard: the range reads as zeroes afterwards and its disk space is freed.
    case trim
    /// Zero the range; `noHole` keeps it allocated.
    case zero(noHole: Bool)
}

/// One request to the engine. `done` gets the result (0 or a positive byte count on success,
/// -errno on failure) and, for a successful read, the buffer holding the data, which the caller
/// releases to the pool once sent. It runs on the engine's thread (or, for a request served
/// inline, on the submitting thread) and must not block.
///
/// Buffers are taken from the pool only when the scheduler dispatches a request: a request that
/// waits (behind its limit, or behind heavier clients) holds no buffer, so no client can starve
/// the others of buffers. A request with `memory` needs none: it reads into, or writes from,
/// memory its submitter owns (a ublk tag's buffer), and a read's `done` gets no buffer.
public struct BlockRequest: Sendable {
    public var client: Int
    public var volume: Volume
    public var op: BlockOp
    public var offset: UInt64
    public var length: UInt32
    /// A write's data, as read from the client.
    public var payload: [UInt8]?
    /// The submitter's memory for the data, at least `length` bytes, untouched by it until `done`.
    public var memory: IOMemory?
    public var done: @Sendable (Int32, IOBuffer?) -> Void

    public init(client: Int, volume: Volume, op: BlockOp, offset: UInt64, length: UInt32, payload: [UInt8]? = nil,
                memory: IOMemory? = nil, done: @escaping @Sendable (Int32, IOBuffer?) -> Void) {
        self.client = client
        self.volume = volume
        self.op = op
        self.offset = offset
        self.length = length
        self.payload = payload
        self.memory = memory
        self.done = done
    }

    var transfersData: Bool {
        switch op {
        case .read, .write: return true
        default: return false
        }
    }

    var needsBuffer: Bool { transfersData && memory == nil }
}

/// Memory a request's submitter owns and lends the engine until the request is done.
public struct IOMemory: @unchecked Sendable {
    // @unchecked: the submitter does not touch it while the engine has it.
    public let pointer: UnsafeMutableRawPointer
    public init(_ pointer: UnsafeMutableRawPointer) { self.pointer = pointer }
}

/// Per-client I/O counters, for `swapfairctl status`.
public struct ClientIOStats: Sendable, Equatable, Codable {
    public var reads: UInt64 = 0
    public var writes: UInt64 = 0
    public var readBytes: UInt64 = 0
    public var writeBytes: UInt64 = 0
    public var errors: UInt64 = 0
    public var queued: Int = 0
    public var inFlight: Int = 0
    /// Requests dispatched to meet the client's reservation (as opposed to by weight).
    public var reservationDispatches: UInt64 = 0
    /// Requests served at once on the connection's own thread because the engine was idle.
    public var inline: UInt64 = 0
    public init() {}
}

/// The swap device engine: one thread, one io_uring, one fair scheduler. Connections submit
/// requests from their own threads; the engine orders them by mClock tags (reservation, weight,
/// limit) and keeps at most `queueDepth` in flight on the ring.
public final class SwapEngine: @unchecked Sendable {
    // @unchecked: the ring, the scheduler and `pending` are touched only by the engine thread;
    // everything shared sits behind the mutexes.
    public let queueDepth: Int
    private let ring: IORing
    public let pool: BufferPool
    private var scheduler: FairScheduler<UInt64>
    private var pending: [UInt64: BlockRequest] = [:]
    private var buffers: [UInt64: IOBuffer] = [:]
    private var nextTag: UInt64 = 1
    /// Dispatched by the scheduler but not yet on the ring for want of a buffer (see `run`).
    private var retry: [FairScheduler<UInt64>.Dispatch] = []
    private var inFlight = 0

    private struct Inbox {
        var requests: [BlockRequest] = []
        var shares: [(Int, IOShare?)] = []  // nil: remove the client
        var sleeping = false
        var stopping = false
    }
    private let inbox = Mutex(Inbox())
    private let stats = Mutex<[Int: ClientIOStats]>([:])
    private let wakeRead: Int32
    private let wakeWrite: Int32
    private let wakeBuffer = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 8)
    private static let wakeTag: UInt64 = 0
    private let finished = DispatchSemaphore(value: 0)
    /// Requests submitted and not yet answered, over all clients: zero means the engine is idle.
    private let outstanding = Atomic<Int>(0)
    /// A request is being served inline (at most one at a time, see `serveInline`).
    private let inlineBusy = Atomic<Bool>(false)
    private let stopped = Atomic<Bool>(false)
    /// Clients with a limit: their requests always go through the scheduler.
    private let limited = Mutex<Set<Int>>([])
    /// Work the completions of one batch left for its end (engine thread only; see `atBatchEnd`).
    private var batchEnd: [ObjectIdentifier: () -> Void] = [:]
    /// The engine thread's `pthread_t` while it runs, else 0 (read on every completion).
    private let engineThread = Atomic<UInt>(0)

    public init(queueDepth: Int = 64, pool: BufferPool, costModel: CostModel = .default) throws(SysError) {
        self.queueDepth = queueDepth
        self.pool = pool
        ring = try IORing(entries: UInt32(max(8, queueDepth * 2)))
        scheduler = FairScheduler(costModel: costModel)
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw SysError("pipe", "engine wake-up", Errno(rawValue: errno)) }
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        wakeRead = fds[0]
        wakeWrite = fds[1]
    }

    deinit {
        close(wakeRead)
        close(wakeWrite)
        wakeBuffer.deallocate()
    }

    // MARK: - submitting threads

    public func setShare(client: Int, _ share: IOShare) {
        limited.withLock { if share.limit != nil { $0.insert(client) } else { $0.remove(client) } }
        wake { $0.shares.append((client, share)) }
        stats.withLock { if $0[client] == nil { $0[client] = ClientIOStats() } }
    }

    public func removeClient(_ client: Int) {
        limited.withLock { _ = $0.remove(client) }
        wake { $0.shares.append((client, nil)) }
    }

    public func submit(_ r: BlockRequest) { submit(contentsOf: [r]) }

    /// Several requests at once: one hand-over (and at most one wake-up) for all of them.
    public func submit(contentsOf rs: [BlockRequest]) {
        guard !rs.isEmpty else { return }
        outstanding.add(rs.count, ordering: .acquiring)
        stats.withLock { for r in rs { $0[r.client, default: ClientIOStats()].queued += 1 } }
        wake { $0.requests.append(contentsOf: rs) }
    }

    /// Serves a read or write on the calling thread, with `pread`/`pwrite`, when nothing else is
    /// queued or in flight anywhere in the engine and the client has no limit; `done` is called
    /// before it returns. False (nothing done) otherwise: submit it then.
    ///
    /// With the engine idle there is no contention to arbitrate, and handing a lone request to the
    /// engine's thread costs two wake-ups (its queue, then the ring), which at queue depth 1 are most
    /// of a request's time. Swap is mostly such requests. One inline request runs at a time, so
    /// while the engine gets busy again, inline service takes at most one request's worth beside it;
    /// a limited client is always scheduled, so its limit holds.
    public func serveInline(_ r: BlockRequest) -> Bool {
        let write: Bool, fua: Bool
        switch r.op {
        case .read: write = false; fua = false
        case .write(let f): write = true; fua = f
        default: return false
        }
        guard !stopped.load(ordering: .relaxed), outstanding.load(ordering: .acquiring) == 0 else { return false }
        guard !limited.withLock({ $0.contains(r.client) }) else { return false }
        guard inlineBusy.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged else {
            return false
        }
        defer { inlineBusy.store(false, ordering: .releasing) }
        let buffer: IOBuffer?
        if r.memory == nil {
            guard let b = pool.tryAcquire(Int(r.length)) else { return false }
            buffer = b
        } else {
            buffer = nil
        }
        guard let data = r.memory?.pointer ?? buffer?.pointer else { return false }
        let length = Int(r.length)
        if write, let payload = r.payload, let b = buffer {
            payload.withUnsafeBytes { b.pointer.copyMemory(from: $0.baseAddress!, byteCount: min($0.count, length)) }
        }
        let done = r.volume.transfer(write: write, data, length: length, offset: r.offset)
        // A short transfer means the end of the file: an I/O error, as on the ring.
        var result: Int32 = done < 0 ? Int32(done) : done < length ? -EIO : Int32(length)
        if result >= 0, fua, fdatasync(r.volume.fd) != 0 { result = -errno }
        account(r, result, inline: true)
        if !write, result >= 0, let buffer {
            r.done(result, buffer)
        } else {
            if let buffer { pool.release(buffer) }
            r.done(result, nil)
        }
        return true
    }

    public func statistics() -> [Int: ClientIOStats] { stats.withLock { $0 } }

    /// Whether the caller runs on the engine's thread (a `done` called by the engine, not inline).
    public var onEngineThread: Bool {
        let t = engineThread.load(ordering: .acquiring)
        return t != 0 && pthread_equal(pthread_self(), t) != 0
    }

    /// From a `done` on the engine's thread: runs `work` once, after the batch of completions
    /// being handled, however many of them ask under the same key. A connection answers all of a
    /// batch's requests with one `sendmsg` this way instead of one each.
    public func atBatchEnd(_ key: ObjectIdentifier, _ work: @escaping () -> Void) {
        if batchEnd[key] == nil { batchEnd[key] = work }
    }

    private func endBatch() {
        while !batchEnd.isEmpty {
            let work = batchEnd
            batchEnd.removeAll(keepingCapacity: true)
            for w in work.values { w() }
        }
    }

    public func start() {
        startThread(named: "swap-engine") { [self] in
            run()
            finished.signal()
        }
    }

    /// Stops after the requests already in flight complete; queued ones fail with ESHUTDOWN.
    public func stop() {
        stopped.store(true, ordering: .relaxed)
        wake { $0.stopping = true }
        finished.wait()
    }

    private func wake(_ change: (inout Inbox) -> Void) {
        let sleeping = inbox.withLock { box -> Bool in
            change(&box)
            let s = box.sleeping
            box.sleeping = false
            return s
        }
        if sleeping {
            var b: UInt8 = 1
            _ = write(wakeWrite, &b, 1)
        }
    }

    // MARK: - the engine thread

    private func run() {
        engineThread.store(pthread_self(), ordering: .releasing)
        defer { engineThread.store(0, ordering: .releasing) }
        ring.prepare(.readWake(fd: wakeRead, buffer: wakeBuffer, length: 64), userData: Self.wakeTag)
        var stopping = false
        while true {
            // 1. Take what the other threads handed over.
            let (requests, shares, stop) = inbox.withLock { box in
                defer { box.requests.removeAll(keepingCapacity: true); box.shares.removeAll() }
                return (box.requests, box.shares, box.stopping)
            }
            stopping = stopping || stop
            for (client, share) in shares {
                if let share { scheduler.addClient(client, share: share) } else {
                    for tag in scheduler.removeClient(client) { fail(tag, -ESHUTDOWN) }
                }
            }
            let t = monotonicSeconds()
            for r in requests {
                let tag = nextTag
                nextTag += 1
                pending[tag] = r
                if scheduler.share(of: r.client) == nil { scheduler.addClient(r.client, share: IOShare(weight: 100)) }
                scheduler.enqueue(tag, client: r.client, bytes: Int(r.length), now: t)
            }
            if stopping {
                while let d = retry.popLast() ?? scheduler.dequeue(now: .infinity) { fail(d.item, -ESHUTDOWN) }
                if inFlight == 0 { endBatch(); return }
            }
            // 2. Dispatch while there is room on the ring.
            // The ring has room for twice the queue depth, so a prepare cannot fail here. Requests
            // served inline and reads of shared blocks take buffers on other threads, so the last
            // free one may be gone when taken: the request then waits for the next round, first.
            while inFlight < queueDepth, let d = retry.isEmpty ? scheduler.dequeue(now: t) : retry.removeFirst() {
                let tag = d.item, phase = d.phase
                guard let r = pending[tag] else { continue }
                if r.needsBuffer {
                    guard let b = pool.tryAcquire(Int(r.length)) else {
                        retry.insert(d, at: 0)
                        break
                    }
                    if let payload = r.payload {
                        payload.withUnsafeBytes { b.pointer.copyMemory(from: $0.baseAddress!, byteCount: min($0.count, Int(r.length))) }
                    }
                    buffers[tag] = b
                }
                guard prepare(r, buffer: buffers[tag], tag: tag) else { complete(tag, -EAGAIN); continue }
                inFlight += 1
                stats.withLock {
                    $0[r.client, default: ClientIOStats()].queued -= 1
                    $0[r.client, default: ClientIOStats()].inFlight += 1
                    if phase == .reservation { $0[r.client, default: ClientIOStats()].reservationDispatches += 1 }
                }
            }
            endBatch()
            // 3. Submit, and sleep until a completion, a wake-up, or a limit lets a request go.
            let idle = inbox.withLock { box -> Bool in
                if box.requests.isEmpty && box.shares.isEmpty && !box.stopping { box.sleeping = true; return true }
                return false
            }
            do {
                // Requests waiting for a buffer are tried again within a millisecond: buffers come
                // back from the connections' threads, which do not wake the engine.
                let starved = !retry.isEmpty
                if idle, let next = starved ? t + 0.001 : scheduler.nextEligibleTime(now: t), inFlight < queueDepth {
                    try ring.submit()
                    _ = try ring.wait(timeout: max(0, next - monotonicSeconds()))
                } else if idle {
                    try ring.submit(wait: 1)
                } else {
                    try ring.submit()
                }
            } catch {
                // The ring itself failed (should not happen): fail what is queued rather than hang.
                while let d = retry.popLast() ?? scheduler.dequeue(now: .infinity) { fail(d.item, -EIO) }
            }
            inbox.withLock { $0.sleeping = false }
            // 4. Completions.
            ring.drainCompletions { tag, res in
                if tag == Self.wakeTag {
                    ring.prepare(.readWake(fd: wakeRead, buffer: wakeBuffer, length: 64), userData: Self.wakeTag)
                    return
                }
                inFlight -= 1
                complete(tag, res)
            }
            endBatch()
        }
    }

    /// Prepares the ring operation for a request; false when the ring is full.
    private func prepare(_ r: BlockRequest, buffer: IOBuffer?, tag: UInt64) -> Bool {
        let fd = r.volume.fd
        let data = buffer?.pointer ?? r.memory?.pointer
        switch r.op {
        case .read:
            guard let data else { return false }
            return ring.prepare(.read(fd: fd, buffer: data, length: r.length, offset: r.offset), userData: tag)
        case .write(let fua):
            guard let data else { return false }
            return ring.prepare(.write(fd: fd, buffer: data, length: r.length, offset: r.offset, dsync: fua),
                                userData: tag)
        case .flush:
            return ring.prepare(.sync(fd: fd), userData: tag)
        case .trim:
            return ring.prepare(.fallocate(fd: fd, mode: FALLOC_PUNCH_HOLE | FALLOC_KEEP_SIZE, offset: r.offset,
                                           length: UInt64(r.length)), userData: tag)
        case .zero(let noHole):
            let mode = noHole ? FALLOC_ZERO_RANGE | FALLOC_KEEP_SIZE : FALLOC_PUNCH_HOLE | FALLOC_KEEP_SIZE
            return ring.prepare(.fallocate(fd: fd, mode: mode, offset: r.offset, length: UInt64(r.length)), userData: tag)
        }
    }

    private func complete(_ tag: UInt64, _ res: Int32) {
        guard let r = pending.removeValue(forKey: tag) else { return }
        // Before `done`: the client may send its next request as soon as it has the answer.
        outstanding.subtract(1, ordering: .releasing)
        let buffer = buffers.removeValue(forKey: tag)
        var result = res
        // A short read or write on a regular file means the end of the file: report an I/O error.
        if res >= 0, r.transfersData, res != Int32(r.length) {
            result = -EIO
        }
        account(r, result, inline: false)
        // A read's buffer goes to the caller with the data; everything else comes back now.
        if case .read = r.op, result >= 0, let buffer {
            r.done(result, buffer)
        } else {
            if let buffer { pool.release(buffer) }
            r.done(result, nil)
        }
    }

    /// Counts a finished request: one the engine ran (it leaves the in-flight count) or one
    /// served inline.
    private func account(_ r: BlockRequest, _ result: Int32, inline: Bool) {
        stats.withLock { all in
            var s = all[r.client, default: ClientIOStats()]
            if inline { s.inline += 1 } else { s.inFlight -= 1 }
            if result < 0 { s.errors += 1 }
            switch r.op {
            case .read: s.reads += 1; s.readBytes += UInt64(r.length)
            case .write: s.writes += 1; s.writeBytes += UInt64(r.length)
            default: break
            }
            all[r.client] = s
        }
    }

    private func fail(_ tag: UInt64, _ error: Int32) {
        guard let r = pending.removeValue(forKey: tag) else { return }
        // Before `done`: the client may send its next request as soon as it has the answer.
        outstanding.subtract(1, ordering: .releasing)
        stats.withLock { $0[r.client, default: ClientIOStats()].queued -= 1; $0[r.client, default: ClientIOStats()].errors += 1 }
        if let b = buffers.removeValue(forKey: tag) { pool.release(b) }
        r.done(error, nil)
    }
}

// fallocate modes (<linux/falloc.h>), not exported to Swift.
let FALLOC_KEEP_SIZE: Int32 = 0x01
let FALLOC_PUNCH_HOLE: Int32 = 0x02
let FALLOC_ZERO_RANGE: Int32 = 0x10
