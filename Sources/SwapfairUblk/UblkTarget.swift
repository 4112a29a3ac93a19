import Dispatch
import SwapfairIO
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

public enum UblkRequestKind: Sendable { case read, write, flush, discard, writeZeroes }

/// One request as a target sees it: `length` bytes at byte `offset` (within the target's size),
/// on the tag's buffer, with the tag's own scratch (`UblkTarget.scratchBytes`, kept from `start`
/// to `finish`). A target that answers later (`UblkStart.pending`) calls `completion` once.
public struct UblkRequest {
    public let kind: UblkRequestKind
    public let offset: UInt64
    public let length: Int
    public let buffer: UnsafeMutableRawPointer
    public let scratch: UnsafeMutableRawPointer
    public var completion = UblkCompletion.unused
}

/// The answer to a request its target took with `.pending`: called once, from any thread, with
/// the request's result (as `start`'s `.done` would have it). The buffer is the target's until then.
public struct UblkCompletion: Sendable {
    let post: @Sendable (Int32) -> Void
    public init(_ post: @escaping @Sendable (Int32) -> Void) { self.post = post }
    public func callAsFunction(_ result: Int32) { post(result) }
    static let unused = UblkCompletion { _ in preconditionFailure("a ublk request answered twice, or outside a queue") }
}

/// One file transfer of a request: `length` bytes between the request's buffer (from
/// `bufferOffset`) and `fd` at `offset`.
public struct UblkTransfer: Sendable {
    public var fd: Int32
    public var offset: UInt64
    public var length: Int
    public var bufferOffset: Int
}

/// The transfers a request needs, in room the queue set aside for its tag (one per page of its
/// largest request), so that nothing is allocated per request.
public struct UblkTransfers {
    let base: UnsafeMutablePointer<UblkTransfer>
    public let capacity: Int
    public private(set) var count = 0

    init(base: UnsafeMutablePointer<UblkTransfer>, capacity: Int) {
        self.base = base
        self.capacity = capacity
    }

    /// Adds a transfer; false when there is no room left (the request must then fail).
    @discardableResult
    public mutating func add(fd: Int32, offset: UInt64, length: Int, bufferOffset: Int) -> Bool {
        guard count < capacity else { return false }
        base[count] = UblkTransfer(fd: fd, offset: offset, length: length, bufferOffset: bufferOffset)
        count += 1
        return true
    }

    subscript(i: Int) -> UblkTransfer { base[i] }

    /// Runs every transfer of `request` at once on the calling thread: its length, or the first
    /// failing transfer's negative errno.
    func runNow(_ request: UblkRequest) -> Int32 {
        for i in 0..<count {
            let done = Self.transferNow(base[i], write: request.kind == .write, buffer: request.buffer)
            if let e = Self.outcome(of: base[i], kind: request.kind, result: done, buffer: request.buffer) { return e }
        }
        return Int32(request.length)
    }

    /// Runs one transfer at once with blocking `pread`/`pwrite`, again after EINTR and short
    /// transfers: the bytes done (fewer only at the end of the file), or a negative errno.
    static func transferNow(_ t: UblkTransfer, write: Bool, buffer: UnsafeMutableRawPointer) -> Int {
        Volume.transfer(fd: t.fd, write: write, buffer + t.bufferOffset, length: t.length, offset: t.offset)
    }

    /// What one transfer's result means for its request: nil when it is done, or a negative errno.
    /// A short read is past the end of the file, which reads as zeros as a device's would; a short
    /// write is an error.
    static func outcome(of t: UblkTransfer, kind: UblkRequestKind, result: Int, buffer: UnsafeMutableRawPointer) -> Int32? {
        if result < 0 { return Int32(truncatingIfNeeded: result) }
        guard result < t.length else { return nil }
        if kind == .write { return -EIO }
        (buffer + t.bufferOffset + result).initializeMemory(as: UInt8.self, repeating: 0, count: t.length - result)
        return nil
    }
}

/// How a target takes a request: done at once (the result), file transfers for the queue to run
/// on its ring (after which it calls `finish`), or pending: the target answers through the
/// request's `completion` later (work handed to another thread, such as the swap engine).
public enum UblkStart: Equatable { case done(Int32), transfer, pending }

/// What a ublk device's blocks are: where its requests are served. The queue has many requests
/// in flight at once, but never two whose ranges overlap: a target may keep per-slot state between
/// `start` and `finish` without locking against the same slot's next request.
public protocol UblkTarget: Sendable {
    var size: UInt64 { get }
    /// Bytes of scratch each tag keeps for the target from `start` to `finish`.
    var scratchBytes: Int { get }
    /// Whether the queue should run this target's transfers at once on its thread, with blocking
    /// `pread`/`pwrite`, instead of on its ring: for files whose reads and writes are copies in
    /// RAM, quicker done than handed to one of io_uring's worker threads.
    var transfersInline: Bool { get }
    /// Takes a request: either its result (bytes done for reads and writes, 0 for the others, or
    /// a negative errno), or `.transfer` with the file transfers added to `transfers`.
    func start(_ request: UblkRequest, transfers: inout UblkTransfers) -> UblkStart
    /// The transfers of a request that `start` took are over: `result` is its length, or the
    /// first transfer's negative errno. Returns the request's result.
    func finish(_ request: UblkRequest, result: Int32) -> Int32
}

extension UblkTarget {
    public var scratchBytes: Int { 0 }
    public var transfersInline: Bool { false }
    public func finish(_ request: UblkRequest, result: Int32) -> Int32 { result }

    /// Serves one request at once on the calling thread, with blocking `pread`/`pwrite`: what the
    /// queue does, one request at a time (for tests and tools).
    /// Whether the queue refuses a request before the target sees it: one beyond the device, or a
    /// read or write larger than a buffer (which the kernel should never send; EIO, not served).
    func refuses(_ kind: UblkRequestKind, offset: UInt64, length: Int, bufferSize: Int) -> Bool {
        guard kind != .flush else { return false }
        guard offset <= size, UInt64(length) <= size - offset else { return true }
        return (kind == .read || kind == .write) && length > bufferSize
    }

    public func serve(_ kind: UblkRequestKind, offset: UInt64, length: Int, buffer: UnsafeMutableRawPointer) -> Int32 {
        if refuses(kind, offset: offset, length: length, bufferSize: max(length, 4096)) { return -EIO }
        let scratch = UnsafeMutableRawPointer.allocate(byteCount: max(scratchBytes, 16), alignment: 16)
        let room = max(1, length / 4096)
        let slots = UnsafeMutablePointer<UblkTransfer>.allocate(capacity: room)
        defer {
            scratch.deallocate()
            slots.deallocate()
        }
        let answer = PendingAnswer()
        var request = UblkRequest(kind: kind, offset: offset, length: length, buffer: buffer, scratch: scratch)
        request.completion = UblkCompletion { answer.give($0) }
        var transfers = UblkTransfers(base: slots, capacity: room)
        switch start(request, transfers: &transfers) {
        case .done(let r): return r
        case .pending: return answer.wait()
        case .transfer: return finish(request, result: transfers.runNow(request))
        }
    }
}

/// One pending request's answer, waited for by `serve`.
private final class PendingAnswer: Sendable {
    private let result = Mutex<Int32>(0)
    private let given = DispatchSemaphore(value: 0)
    func give(_ r: Int32) {
        result.withLock { $0 = r }
        given.signal()
    }
    func wait() -> Int32 {
        given.wait()
        return result.withLock { $0 }
    }
}
