import Dispatch
import Foundation
import Logging
import Synchronization
import SwapfairIO
import SwapfairNBD
import SwapfairSys

#if canImport(Glibc)
import Glibc
#endif

/// Who may connect to an export, checked against the peer's SO_PEERCRED.
public struct ExportAccess: Sendable, Equatable {
    public var uids: Set<UInt32>
    public var gids: Set<UInt32>
    public init(uids: Set<UInt32> = [0], gids: Set<UInt32> = []) {
        self.uids = uids
        self.gids = gids
    }
    public func allows(uid: UInt32, gid: UInt32) -> Bool { uid == 0 || uids.contains(uid) || gids.contains(gid) }
}

/// One VM's swap volume served over NBD on a Unix socket. Each connection gets a reader thread
/// (handshake, requests) and a writer thread (replies); the I/O itself goes through the shared
/// engine, which schedules the VMs fairly.
public final class ExportServer: Sendable {
    public let name: String
    public let socketPath: String
    public let volume: Volume
    public let client: Int
    let engine: SwapEngine
    let pool: BufferPool
    let access: ExportAccess
    let logger: Logger
    let listener: UnixSocket
    let export: NBDExportInfo
    private let connections = Mutex<[Int32: Connection]>([:])
    private let stopped = Mutex(false)
    /// Signalled when the accept loop has ended.
    private let acceptDone = DispatchSemaphore(value: 0)
    /// Where a listener that stops for good is recorded.
    let health: Health?
    /// Connections served at once: each holds two threads and buffers, and no client needs more
    /// than one per queue (the kernel's client opens one per CPU at most).
    public static let maxConnections = 64
    private let lastRefusal = Mutex(-Double.infinity)
    /// Told of every write the guest sends (export name, byte offset, payload) before it is queued:
    /// the guest's swap-outs, for the double-paging tracker.
    let writeObserver: (@Sendable (String, UInt64, UnsafeRawBufferPointer) -> Void)?
    /// Blocks shared with the host's swap (write elision), when enabled.
    let sharing: (any BlockSharing)?

    public init(name: String, socketPath: String, volume: Volume, client: Int, engine: SwapEngine, pool: BufferPool,
                access: ExportAccess, logger: Logger,
                writeObserver: (@Sendable (String, UInt64, UnsafeRawBufferPointer) -> Void)? = nil,
                sharing: (any BlockSharing)? = nil, rotational: Bool = false, health: Health? = nil) throws(SysError) {
        self.writeObserver = writeObserver
        self.health = health
        self.sharing = sharing
        self.name = name
        self.socketPath = socketPath
        self.volume = volume
        self.client = client
        self.engine = engine
        self.pool = pool
        self.access = access
        self.logger = logger
        var flags: NBDTransmissionFlags = [.hasFlags, .sendFlush, .sendFUA, .sendTrim, .sendWriteZeroes, .canMultiConn]
        // The kernel's client marks its device rotational when told, and the kernel then reads
        // swap back by slot clusters, as from the disk under the volume.
        if rotational { flags.insert(.rotational) }
        // The maximum is the protocol's usual 32 MiB, not the pool's buffer size: the kernel's client
        // does not ask for block sizes and sends up to max_sectors_kb (1280 KiB by default) at once.
        // Requests larger than a pool buffer get a buffer of their own.
        export = NBDExportInfo(name: name, size: volume.size, transmissionFlags: flags.rawValue,
                               minimumBlock: 4096, preferredBlock: 4096, maximumBlock: 32 << 20,
                               description: "swapfair swap volume for \(name)")
        let dir = "/" + socketPath.split(separator: "/").dropLast().joined(separator: "/")
        try FileAccess.makeDirectories(dir, mode: 0o755)
        // Group and others may connect at the socket level; SO_PEERCRED decides who is served.
        listener = try UnixSocket.listen(at: socketPath, mode: 0o666, backlog: 64)
    }

