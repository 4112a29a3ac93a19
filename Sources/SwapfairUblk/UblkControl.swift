import CURing
import SwapfairIO
import SwapfairSys
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The ublk control device (`/dev/ublk-control`): adds, configures, starts, stops and deletes
/// ublk devices. Each command is an `IORING_OP_URING_CMD` on a ring of 128-byte entries (the
/// control payload, `struct ublksrv_ctrl_cmd`, is 32 bytes). Commands run one at a time and wait
/// for their completion.
final class UblkControl {
    static let path = "/dev/ublk-control"
    let fd: Int32
    let ring: SwapfairIO.IORing
    /// Whether the kernel refused ioctl-encoded commands and takes the legacy numbers.
    private(set) var legacy = false

    /// Why ublk cannot be used on this kernel, or nil.
    static func unavailableReason() -> String? {
        if access(path, F_OK) == 0 { return nil }
        return "the kernel has no ublk: \(path) is missing (ublk needs Linux 6.0 or later built with "
            + "CONFIG_BLK_DEV_UBLK; try `modprobe ublk_drv`)"
    }

    init() throws(UblkError) {
        if let why = Self.unavailableReason() { throw .unavailable(why) }
        let fd = open(Self.path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw .system(SysError("open", Self.path, Errno(rawValue: errno))) }
        do { ring = try SwapfairIO.IORing(entries: 4, bigEntries: true) } catch {
            close(fd)
            throw .system(error)
        }
        self.fd = fd
    }

    deinit { close(fd) }

    /// One control command; returns the kernel's result (≥ 0), or throws with its errno.
    /// `buffer` is what the command reads or fills (device info, parameters).
    @discardableResult
    func run(_ nr: UInt32, _ what: String, device: UInt32, buffer: UnsafeMutableRawBufferPointer? = nil,
             data0: UInt64 = 0) throws(UblkError) -> Int32 {
        var cmd = ublksrv_ctrl_cmd()
        cmd.dev_id = device
        cmd.queue_id = UInt16.max
        cmd.len = UInt16(buffer?.count ?? 0)
        cmd.addr = buffer?.baseAddress.map { UInt64(UInt(bitPattern: $0)) } ?? 0
        cmd.data.0 = data0
        func issue(_ op: UInt32) throws(UblkError) -> Int32 {
            let queued = withUnsafeBytes(of: &cmd) { ring.prepareCommand(fd: fd, op: op, payload: $0, userData: UInt64(nr)) }
            guard queued else { throw .command(what, device: Int(Int32(bitPattern: device)), .resourceTemporarilyUnavailable) }
            var result: Int32 = 0
            do {
                try ring.submit(wait: 1)
            } catch {
                throw .system(error)
            }
            ring.drainCompletions { _, res in result = res }
            return result
        }
        var res = try issue(legacy ? nr : UblkCommand.encoded(nr, payloadSize: UblkCommand.controlPayloadSize))
        let first = nr == UblkCommand.addDevice || nr == UblkCommand.getDeviceInfo
        if !legacy && (res == -EOPNOTSUPP || res == -EINVAL) && first {
            // A kernel older than 6.4 knows only the plain numbers.
            let retry = try issue(nr)
            if retry >= 0 {
                legacy = true
                res = retry
            }
        }
        guard res >= 0 else { throw .command(what, device: Int(Int32(bitPattern: device)), Errno(rawValue: -res)) }
        return res
    }

