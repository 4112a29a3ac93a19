import CSwapfairShim
import CURing
import SwapfairIO
import SwapfairSys
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A block device served by this process through ublk: `/dev/ublkbN`, whose requests the kernel
/// hands to a queue thread here. Control plane (add, parameters, start, stop, delete) apart from
/// the I/O plane (the queue) apart from the target (what a block is).
public final class UblkDevice: @unchecked Sendable {
    public let id: UInt32
    public let target: any UblkTarget
    let control: UblkControl
    let queue: UblkQueue
    let cdev: Int32
    private var stopped = false

    /// Why ublk cannot be used here, or nil.
    public static func unavailableReason() -> String? { UblkControl.unavailableReason() }

    public var blockDevicePath: String { "/dev/ublkb\(id)" }
    /// Requests served so far, and how many of them failed.
    public var served: UInt64 { queue.served.load(ordering: .relaxed) }
    public var failed: UInt64 { queue.failed.load(ordering: .relaxed) }

    /// Whether this server took over a device whose previous server died (its I/O was held).
    public let recovered: Bool
    /// Seconds the take-over waited for the kernel to let go of the dead server's queue.
    public let recoveryWait: Double

    /// Adds and starts a device over `target`; returns once `/dev/ublkbN` accepts I/O. With
    /// `recover`, the id of a device a previous server of this target made: if that server died
    /// and the kernel holds the device quiesced, it is taken over instead (the block device, and
    /// whatever swap is on it, lives on; held requests are issued again to this server).
    /// `threadName`: the queue thread's name. `rotational`: whether the device says it spins (the
    /// kernel keeps a device's attributes across a take-over).
    public init(target: any UblkTarget, queueDepth requestedDepth: Int = 64, maxIOBytes requestedMax: Int = 512 << 10,
                recover previous: UInt32? = nil, threadName: String = "ublk-queue", rotational: Bool = false) throws(UblkError) {
        let control = try UblkControl()
        let began = monotonicSeconds()
        var id = UInt32.max, queueDepth = requestedDepth, maxIOBytes = requestedMax
        var recovering = false
        if let previous, var info = try control.info(device: previous) {
            // A server's death is seen by the kernel only when its ring is torn down, which runs
            // after the process is gone and can take seconds on a loaded host: until then the
            // device reads live. Wait for it, as long as the server it names no longer exists.
            var waited = 0
            while UblkState(rawValue: info.state) == .live, info.flags & UInt64(UBLK_F_USER_RECOVERY) != 0,
                  !Self.processExists(info.ublksrv_pid), waited < 1200 {
                usleep(50_000)
                waited += 1
                guard let next = try control.info(device: previous) else { break }
                info = next
            }
            if let fresh = try control.info(device: previous) { info = fresh } else { info.state = UblkState.dead.rawValue }
            switch UblkState(rawValue: info.state) {
            case .quiesced? where info.flags & UInt64(UBLK_F_USER_RECOVERY) != 0:
                // The id came from our state file, but ids are reused: take over only a device of
                // this target's size, never somebody else's.
                guard try control.size(device: previous) == target.size else {
                    throw .command("take-over (its size is not the volume's)", device: Int(previous), .invalidArgument)
                }
                recovering = true
                id = previous
                queueDepth = Int(info.queue_depth)
                maxIOBytes = Int(info.max_io_buf_bytes)
            case .live?, .quiesced?:
                let who = Self.processExists(info.ublksrv_pid) ? "server pid \(info.ublksrv_pid) holds it"
                                                               : "still live \(waited / 20) s after its server died"
                throw .command("take-over (\(who))", device: Int(previous), .resourceBusy)
            default:
                try? control.delete(device: previous)  // left by a server that never started it
            }
        }
        func undo() { if !recovering { try? control.delete(device: id) } }
        if recovering {
            // Allowed once the dead server's character device is released, which waits for its
            // ring's teardown too (asynchronous; seconds on a loaded host). Giving up early would
            // leave the swap on the device held for good, so this waits up to a minute.
            var attempt = 0
            while true {
                do {
                    try control.startRecovery(device: id)
                    break
                } catch .command(_, _, let e) where e == .resourceBusy && attempt < 1200 {
                    attempt += 1
                    usleep(50_000)
                }
            }
        } else {
            id = try control.addDevice(queueDepth: queueDepth, maxIOBytes: maxIOBytes)
            do {
                try control.setParameters(device: id, size: target.size, maxIOBytes: maxIOBytes, rotational: rotational)
            } catch {
                undo()
                throw error
            }
        }
        // The character device appears when the device is added (devtmpfs; udev may take a moment).
        let path = "/dev/ublkc\(id)"
        var fd: Int32 = -1
        for _ in 0..<200 {
            fd = open(path, O_RDWR | O_CLOEXEC)
            if fd >= 0 || errno != ENOENT { break }
            usleep(10_000)
        }
        guard fd >= 0 else {
            let e = Errno(rawValue: errno)
            undo()
            throw .system(SysError("open", path, e))
        }
        let queue: UblkQueue
        do {
            queue = try UblkQueue(cdev: fd, depth: queueDepth, bufferSize: maxIOBytes, target: target, legacy: control.legacy)
        } catch {
            close(fd)
            undo()
            throw error
        }
        queue.start(name: threadName)
        queue.fetched.wait()
        if let e = queue.startError {
            queue.finished.wait()
            queue.unmap()
            close(fd)
            undo()
            throw e
        }
        do {
            if recovering { try control.endRecovery(device: id) } else { try control.start(device: id) }
        } catch {
            queue.requestStop()
            queue.finished.wait()
            try? control.stop(device: id)
            queue.unmap()
            close(fd)
            undo()
            throw error
        }
        self.id = id
        self.recovered = recovering
        self.recoveryWait = recovering ? monotonicSeconds() - began : 0
        self.target = target
        self.control = control
        self.queue = queue
        self.cdev = fd
    }

