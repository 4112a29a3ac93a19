import CURing
import SwapfairSys
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// One io_uring instance (liburing). Not thread-safe: one ring per engine thread.
public final class IORing {
    /// liburing keeps pointers into this struct, so it lives at a fixed heap address.
    let ring: UnsafeMutablePointer<io_uring>
    public let entries: UInt32
    /// Bytes per submission entry: 64, or 128 with `IORING_SETUP_SQE128` (which ublk's control
    /// commands need for their 32-byte payload).
    public let entrySize: Int

    /// Sets up a ring; `bigEntries` sets `IORING_SETUP_SQE128`. The corresponding C function is
    /// `io_uring_queue_init`.
    public init(entries: UInt32, bigEntries: Bool = false) throws(SysError) {
        ring = .allocate(capacity: 1)
        ring.initialize(to: io_uring())
        let rc = io_uring_queue_init(entries, ring, bigEntries ? UInt32(IORING_SETUP_SQE128) : 0)
        guard rc == 0 else {
            ring.deallocate()
            throw SysError("io_uring_queue_init", "\(entries) entries", Errno(rawValue: -rc))
        }
        self.entries = entries
        entrySize = bigEntries ? 128 : 64
    }

    /// Queues a command to a driver (`IORING_OP_URING_CMD`): `op` is the driver's command number,
    /// `payload` goes into the entry's command area (byte 48 on: 16 bytes, or 80 in a 128-byte
    /// entry). False when the submission queue is full. liburing 2.3 has no helper for it and Swift
    /// does not import the entry's flexible `cmd` array, so the entry is written by offset.
    @discardableResult
    public func prepareCommand(fd: Int32, op: UInt32, payload: UnsafeRawBufferPointer, userData: UInt64) -> Bool {
        precondition(payload.count <= entrySize - 48, "a uring command's payload must fit its entry")
        guard let e = sqe() else { return false }
        let raw = UnsafeMutableRawPointer(e)
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: entrySize)
        raw.storeBytes(of: UInt8(IORING_OP_URING_CMD.rawValue), toByteOffset: 0, as: UInt8.self)
        raw.storeBytes(of: fd, toByteOffset: 4, as: Int32.self)
        raw.storeBytes(of: op, toByteOffset: 8, as: UInt32.self)  // cmd_op, in the union with off
        if let base = payload.baseAddress { (raw + 48).copyMemory(from: base, byteCount: payload.count) }
        io_uring_sqe_set_data64(e, userData)
        return true
    }

    deinit {
        io_uring_queue_exit(ring)
        ring.deallocate()
    }

    /// A free submission entry, or nil when the submission queue is full (submit first).
    func sqe() -> UnsafeMutablePointer<io_uring_sqe>? { io_uring_get_sqe(ring) }

    public enum Operation {
        case read(fd: Int32, buffer: UnsafeMutableRawPointer, length: UInt32, offset: UInt64)
        case write(fd: Int32, buffer: UnsafeRawPointer, length: UInt32, offset: UInt64, dsync: Bool)
        /// fdatasync (IORING_FSYNC_DATASYNC).
        case sync(fd: Int32)
        /// fallocate(mode, offset, length): punch holes, zero ranges.
        case fallocate(fd: Int32, mode: Int32, offset: UInt64, length: UInt64)
        /// Read from an eventfd or pipe (a wake-up).
        case readWake(fd: Int32, buffer: UnsafeMutableRawPointer, length: UInt32)
    }

    /// Queues one operation; false when the submission queue is full.
    /// The corresponding C functions are `io_uring_prep_read`, `io_uring_prep_write`,
    /// `io_uring_prep_fsync` and `io_uring_prep_fallocate`.
    @discardableResult
    public func prepare(_ op: Operation, userData: UInt64) -> Bool {
        guard let e = sqe() else { return false }
        switch op {
        case .read(let fd, let buffer, let length, let offset):
            io_uring_prep_read(e, fd, buffer, length, offset)
        case .write(let fd, let buffer, let length, let offset, let dsync):
            io_uring_prep_write(e, fd, buffer, length, offset)
            if dsync { e.pointee.rw_flags = UInt32(RWF_DSYNC) }
        case .sync(let fd):
            io_uring_prep_fsync(e, fd, UInt32(IORING_FSYNC_DATASYNC))
        case .fallocate(let fd, let mode, let offset, let length):
            io_uring_prep_fallocate(e, fd, mode, off_t(offset), off_t(length))
        case .readWake(let fd, let buffer, let length):
            io_uring_prep_read(e, fd, buffer, length, 0)
        }
        io_uring_sqe_set_data64(e, userData)
        return true
    }

    /// Submits what is queued and, with `wait`, blocks until at least that many completions are
    /// ready. The corresponding C function is `io_uring_submit_and_wait`.
    @discardableResult
    public func submit(wait: UInt32 = 0) throws(SysError) -> Int {
        while true {
            let rc = io_uring_submit_and_wait(ring, wait)
            if rc >= 0 { return Int(rc) }
            if rc == -EINTR { continue }
            throw SysError("io_uring_submit_and_wait", "ring", Errno(rawValue: -rc))
        }
    }

    /// Waits for a completion for at most `seconds`. Returns false on timeout.
    /// The corresponding C function is `io_uring_wait_cqe_timeout`.
    public func wait(timeout seconds: Double) throws(SysError) -> Bool {
        var ts = __kernel_timespec(tv_sec: Int64(seconds), tv_nsec: Int64((seconds - Double(Int64(seconds))) * 1e9))
        var cqe: UnsafeMutablePointer<io_uring_cqe>?
        let rc = io_uring_wait_cqe_timeout(ring, &cqe, &ts)
        if rc == -ETIME || rc == -EINTR { return false }
        guard rc == 0 else { throw SysError("io_uring_wait_cqe_timeout", "ring", Errno(rawValue: -rc)) }
        return true
    }

    /// Hands every ready completion to `body` (user data, result: bytes or -errno) and marks them
    /// seen. Returns how many there were. `io_uring_for_each_cqe` is a macro Swift cannot call,
    /// hence the peek loop.
    @discardableResult
    public func drainCompletions(_ body: (UInt64, Int32) -> Void) -> Int {
        var n = 0
        var cqe: UnsafeMutablePointer<io_uring_cqe>?
        while io_uring_peek_cqe(ring, &cqe) == 0, let c = cqe {
            let data = c.pointee.user_data, res = c.pointee.res
            io_uring_cqe_seen(ring, c)
            body(data, res)
            n += 1
        }
        return n
    }
}