    public func start() {
        startThread(named: "nbd-\(name)", stackSize: 256 << 10) { [self] in acceptLoop() }
    }

    /// No new clients: the socket file goes and the accept loop ends; connections go on.
    public func stopAccepting() {
        let first = stopped.withLock { s in
            defer { s = true }
            return !s
        }
        guard first else { return }
        listener.shutdownBoth()
        unlink(socketPath)
    }

    /// Stops accepting and closes every connection; requests in flight are still answered by the
    /// engine (their connections wait for them before they let go of their buffers).
    public func stop() {
        stopAccepting()
        for c in connections.withLock({ Array($0.values) }) { c.close() }
    }

    public var connectionCount: Int { connections.withLock { $0.count } }

    /// Blocks until the accept loop has ended and every connection has gone (after `stopAccepting`),
    /// or until `deadline` (monotonic seconds) has passed. True when idle.
    @discardableResult
    public func waitUntilIdle(deadline: Double = .infinity) -> Bool {
        let wait = deadline.isFinite ? DispatchTime.now() + max(0, deadline - monotonicSeconds()) : .distantFuture
        guard acceptDone.wait(timeout: wait) == .success else { return false }
        acceptDone.signal()
        while connectionCount > 0 {
            if monotonicSeconds() >= deadline { return false }
            usleep(20_000)
        }
        return true
    }

    func acceptLoop() {
        acceptConnections(on: listener, isStopped: { stopped.withLock { $0 } }, report: { event in
            let part = "NBD export \(name)"
            switch event {
            case .transient(let e, let retry):
                logger.warning("NBD: cannot accept a connection; trying again", metadata: [
                    "vm": "\(name)", "error": "\(e.errno.message)", "retry_in_ms": "\(Int(retry * 1000))"])
            case .recovered(let failures):
                logger.notice("NBD: accepting connections again", metadata: ["vm": "\(name)", "failures": "\(failures)"])
            case .fatal(let e):
                logger.error("NBD: the export stopped accepting connections", metadata: ["vm": "\(name)", "error": "\(e)"])
                health?.record(part, "stopped accepting connections: \(e)")
            }
        }) { sock in
            let peer: UnixSocket.Credentials
            do { peer = try sock.peerCredentials() } catch {
                logger.notice("NBD: dropped a client whose credentials cannot be read", metadata: [
                    "vm": "\(name)", "error": "\(error)"])
                return
            }
            guard access.allows(uid: peer.uid, gid: peer.gid) else {
                logger.warning("NBD: refused a client not allowed on this VM's volume",
                               metadata: ["vm": "\(name)", "uid": "\(peer.uid)", "gid": "\(peer.gid)", "pid": "\(peer.pid)"])
                return  // closing the socket is the whole answer: the spec has nothing better before the greeting
            }
            let c = Connection(server: self, socket: sock, peer: peer)
            let admitted = connections.withLock { open in
                guard open.count < Self.maxConnections else { return false }
                open[sock.fd.rawValue] = c
                return true
            }
            guard admitted else {
                let now = monotonicSeconds()
                let warn = lastRefusal.withLock { last in
                    defer { if now - last >= 10 { last = now } }
                    return now - last >= 10
                }
                if warn {
                    logger.warning("NBD: \(Self.maxConnections) connections already; refusing more for now",
                                   metadata: ["vm": "\(name)", "pid": "\(peer.pid)"])
                }
                return
            }
            c.start()
        }
        acceptDone.signal()
    }

    func finished(_ c: Connection) { connections.withLock { _ = $0.removeValue(forKey: c.socket.fd.rawValue) } }
}

/// A reply queued for the writer thread.
struct Reply {
    var header: [UInt8]
    var data: IOBuffer?
    var dataLength: Int
    /// The answer to a request that went through the engine (it held a window slot).
    var engine = false
    /// Bytes of it already on the socket (a non-blocking write that stopped short).
    var sent = 0

    var totalLength: Int { header.count + dataLength }
}