    /// Whether a process with this id exists (EPERM means it does, owned by somebody else).
    static func processExists(_ pid: Int32) -> Bool {
        pid > 0 && (kill(pid, 0) == 0 || errno == EPERM)
    }

    /// Ends the queue's thread once the requests it started are answered, and lets go of the
    /// device without stopping it: with user recovery the kernel holds its requests until a new
    /// server takes it over (`init(recover:)`), as after a crash.
    public func detach() {
        guard !stopped else { return }
        stopped = true
        queue.requestStop()
        queue.finished.wait()
        queue.unmap()
        close(cdev)
    }

    /// Stops and deletes a device this process does not serve (one a previous server left); a
    /// device that is gone already is no error. Deleting waits until nothing holds it open.
    public static func remove(id: UInt32) throws(UblkError) {
        let control = try UblkControl()
        guard try control.info(device: id) != nil else { return }
        try? control.stop(device: id)
        try control.delete(device: id)
    }

    /// Ends the queue's thread (closing its ring cancels the requests it was waiting for), then
    /// stops and deletes the device. Take the device out of use (swapoff) first: requests still
    /// arriving fail.
    public func stop() throws(UblkError) {
        guard !stopped else { return }
        stopped = true
        queue.requestStop()
        queue.finished.wait()
        try control.stop(device: id)
        queue.unmap()
        close(cdev)
        try control.delete(device: id)
    }
}

/// A swap volume as a ublk target: reads and writes go to the volume's file on the queue's ring
/// (O_DIRECT where the file system allows it; the queue's buffers are page-aligned; a buffered
/// file's, or one in RAM, are done at once on the queue's thread instead), flushes are
/// `fdatasync`, discards and write-zeroes punch holes (the volume is sparse; holes read as zeros).
public struct VolumeTarget: UblkTarget {
    public let volume: Volume
    public var size: UInt64 { volume.size }
    public let transfersInline: Bool

    public init(volume: Volume) {
        self.volume = volume
        // A buffered file, or one in RAM (tmpfs, which io_uring hands to a worker thread even
        // with O_DIRECT): in the lab, `pread` on the queue's thread served a RAM-backed volume's
        // requests at three times the rate at depth 1.
        // (A block device's node is on devtmpfs, which has tmpfs's magic: only files count.)
        var st = stat()
        let regular = fstat(volume.fd, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG
        let tmpfs = 0x0102_1994
        transfersInline = !volume.direct || (regular && (try? FileAccess.fileSystemType(volume.path)) == tmpfs)
    }

    public func start(_ r: UblkRequest, transfers: inout UblkTransfers) -> UblkStart {
        switch r.kind {
        case .read, .write:
            return transfers.add(fd: volume.fd, offset: r.offset, length: r.length, bufferOffset: 0) ? .transfer : .done(-EIO)
        case .flush:
            return .done(fdatasync(volume.fd) == 0 ? 0 : -errno)
        case .discard:
            // Advisory: a device that cannot punch holes keeps the old data, which nobody reads.
            if swapfair_punch_hole(volume.fd, Int64(r.offset), Int64(r.length)) == 0 { return .done(0) }
            return .done(errno == EOPNOTSUPP ? 0 : -errno)
        case .writeZeroes:
            return .done(swapfair_punch_hole(volume.fd, Int64(r.offset), Int64(r.length)) == 0 ? 0 : -errno)
        }
    }
}
