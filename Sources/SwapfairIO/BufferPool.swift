import Dispatch
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A page-aligned I/O buffer from a pool. The memory is owned by the pool.
public struct IOBuffer: @unchecked Sendable {
    // @unchecked: a buffer is handed from thread to thread (reader → engine → writer) but used by
    // one at a time; the pool's lock orders the hand-offs.
    public let pointer: UnsafeMutableRawPointer
    public let capacity: Int
    let index: Int  // -1: allocated outside the pool (an oversized request)
}

/// Preallocated, page-aligned, locked buffers, so that serving swap I/O needs no memory
/// allocation: a swap device that had to allocate to make progress could deadlock the very
/// reclaim it serves. `acquire` blocks while all buffers are in use (backpressure on clients).
public final class BufferPool: Sendable {
    public let bufferSize: Int
    public let count: Int
    private let base: UnsafeMutableRawPointer.Sendable
    private let freeList = Mutex<[Int]>([])
    private let available: DispatchSemaphore

    public init(count: Int, bufferSize: Int) {
        self.count = count
        self.bufferSize = bufferSize
        var p: UnsafeMutableRawPointer?
        posix_memalign(&p, 4096, count * bufferSize)
        let memory = p ?? UnsafeMutableRawPointer.allocate(byteCount: count * bufferSize, alignment: 4096)
        memset(memory, 0, count * bufferSize)  // touch every page now, not under memory pressure later
        mlock(memory, count * bufferSize)      // best effort; mlockall covers it when the daemon has it
        base = .init(memory)
        freeList.withLock { $0 = Array((0..<count).reversed()) }
        available = DispatchSemaphore(value: count)
    }

    deinit {
        munlock(base.pointer, count * bufferSize)
        free(base.pointer)
    }

    /// A buffer of at least `length` bytes. Requests larger than the pool's buffers get a buffer
    /// of their own (allocated, so not guaranteed under memory pressure; swap I/O is far smaller).
    public func acquire(_ length: Int) -> IOBuffer {
        if length > bufferSize {
            var p: UnsafeMutableRawPointer?
            posix_memalign(&p, 4096, length)
            let memory = p ?? UnsafeMutableRawPointer.allocate(byteCount: length, alignment: 4096)
            return IOBuffer(pointer: memory, capacity: length, index: -1)
        }
        available.wait()
        let i = freeList.withLock { $0.removeLast() }
        return IOBuffer(pointer: base.pointer + i * bufferSize, capacity: bufferSize, index: i)
    }

    /// A buffer if one is free now, else nil. Oversized requests always get one of their own.
    public func tryAcquire(_ length: Int) -> IOBuffer? {
        if length > bufferSize { return acquire(length) }
        guard available.wait(timeout: .now()) == .success else { return nil }
        let i = freeList.withLock { $0.removeLast() }
        return IOBuffer(pointer: base.pointer + i * bufferSize, capacity: bufferSize, index: i)
    }

    public func release(_ b: IOBuffer) {
        if b.index < 0 {
            Glibc.free(b.pointer)
            return
        }
        freeList.withLock { $0.append(b.index) }
        available.signal()
    }

    public var inUse: Int { count - freeCount }
    public var freeCount: Int { freeList.withLock { $0.count } }
}

extension UnsafeMutableRawPointer {
    /// A raw pointer that may cross threads: the owner guarantees exclusive use.
    struct Sendable: @unchecked Swift.Sendable {
        let pointer: UnsafeMutableRawPointer
        init(_ p: UnsafeMutableRawPointer) { pointer = p }
    }
}