final class Connection: @unchecked Sendable {
    // @unchecked: `socket` is immutable; the reply queue and counters are behind the mutex; the
    // decoder state is the reader thread's own.
    let server: ExportServer
    let socket: UnixSocket
    let peer: UnixSocket.Credentials
    private struct Outbox {
        var replies: [Reply] = []
        var inFlight = 0
        var closing = false
        /// A thread is writing to the socket (the writer, or the engine's completion writing a
        /// reply at once): writes are serialised so that replies never interleave.
        var writing = false
        /// The socket failed; replies are dropped (their buffers still released).
        var broken = false
        /// A flush of the queued replies is due at the end of the engine's batch.
        var flushScheduled = false
    }
    private let outbox = Mutex(Outbox())
    private let ready = DispatchSemaphore(value: 0)
    private let writerDone = DispatchSemaphore(value: 0)
    /// Each of a connection's two threads' stack.
    static let stackSize = 512 << 10
    /// Requests of this connection in the engine at most (see `handle`).
    static let windowSize = 128
    private let window = DispatchSemaphore(value: Connection.windowSize)
    /// For `writeWithoutBlocking` (which only the thread holding `writing` runs): the iovecs and
    /// a copy of the headers of one batch of replies, allocated once.
    static let batchIovecs = 512
    static let headerScratchBytes = 256 * NBDLimits.simpleReplyHeaderSize * 2
    private let iov = UnsafeMutablePointer<iovec>.allocate(capacity: Connection.batchIovecs)
    private let headerScratch = UnsafeMutableRawPointer.allocate(byteCount: Connection.headerScratchBytes, alignment: 16)

    init(server: ExportServer, socket: UnixSocket, peer: UnixSocket.Credentials) {
        self.server = server
        self.socket = socket
        self.peer = peer
    }

    deinit {
        iov.deallocate()
        headerScratch.deallocate()
    }

    func start() {
        startThread(named: "nbd-read", stackSize: Connection.stackSize) { [self] in
            readLoop()
            close()
            writerDone.wait()
            server.finished(self)
        }
        startThread(named: "nbd-write", stackSize: Connection.stackSize) { [self] in
            writeLoop()
            writerDone.signal()
        }
    }

    func close() {
        outbox.withLock { $0.closing = true }
        socket.shutdownBoth()
        ready.signal()
    }

    private func send(_ bytes: [UInt8]) -> Bool {
        (try? socket.writeAll(bytes)) != nil
    }

    private func readLoop() {
        let fd = socket.fd.rawValue
        var chunk = [UInt8](repeating: 0, count: 256 << 10)
        func readSome() -> ArraySlice<UInt8>? {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { return [] }
            return n > 0 ? chunk[0..<n] : nil
        }
        // Handshake.
        var handshake = NBDServerHandshake(exports: [server.export])
        guard send(handshake.greeting()) else { return }
        var export: NBDExportInfo?
        negotiation: while export == nil {
            guard let bytes = readSome() else { return }
            for event in handshake.feed(Array(bytes)) {
                switch event {
                case .send(let out): guard send(out) else { return }
                case .done(let e, _): export = e
                case .close(let reason):
                    server.logger.notice("NBD: closed a handshake", metadata: ["vm": "\(server.name)", "reason": "\(reason)"])
                    return
                case .abort: return
                }
            }
            if handshake.isClosed { break negotiation }
        }
        guard let export else { return }
        // Transmission.
        var decoder = NBDRequestDecoder(export: export)
        var rejected = 0
        var pendingEvents = decoder.feed(handshake.remainingBytes)
        while true {
            // A request that came alone may be served on this thread (see SwapEngine.serveInline);
            // one of a batch goes to the engine, which runs the batch in parallel.
            let alone = pendingEvents.count == 1
            // Handed to the engine before the next read blocks, and on every way out.
            do {
                defer { submitBatch() }
                for event in pendingEvents {
                    switch event {
                    case .request(let r, let payload):
                        if r.command == .disc { return }
                        handle(r, payload: payload, alone: alone)
                    case .invalid(let r, let error, let reason):
                        rejected += 1
                        if rejected <= 5 {
                            server.logger.notice("NBD: refused a request", metadata: [
                                "vm": "\(server.name)", "reason": "\(reason)", "command": "\(r.type)",
                                "offset": "\(r.offset)", "length": "\(r.length)",
                            ])
                        }
                        enqueue(Reply(header: simpleReply(cookie: r.cookie, error: error), data: nil, dataLength: 0))
                    case .fatal(let reason):
                        server.logger.notice("NBD: dropped a client that broke the protocol",
                                             metadata: ["vm": "\(server.name)", "reason": "\(reason)"])
                        return
                    }
                }
            }
            guard let bytes = readSome() else { return }
            pendingEvents = bytes.isEmpty ? [] : decoder.feed(Array(bytes))
        }
    }

