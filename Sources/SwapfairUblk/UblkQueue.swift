import CURing
import Dispatch
import Foundation
import Synchronization
import SwapfairIO
import SwapfairSys
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// What a ublk device's blocks are: where its requests are served.
public protocol UblkTarget: Sendable {
    var size: UInt64 { get }
    /// Serves one request on `buffer` (`length` bytes at byte `offset`, within `size`); returns
    /// the bytes done for reads and writes, 0 for the others, or a negative errno.
    func serve(_ op: UblkRequestKind, offset: UInt64, length: Int, buffer: UnsafeMutableRawPointer) -> Int32
}

public enum UblkRequestKind: Sendable { case read, write, flush, discard, writeZeroes }

/// One ublk queue: its own thread and io_uring, `depth` preallocated buffers (one per tag), and the
/// kernel's request descriptors mapped from the character device. Each tag cycles through
/// FETCH_REQ → (the kernel hands a request) → serve it → COMMIT_AND_FETCH_REQ with the result.
/// Nothing is allocated per request, so serving swap needs no free memory.
final class UblkQueue: @unchecked Sendable {
    let cdev: Int32
    let depth: Int
    let bufferSize: Int
    let target: any UblkTarget
    let legacy: Bool
    let descriptors: UnsafeMutableRawPointer
    let descriptorBytes: Int
    let buffers: UnsafeMutableRawPointer
    /// A pipe whose read sits in the ring: writing to it wakes the thread to stop. (Stopping the
    /// device does not complete the queue's fetches on recent kernels; they are cancelled when the
    /// thread's ring is closed.)
    let stopRead: Int32, stopWrite: Int32
    let stopBuffer = UnsafeMutableRawPointer.allocate(byteCount: 8, alignment: 8)
    static let stopTag = UInt64.max
    /// Signalled once every tag's first fetch is submitted (the device may be started then), and
    /// again when the thread ends.
    let fetched = DispatchSemaphore(value: 0)
    let finished = DispatchSemaphore(value: 0)
    private(set) var startError: UblkError?
    /// Requests served, and those that failed (read from other threads).
    let served = Atomic<UInt64>(0)
    let failed = Atomic<UInt64>(0)

    init(cdev: Int32, depth: Int, bufferSize: Int, target: any UblkTarget, legacy: Bool) throws(UblkError) {
        self.cdev = cdev
        self.depth = depth
        self.bufferSize = bufferSize
        self.target = target
        self.legacy = legacy
        // Queue 0's descriptors start at offset 0 of the character device.
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        descriptorBytes = (depth * MemoryLayout<ublksrv_io_desc>.size + page - 1) / page * page
        guard let d = mmap(nil, descriptorBytes, PROT_READ, MAP_SHARED | MAP_POPULATE, cdev, 0), d != MAP_FAILED else {
            throw .system(SysError("mmap", "ublk request descriptors", Errno(rawValue: errno)))
        }
        descriptors = d
        var b: UnsafeMutableRawPointer?
        guard posix_memalign(&b, page, depth * bufferSize) == 0, let b else {
            munmap(d, descriptorBytes)
            throw .system(SysError("posix_memalign", "ublk buffers", .noMemory))
        }
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else {
            munmap(d, descriptorBytes)
            free(b)
            throw .system(SysError("pipe", "ublk queue stop", Errno(rawValue: errno)))
        }
        buffers = b
        stopRead = fds[0]
        stopWrite = fds[1]
    }

    private var mapped = true

    /// Unmaps the descriptors once the thread has ended: the mapping holds the character device
    /// open, and the kernel deletes a device only when nothing does.
    func unmap() {
        if mapped { munmap(descriptors, descriptorBytes) }
        mapped = false
    }

    deinit {
        unmap()
        free(buffers)
        close(stopRead)
        close(stopWrite)
        stopBuffer.deallocate()
    }

    /// Makes the thread leave its loop (and close its ring); `finished` is signalled then.
    func requestStop() {
        var one: UInt8 = 1
        _ = write(stopWrite, &one, 1)
    }

    func start() {
        let t = Thread { [self] in
            run()
            finished.signal()
        }
        t.name = "ublk-queue"
        t.start()
    }

    func opcode(_ nr: UInt32) -> UInt32 {
        legacy ? nr : UblkCommand.encoded(nr, payloadSize: UblkCommand.ioPayloadSize)
    }

    func queueCommand(_ ring: SwapfairIO.IORing, _ nr: UInt32, tag: Int, result: Int32) -> Bool {
        var cmd = ublksrv_io_cmd()
        cmd.q_id = 0
        cmd.tag = UInt16(tag)
        cmd.result = result
        cmd.addr = UInt64(UInt(bitPattern: buffers + tag * bufferSize))
        return withUnsafeBytes(of: &cmd) { ring.prepareCommand(fd: cdev, op: opcode(nr), payload: $0, userData: UInt64(tag)) }
    }

    /// The queue's loop. The kernel takes I/O commands for a queue only from the task that sent its
    /// first fetch, so the ring is made and used on this thread alone.
    func run() {
        let ring: SwapfairIO.IORing
        do { ring = try SwapfairIO.IORing(entries: UInt32(depth + 1)) } catch {
            startError = .system(error)
            fetched.signal()
            return
        }
        ring.prepare(.readWake(fd: stopRead, buffer: stopBuffer, length: 8), userData: Self.stopTag)
        for tag in 0..<depth { _ = queueCommand(ring, UblkCommand.fetchRequest, tag: tag, result: 0) }
        do { try ring.submit() } catch {
            startError = .system(error)
            fetched.signal()
            return
        }
        fetched.signal()
        var aborted = 0
        var stop = false
        while aborted < depth && !stop {
            do { try ring.submit(wait: 1) } catch { break }
            ring.drainCompletions { data, res in
                if data == Self.stopTag {
                    stop = true
                    return
                }
                let tag = Int(data)
                guard res == UBLK_IO_RES_OK else {
                    // UBLK_IO_RES_ABORT: the device is stopping; this tag is done.
                    aborted += 1
                    return
                }
                let result = serve(tag: tag)
                if result < 0 { failed.add(1, ordering: .relaxed) }
                served.add(1, ordering: .relaxed)
                _ = queueCommand(ring, UblkCommand.commitAndFetchRequest, tag: tag, result: result)
            }
        }
    }

    /// Reads the tag's descriptor and serves it. Requests beyond the device or larger than a
    /// buffer (which the kernel should never send) are refused with EIO rather than served.
    func serve(tag: Int) -> Int32 {
        let d = descriptors.load(fromByteOffset: tag * MemoryLayout<ublksrv_io_desc>.size, as: ublksrv_io_desc.self)
        let offset = d.start_sector << 9, length = Int(d.nr_sectors) << 9
        guard let op = UblkOperation(rawValue: UInt8(d.op_flags & 0xff)) else { return -EOPNOTSUPP }
        let kind: UblkRequestKind
        switch op {
        case .read: kind = .read
        case .write: kind = .write
        case .flush: return target.serve(.flush, offset: 0, length: 0, buffer: buffers + tag * bufferSize)
        case .discard: kind = .discard
        case .writeZeroes: kind = .writeZeroes
        case .writeSame: return -EOPNOTSUPP
        }
        guard offset <= target.size, UInt64(length) <= target.size - offset else { return -EIO }
        if kind == .read || kind == .write { guard length <= bufferSize else { return -EIO } }
        return target.serve(kind, offset: offset, length: length, buffer: buffers + tag * bufferSize)
    }
}
