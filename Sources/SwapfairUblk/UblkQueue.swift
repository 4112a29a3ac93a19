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

/// One ublk queue: its own thread and io_uring, `depth` preallocated buffers (one per tag), and the
/// kernel's request descriptors mapped from the character device. Each tag cycles through
/// FETCH_REQ → (the kernel hands a request) → the target starts it → its file transfers run on the
/// same ring → the target finishes it → COMMIT_AND_FETCH_REQ with the result. Up to `depth`
/// requests are in flight at once, as the kernel's own swap would have them at the disk; a request
/// whose range overlaps one in flight waits for it. Nothing is allocated per request (buffers,
/// transfers and the targets' scratch are set aside per tag), so serving swap needs no free memory.
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
    /// Answers to requests the target took as pending, posted from other threads; a pipe whose
    /// read sits in the ring wakes the thread for them.
    let answers: UblkAnswers
    let answerBuffer = UnsafeMutableRawPointer.allocate(byteCount: 8, alignment: 8)
    static let answerTag = UInt64.max - 1
    /// Each tag's way to answer (made once, so that answering allocates nothing).
    let completions: [UblkCompletion]
    /// Requests the target took as pending and has not answered yet.
    var pendingCount = 0
    /// The answers being handled (swapped with the posted ones, so that neither side allocates).
    var answered: [(tag: Int, result: Int32)] = []
    /// Signalled once every tag's first fetch is submitted (the device may be started then), and
    /// again when the thread ends.
    let fetched = DispatchSemaphore(value: 0)
    let finished = DispatchSemaphore(value: 0)
    private(set) var startError: UblkError?
    /// Requests served, and those that failed (read from other threads).
    let served = Atomic<UInt64>(0)
    let failed = Atomic<UInt64>(0)

    /// Each tag's request while it is in flight (the queue's thread alone uses these).
    struct TagState {
        var kind = UblkRequestKind.read
        var offset: UInt64 = 0
        var length = 0
        var transfers = 0
        /// Transfers handed to the ring so far, and those not yet completed.
        var issued = 0
        var remaining = 0
        var error: Int32 = 0
    }
    let tags: UnsafeMutablePointer<TagState>
    /// Room for each tag's transfers (one per page of the largest request) and the target's scratch.
    let transferRoom: Int
    let transferSlots: UnsafeMutablePointer<UblkTransfer>
    let scratchStride: Int
    let scratch: UnsafeMutableRawPointer
    var gate: OverlapGate
    var transfersInFlight = 0
    /// Started requests with transfers still to hand to the ring, in the order they started.
    var unissued: [Int]
    /// The ring's submission entries. The transfers in flight are bounded so that every
    /// completion, the commands' and the stop pipe's included, fits the completion queue (twice
    /// the entries): the kernel would otherwise have to allocate room for the overflow.
    var ringEntries: Int { max(64, depth * 2) }
    var transferLimit: Int { max(1, 2 * ringEntries - depth - 1) }
    static let transferFlag: UInt64 = 1 << 62

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
        tags = .allocate(capacity: depth)
        tags.initialize(repeating: TagState(), count: depth)
        transferRoom = max(1, bufferSize / 4096)
        transferSlots = .allocate(capacity: depth * transferRoom)
        transferSlots.initialize(repeating: UblkTransfer(fd: -1, offset: 0, length: 0, bufferOffset: 0), count: depth * transferRoom)
        scratchStride = (max(target.scratchBytes, 16) + 63) / 64 * 64
        scratch = .allocate(byteCount: depth * scratchStride, alignment: 64)
        scratch.initializeMemory(as: UInt8.self, repeating: 0, count: depth * scratchStride)
        gate = OverlapGate(tags: depth)
        unissued = []
        unissued.reserveCapacity(depth)
        stopRead = fds[0]
        stopWrite = fds[1]
        var answerFDs: [Int32] = [0, 0]
        guard pipe(&answerFDs) == 0 else {
            let e = Errno(rawValue: errno)
            munmap(d, descriptorBytes)
            free(b)
            close(fds[0])
            close(fds[1])
            throw .system(SysError("pipe", "ublk queue answers", e))
        }
        for fd in answerFDs { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        let answers = UblkAnswers(read: answerFDs[0], write: answerFDs[1], capacity: depth)
        self.answers = answers
        completions = (0..<depth).map { tag in UblkCompletion { answers.post(tag: tag, result: $0) } }
        answered.reserveCapacity(depth)
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
        answerBuffer.deallocate()
        tags.deallocate()
        transferSlots.deallocate()
        scratch.deallocate()
    }

    /// Makes the thread leave its loop (and close its ring); `finished` is signalled then.
    func requestStop() {
        var one: UInt8 = 1
        _ = write(stopWrite, &one, 1)
    }

    /// `name`: the thread's, as `top -H` shows it (at most 15 bytes are kept).
    func start(name: String) {
        startThread(named: name) { [self] in
            run()
            finished.signal()
        }
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
    /// first fetch, so the ring is made and used on this thread alone. Once asked to stop it starts
    /// nothing new but waits for the file transfers in flight, whose buffers are the queue's.
    func run() {
        let ring: SwapfairIO.IORing
        do { ring = try SwapfairIO.IORing(entries: UInt32(ringEntries)) } catch {
            startError = .system(error)
            fetched.signal()
            return
        }
        ring.prepare(.readWake(fd: stopRead, buffer: stopBuffer, length: 8), userData: Self.stopTag)
        ring.prepare(.readWake(fd: answers.readFD, buffer: answerBuffer, length: 8), userData: Self.answerTag)
        for tag in 0..<depth { _ = queueCommand(ring, UblkCommand.fetchRequest, tag: tag, result: 0) }
        do { try ring.submit() } catch {
            startError = .system(error)
            fetched.signal()
            return
        }
        fetched.signal()
        var aborted = 0
        var stop = false
        // Pending requests are waited for too: their buffers are the queue's.
        while (aborted < depth && !stop) || transfersInFlight > 0 || pendingCount > 0 {
            // Wait for a completion, unless transfers wait that only a full submission queue held
            // back: the commits just made may bring no completion until those transfers do.
            let wait: UInt32 = unissued.isEmpty || transfersInFlight >= transferLimit ? 1 : 0
            do {
                try ring.submit(wait: wait)
            } catch let e where e.errno == .resourceBusy || e.errno == .resourceTemporarilyUnavailable {
                // The kernel is short of room for completions or requests: take completions, then
                // submit again.
            } catch { break }
            ring.drainCompletions { data, res in
                if data == Self.stopTag {
                    stop = true
                } else if data == Self.answerTag {
                    ring.prepare(.readWake(fd: answers.readFD, buffer: answerBuffer, length: 8), userData: Self.answerTag)
                    answers.take(into: &answered)
                    for a in answered {
                        pendingCount -= 1
                        end(ring, tag: a.tag, result: a.result)
                    }
                    answered.removeAll(keepingCapacity: true)
                } else if data & Self.transferFlag != 0 {
                    transferDone(ring, tag: Int(data & 0xffff), index: Int((data >> 16) & 0xffff), result: res)
                } else if res != UBLK_IO_RES_OK {
                    // UBLK_IO_RES_ABORT: the device is stopping; this tag is done.
                    aborted += 1
                } else if !stop {
                    arrived(ring, tag: Int(data))
                }
            }
            while let tag = unissued.first, issue(ring, tag: tag) { unissued.removeFirst() }
            while !stop, unissued.isEmpty, let tag = gate.nextReady() { begin(ring, tag: tag) }
        }
        // The commits of the last transfers.
        _ = try? ring.submit()
    }

    /// A request came for `tag`: refused, started, or kept until the requests it overlaps are done.
    func arrived(_ ring: SwapfairIO.IORing, tag: Int) {
        let d = descriptors.load(fromByteOffset: tag * MemoryLayout<ublksrv_io_desc>.size, as: ublksrv_io_desc.self)
        let offset = d.start_sector << 9, length = Int(d.nr_sectors) << 9
        guard let op = UblkOperation(rawValue: UInt8(d.op_flags & 0xff)) else { return commit(ring, tag: tag, result: -EOPNOTSUPP) }
        let kind: UblkRequestKind
        switch op {
        case .read: kind = .read
        case .write: kind = .write
        case .flush: kind = .flush
        case .discard: kind = .discard
        case .writeZeroes: kind = .writeZeroes
        case .writeSame: return commit(ring, tag: tag, result: -EOPNOTSUPP)
        }
        if target.refuses(kind, offset: offset, length: length, bufferSize: bufferSize) { return commit(ring, tag: tag, result: -EIO) }
        tags[tag].kind = kind
        tags[tag].offset = kind == .flush ? 0 : offset
        tags[tag].length = kind == .flush ? 0 : length
        if gate.arrive(tag: tag, offset: tags[tag].offset, length: tags[tag].length) { begin(ring, tag: tag) }
    }

    func request(_ tag: Int) -> UblkRequest {
        let t = tags[tag]
        return UblkRequest(kind: t.kind, offset: t.offset, length: t.length, buffer: buffers + tag * bufferSize,
                           scratch: scratch + tag * scratchStride, completion: completions[tag])
    }

    func begin(_ ring: SwapfairIO.IORing, tag: Int) {
        let r = request(tag)
        var transfers = UblkTransfers(base: transferSlots + tag * transferRoom, capacity: transferRoom)
        switch target.start(r, transfers: &transfers) {
        case .done(let result):
            end(ring, tag: tag, result: result)
        case .pending:
            pendingCount += 1
        case .transfer where transfers.count == 0:
            end(ring, tag: tag, result: target.finish(r, result: Int32(r.length)))
        case .transfer where target.transfersInline:
            end(ring, tag: tag, result: target.finish(r, result: transfers.runNow(r)))
        case .transfer:
            tags[tag].transfers = transfers.count
            tags[tag].issued = 0
            tags[tag].remaining = transfers.count
            tags[tag].error = 0
            if !unissued.isEmpty || !issue(ring, tag: tag) { unissued.append(tag) }
        }
    }

    /// Hands `tag`'s transfers to the ring while there is room; true once all of them are.
    func issue(_ ring: SwapfairIO.IORing, tag: Int) -> Bool {
        while tags[tag].issued < tags[tag].transfers {
            guard transfersInFlight < transferLimit, submitTransfer(ring, tag: tag, index: tags[tag].issued) else { return false }
            tags[tag].issued += 1
        }
        return true
    }

    func submitTransfer(_ ring: SwapfairIO.IORing, tag: Int, index: Int) -> Bool {
        let t = transferSlots[tag * transferRoom + index]
        let buffer = buffers + tag * bufferSize + t.bufferOffset
        let op: SwapfairIO.IORing.Operation = tags[tag].kind == .write
            ? .write(fd: t.fd, buffer: buffer, length: UInt32(t.length), offset: t.offset, dsync: false)
            : .read(fd: t.fd, buffer: buffer, length: UInt32(t.length), offset: t.offset)
        let data = Self.transferFlag | UInt64(index) << 16 | UInt64(tag)
        if !ring.prepare(op, userData: data) {
            // The submission queue is full: hand it to the kernel and take a fresh entry.
            _ = try? ring.submit()
            guard ring.prepare(op, userData: data) else { return false }
        }
        transfersInFlight += 1
        return true
    }

    func transferDone(_ ring: SwapfairIO.IORing, tag: Int, index: Int, result: Int32) {
        transfersInFlight -= 1
        let slot = tag * transferRoom + index
        var res = Int(result)
        if res > 0 && res < transferSlots[slot].length {
            // A short transfer that is not the end of the file: the rest goes again.
            transferSlots[slot].offset += UInt64(res)
            transferSlots[slot].bufferOffset += res
            transferSlots[slot].length -= res
            if submitTransfer(ring, tag: tag, index: index) { return }
            res = UblkTransfers.transferNow(transferSlots[slot], write: tags[tag].kind == .write, buffer: buffers + tag * bufferSize)
        }
        if res == -Int(EAGAIN) || res == -Int(ENOMEM) || res == -Int(ECANCELED) || res == -Int(EINTR) {
            // The kernel could not run it (no worker, no memory): done here, synchronously.
            res = UblkTransfers.transferNow(transferSlots[slot], write: tags[tag].kind == .write, buffer: buffers + tag * bufferSize)
        }
        if let e = UblkTransfers.outcome(of: transferSlots[slot], kind: tags[tag].kind, result: res, buffer: buffers + tag * bufferSize),
           tags[tag].error == 0 {
            tags[tag].error = e
        }
        tags[tag].remaining -= 1
        guard tags[tag].remaining == 0 else { return }
        let r = request(tag)
        end(ring, tag: tag, result: target.finish(r, result: tags[tag].error != 0 ? tags[tag].error : Int32(r.length)))
    }

    func end(_ ring: SwapfairIO.IORing, tag: Int, result: Int32) {
        gate.done(tag: tag)
        commit(ring, tag: tag, result: result)
    }

    func commit(_ ring: SwapfairIO.IORing, tag: Int, result: Int32) {
        if result < 0 { failed.add(1, ordering: .relaxed) }
        served.add(1, ordering: .relaxed)
        // A full submission queue is handed to the kernel first; a lost commit would leave the
        // request hanging, so this tries hard.
        for _ in 0..<100 {
            if queueCommand(ring, UblkCommand.commitAndFetchRequest, tag: tag, result: result) { return }
            _ = try? ring.submit()
        }
    }
}

/// Answers to pending requests, from whichever threads give them, for the queue's thread.
final class UblkAnswers: Sendable {
    /// A pipe whose read sits in the queue's ring: a byte in it means answers wait.
    let readFD: Int32, writeFD: Int32
    private let posted: Mutex<(items: [(tag: Int, result: Int32)], signalled: Bool)>

    init(read: Int32, write: Int32, capacity: Int) {
        readFD = read
        writeFD = write
        var items: [(tag: Int, result: Int32)] = []
        items.reserveCapacity(capacity)
        posted = Mutex((items, false))
    }

    deinit {
        close(readFD)
        close(writeFD)
    }

    /// Queues an answer; the pipe gets one byte until the queue takes what is there.
    func post(tag: Int, result: Int32) {
        let signal = posted.withLock { p -> Bool in
            p.items.append((tag, result))
            defer { p.signalled = true }
            return !p.signalled
        }
        if signal {
            var one: UInt8 = 1
            _ = write(writeFD, &one, 1)
        }
    }

    /// Swaps the posted answers into `spare` (empty, with room for a queue's worth).
    func take(into spare: inout [(tag: Int, result: Int32)]) {
        posted.withLock { p in
            swap(&p.items, &spare)
            p.signalled = false
        }
    }
}