    private func handle(_ r: NBDRequest, payload: [UInt8], alone: Bool) {
        let length = Int(r.length)
        let op: BlockOp
        switch r.command {
        case .read: op = .read
        case .write: op = .write(fua: r.commandFlags.contains(.fua))
        case .flush: op = .flush
        case .trim: op = .trim
        case .writeZeroes: op = .zero(noHole: r.commandFlags.contains(.noHole))
        default:
            enqueue(Reply(header: simpleReply(cookie: r.cookie, error: .invalid), data: nil, dataLength: 0))
            return
        }
        if r.command == .write, let observe = server.writeObserver {
            payload.withUnsafeBytes { observe(server.name, r.offset, $0) }
        }
        if let sharing = server.sharing, serveShared(r, payload: payload, sharing) { return }
        // At most `window` requests of one connection wait in the engine: a client cannot make
        // the daemon hold unbounded memory, and the scheduler still sees a deep queue per VM.
        waitForWindow()
        outbox.withLock { $0.inFlight += 1 }
        let cookie = r.cookie
        let request = BlockRequest(
            client: server.client, volume: server.volume, op: op, offset: r.offset, length: r.length,
            payload: r.command == .write ? payload : nil
        ) { [self] result, buffer in
            if result >= 0, let sharing = server.sharing, r.command == .write || r.command == .trim || r.command == .writeZeroes {
                sharing.guestOverwrote(vm: server.name, offset: r.offset, length: length)
            }
            let error: NBDErrorCode = result >= 0 ? .success : NBDErrorCode(linuxErrno: -result)
            let reply = if let buffer {
                Reply(header: simpleReply(cookie: cookie, error: .success), data: buffer, dataLength: length, engine: true)
            } else {
                Reply(header: simpleReply(cookie: cookie, error: error), data: nil, dataLength: 0, engine: true)
            }
            complete(reply)
        }
        if alone && server.engine.serveInline(request) { return }
        batch.append(request)
    }

    /// Requests decoded from one read of the socket, handed to the engine together (reader only).
    private var batch: [BlockRequest] = []

    private func submitBatch() {
        server.engine.submit(contentsOf: batch)
        batch.removeAll(keepingCapacity: true)
    }

    /// Takes a slot of the connection's window. Before waiting, hands over the batch: the slots
    /// come back as the engine answers, which it can only do for requests it has.
    private func waitForWindow() {
        if window.wait(timeout: .now()) == .success { return }
        submitBatch()
        window.wait()
    }