    /// Adds a device with one queue; returns its id (N in /dev/ublkcN and /dev/ublkbN). With user
    /// recovery, a device whose server dies is quiesced, its requests held, until a new server
    /// takes it over (`startRecovery` … `endRecovery`); requests that were in flight are issued
    /// again (a swap device's writes and reads can be).
    func addDevice(queueDepth: Int, maxIOBytes: Int) throws(UblkError) -> UInt32 {
        var info = ublksrv_ctrl_dev_info()
        info.nr_hw_queues = 1
        info.queue_depth = UInt16(queueDepth)
        info.max_io_buf_bytes = UInt32(maxIOBytes)
        info.dev_id = UInt32.max  // the kernel picks
        info.ublksrv_pid = getpid()
        info.flags = UInt64(UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_REISSUE)
        _ = try withUnsafeMutableBytes(of: &info) { (b) throws(UblkError) in
            try run(UblkCommand.addDevice, "add", device: UInt32.max, buffer: b)
        }
        return info.dev_id
    }

    /// A block device of `size` bytes with 4 KiB logical and physical blocks (what a swap device
    /// wants), taking discards and write-zeroes, rotational or not as the disk under its store is.
    func setParameters(device: UInt32, size: UInt64, maxIOBytes: Int, rotational: Bool) throws(UblkError) {
        var p = ublk_params()
        p.len = UInt32(MemoryLayout<ublk_params>.size)
        p.types = UInt32(UBLK_PARAM_TYPE_BASIC | UBLK_PARAM_TYPE_DISCARD)
        p.basic.attrs = rotational ? UInt32(UBLK_ATTR_ROTATIONAL) : 0
        p.basic.logical_bs_shift = 12
        p.basic.physical_bs_shift = 12
        p.basic.io_opt_shift = 12
        p.basic.io_min_shift = 12
        p.basic.max_sectors = UInt32(maxIOBytes >> 9)
        p.basic.dev_sectors = size >> 9
        p.discard.discard_granularity = 4096
        p.discard.max_discard_sectors = UInt32(maxIOBytes >> 9)
        p.discard.max_write_zeroes_sectors = UInt32(maxIOBytes >> 9)
        p.discard.max_discard_segments = 1
        _ = try withUnsafeMutableBytes(of: &p) { (b) throws(UblkError) in
            try run(UblkCommand.setParameters, "set parameters", device: device, buffer: b)
        }
    }

    /// A device's info, or nil when there is no such device.
    func info(device: UInt32) throws(UblkError) -> ublksrv_ctrl_dev_info? {
        var info = ublksrv_ctrl_dev_info()
        do {
            _ = try withUnsafeMutableBytes(of: &info) { (b) throws(UblkError) in
                try run(UblkCommand.getDeviceInfo, "get info", device: device, buffer: b)
            }
        } catch .command(_, _, let e) where e == .operationNotSupportedByDevice {  // ENODEV
            return nil
        }
        return info
    }

    /// A device's size in bytes, from its parameters.
    func size(device: UInt32) throws(UblkError) -> UInt64 {
        var p = ublk_params()
        p.len = UInt32(MemoryLayout<ublk_params>.size)
        _ = try withUnsafeMutableBytes(of: &p) { (b) throws(UblkError) in
            try run(UblkCommand.getParameters, "get parameters", device: device, buffer: b)
        }
        return p.basic.dev_sectors << 9
    }

    /// Begins taking over a device whose server died (it must be quiesced).
    func startRecovery(device: UInt32) throws(UblkError) {
        try run(UblkCommand.startRecovery, "start recovery", device: device)
    }

    /// Ends the take-over once the new queue has fetched all its requests: held I/O resumes.
    func endRecovery(device: UInt32) throws(UblkError) {
        try run(UblkCommand.endRecovery, "end recovery", device: device, data0: UInt64(getpid()))
    }

    /// Returns once every queue has fetched all its requests and the block device exists.
    func start(device: UInt32) throws(UblkError) {
        try run(UblkCommand.startDevice, "start", device: device, data0: UInt64(getpid()))
    }

    func stop(device: UInt32) throws(UblkError) { try run(UblkCommand.stopDevice, "stop", device: device) }

    /// Waits until the device's character device is closed by everyone.
    func delete(device: UInt32) throws(UblkError) { try run(UblkCommand.deleteDevice, "delete", device: device) }
}