    /// A write whose every page the host's swap already holds becomes references, with nothing
    /// to write; a read of blocks that are such references is served from the host's blocks.
    /// True when the request was answered here.
    private func serveShared(_ r: NBDRequest, payload: [UInt8], _ sharing: any BlockSharing) -> Bool {
        switch r.command {
        case .write:
            switch payload.withUnsafeBytes({ sharing.guestWrite(vm: server.name, offset: r.offset, $0) }) {
            case .writeAll:
                return false
            case .writeNone:
                enqueue(Reply(header: simpleReply(cookie: r.cookie, error: .success), data: nil, dataLength: 0))
                return true
            case .writeSome(let elided):
                writeRuns(r, payload: payload, elided: elided, sharing)
                return true
            }
        case .read:
            guard sharing.guestReadsShared(vm: server.name, offset: r.offset, length: Int(r.length)) else { return false }
            // Within the connection's window like an engine request, so that a client that does
            // not read its replies cannot hold the pool's buffers.
            waitForWindow()
            let buffer = server.pool.acquire(Int(r.length))
            guard let n = sharing.guestRead(vm: server.name, offset: r.offset, length: Int(r.length),
                                            ownFD: server.volume.fd, into: buffer.pointer) else {
                server.pool.release(buffer)
                window.signal()
                return false
            }
            if n >= 0 {
                enqueue(Reply(header: simpleReply(cookie: r.cookie, error: .success), data: buffer, dataLength: Int(r.length),
                              engine: true))
            } else {
                server.pool.release(buffer)
                enqueue(Reply(header: simpleReply(cookie: r.cookie, error: NBDErrorCode(linuxErrno: -n)), data: nil,
                              dataLength: 0, engine: true))
            }
            return true
        default:
            return false
        }
    }

    /// Writes the pages of `r` that are not references, a run of consecutive pages per engine
    /// request, and answers once all of them completed (with the first error, if any).
    private func writeRuns(_ r: NBDRequest, payload: [UInt8], elided: [Bool], _ sharing: any BlockSharing) {
        let page = 4096
        let runs = SharedWrite.runs(elided)
        waitForWindow()
        outbox.withLock { $0.inFlight += 1 }
        let join = Mutex((remaining: runs.count, error: Int32(0)))
        let cookie = r.cookie, fua = r.commandFlags.contains(.fua)
        for run in runs {
            let offset = r.offset + UInt64(run.lowerBound * page), length = run.count * page
            batch.append(BlockRequest(
                client: server.client, volume: server.volume, op: .write(fua: fua), offset: offset, length: UInt32(length),
                payload: Array(payload[(run.lowerBound * page)..<(run.upperBound * page)])
            ) { [self] result, _ in
                if result >= 0 { sharing.guestOverwrote(vm: server.name, offset: offset, length: length) }
                let (last, error) = join.withLock { j -> (Bool, Int32) in
                    j.remaining -= 1
                    if result < 0 && j.error == 0 { j.error = result }
                    return (j.remaining == 0, j.error)
                }
                guard last else { return }
                let code: NBDErrorCode = error == 0 ? .success : NBDErrorCode(linuxErrno: -error)
                complete(Reply(header: simpleReply(cookie: cookie, error: code), data: nil, dataLength: 0, engine: true))
            })
        }
    }

    /// An answer from the engine. On the engine's thread it is queued, and all the answers of
    /// the engine's batch of completions go out together at the batch's end (`flush`). Served
    /// inline, on the reader's thread, it goes out at once when nothing else is queued or being
    /// written. Both write without blocking (the socket has room almost always), which saves
    /// waking the writer thread for every reply; what does not fit goes to the writer.
    private func complete(_ reply: Reply) {
        let engineThread = server.engine.onEngineThread
        enum Next { case none, wakeWriter, scheduleFlush, writeNow }
        let next = outbox.withLock { box -> Next in
            box.inFlight -= 1
            if engineThread {
                box.replies.append(reply)
                if box.closing || box.broken { return .wakeWriter }
                if box.flushScheduled { return .none }
                box.flushScheduled = true
                return .scheduleFlush
            }
            guard box.replies.isEmpty, !box.writing, !box.closing, !box.broken else {
                box.replies.append(reply)
                return .wakeWriter
            }
            box.writing = true
            return .writeNow
        }
        switch next {
        case .none: return
        case .wakeWriter: ready.signal()
        case .scheduleFlush: server.engine.atBatchEnd(ObjectIdentifier(self)) { [self] in flush() }
        case .writeNow:
            var batch = [reply]
            finishWrite(&batch)
        }
    }

    /// Writes every queued reply, unless another thread is writing (which then takes them).
    private func flush() {
        let batch = outbox.withLock { box -> [Reply]? in
            box.flushScheduled = false
            guard !box.writing, !box.closing, !box.broken, !box.replies.isEmpty else { return nil }
            box.writing = true
            defer { box.replies.removeAll(keepingCapacity: true) }
            return box.replies
        }
        guard var batch else {
            ready.signal()
            return
        }
        finishWrite(&batch)
    }

    /// Writes `batch` (this thread holds `writing`) without blocking; what the socket did not take
    /// goes back to the front of the queue for the writer.
    private func finishWrite(_ batch: inout [Reply]) {
        let (sent, failed) = writeWithoutBlocking(&batch)
        for r in batch[..<sent] {
            if let data = r.data { server.pool.release(data) }
            if r.engine { window.signal() }
        }
        let rest = batch[sent...]
        let more = outbox.withLock { box in
            // The first of them may be partly out: they must go on first, in order.
            if !rest.isEmpty { box.replies.insert(contentsOf: rest, at: 0) }
            if failed { box.broken = true }
            box.writing = false
            return !box.replies.isEmpty
        }
        if more { ready.signal() }
    }

    /// As many of the replies as the socket takes now, in one `sendmsg` per up to 256 replies.
    /// Returns how many went out whole (the next one may be partly out: its `sent` says how far),
    /// and whether the socket failed.
    private func writeWithoutBlocking(_ replies: inout [Reply]) -> (sent: Int, failed: Bool) {
        let fd = socket.fd.rawValue
        var first = 0
        while first < replies.count {
            var iovecs = 0, headerBytes = 0, planned = 0, last = first
            while last < replies.count, iovecs + 2 <= Self.batchIovecs {
                let r = replies[last]
                let headerLeft = max(0, r.header.count - r.sent)
                guard headerBytes + headerLeft <= Self.headerScratchBytes else { break }
                if headerLeft > 0 {
                    r.header.withUnsafeBytes { h in
                        (headerScratch + headerBytes).copyMemory(from: h.baseAddress! + r.sent, byteCount: headerLeft)
                    }
                    iov[iovecs] = iovec(iov_base: headerScratch + headerBytes, iov_len: headerLeft)
                    iovecs += 1
                    headerBytes += headerLeft
                }
                if let d = r.data {
                    let skip = max(0, r.sent - r.header.count)
                    iov[iovecs] = iovec(iov_base: d.pointer + skip, iov_len: r.dataLength - skip)
                    iovecs += 1
                }
                planned += r.totalLength - r.sent
                last += 1
            }
            var msg = msghdr()
            msg.msg_iov = iov
            msg.msg_iovlen = iovecs
            var n = sendmsg(fd, &msg, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
            if n < 0 {
                if errno == EINTR { continue }
                return (first, !(errno == EAGAIN || errno == EWOULDBLOCK))
            }
            let complete = n == planned
            while n > 0, first < replies.count {
                let left = replies[first].totalLength - replies[first].sent
                if n >= left {
                    n -= left
                    replies[first].sent = replies[first].totalLength
                    first += 1
                } else {
                    replies[first].sent += n
                    n = 0
                }
            }
            if !complete { return (first, false) }
        }
        return (first, false)
    }

    private func enqueue(_ reply: Reply) {
        outbox.withLock { $0.replies.append(reply) }
        ready.signal()
    }

    private func writeLoop() {
        while true {
            ready.wait()
            let (batch, broken) = outbox.withLock { box -> ([Reply], Bool) in
                // A completion is writing: it signals again when it is done.
                if box.writing || box.replies.isEmpty { return ([], box.broken) }
                box.writing = true
                defer { box.replies.removeAll(keepingCapacity: true) }
                return (box.replies, box.broken)
            }
            var failed = broken
            for var reply in batch {
                if !failed { failed = !writeBlocking(&reply) }
                if let data = reply.data { server.pool.release(data) }
                if reply.engine { window.signal() }
            }
            let (closing, idle) = outbox.withLock { box in
                if !batch.isEmpty { box.writing = false }
                if failed { box.broken = true }
                return (box.closing, box.replies.isEmpty && box.inFlight == 0 && !box.writing)
            }
            // After a disconnect, stay until the engine has answered every request in flight, so
            // no buffer is left behind.
            if closing && idle { return }
            if closing { usleep(1000); ready.signal() }
        }
    }

    /// Header and data in one writev, from `reply.sent` on, waiting for room in the socket (the
    /// writer thread's way). False when the socket failed.
    private func writeBlocking(_ reply: inout Reply) -> Bool {
        let fd = socket.fd.rawValue
        let total = reply.totalLength
        let header = reply.header
        let data = reply.data
        let dataLength = reply.dataLength
        var sent = reply.sent
        let written = header.withUnsafeBytes { h -> Bool in
            // Two iovecs at most, on the stack: this runs once per reply.
            var iov = (iovec(), iovec())
            while sent < total {
                var count = 0
                if sent < h.count {
                    iov.0 = iovec(iov_base: UnsafeMutableRawPointer(mutating: h.baseAddress! + sent), iov_len: h.count - sent)
                    count = 1
                }
                if let d = data {
                    let skip = max(0, sent - h.count)
                    let part = iovec(iov_base: d.pointer + skip, iov_len: dataLength - skip)
                    if count == 0 { iov.0 = part } else { iov.1 = part }
                    count += 1
                }
                let n = withUnsafeMutableBytes(of: &iov) { raw -> Int in
                    var msg = msghdr()
                    msg.msg_iov = raw.baseAddress?.assumingMemoryBound(to: iovec.self)
                    msg.msg_iovlen = count
                    return sendmsg(fd, &msg, Int32(MSG_NOSIGNAL))
                }
                if n < 0 {
                    if errno == EINTR { continue }
                    return false
                }
                sent += n
            }
            return true
        }
        reply.sent = sent
        return written
    }
}

/// Blocks of a VM's swap volume that are references to the host's swap blocks (write elision):
/// the export asks before it writes or reads, and tells it what the guest overwrote.
public protocol BlockSharing: Sendable {
    /// Which of the write's pages are now references, needing no I/O.
    func guestWrite(vm: String, offset: UInt64, _ bytes: UnsafeRawBufferPointer) -> SharedWrite
    /// Whether any block of the range is a reference.
    func guestReadsShared(vm: String, offset: UInt64, length: Int) -> Bool
    /// Reads the range (own blocks from `ownFD`, references from the host's volume); nil when no
    /// block in it is a reference; else the byte count or -errno.
    func guestRead(vm: String, offset: UInt64, length: Int, ownFD: Int32, into: UnsafeMutableRawPointer) -> Int32?
    /// The range holds the guest's own data again (a write, trim or zeroing completed).
    func guestOverwrote(vm: String, offset: UInt64, length: Int)
}

/// What a write needs once its pages the host's swap holds became references.
public enum SharedWrite: Sendable, Equatable {
    case writeAll
    case writeNone
    /// Write the pages marked false; those marked true are references.
    case writeSome(elided: [Bool])
}

extension SharedWrite {
    /// The runs of consecutive pages still to write, given which pages became references.
    public static func runs(_ elided: [Bool]) -> [Range<Int>] {
        var runs: [Range<Int>] = []
        var i = 0
        while i < elided.count {
            if elided[i] { i += 1; continue }
            var j = i
            while j < elided.count && !elided[j] { j += 1 }
            runs.append(i..<j)
            i = j
        }
        return runs
    }
}
