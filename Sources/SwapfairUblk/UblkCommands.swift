import CURing

/// ublk's command numbers. Linux 6.4 and later take them ioctl-encoded (`_IOWR('u', nr, struct)`);
/// the plain numbers of `linux/ublk_cmd.h` in older headers are the "legacy" ones, which newer
/// kernels accept only with CONFIG_BLKDEV_UBLK_LEGACY_OPCODES. swapfair sends the encoded form and
/// falls back to the legacy one when the kernel refuses it.
enum UblkCommand {
    // Control commands, on /dev/ublk-control (payload: struct ublksrv_ctrl_cmd).
    static let addDevice: UInt32 = 0x04
    static let deleteDevice: UInt32 = 0x05
    static let startDevice: UInt32 = 0x06
    static let stopDevice: UInt32 = 0x07
    static let setParameters: UInt32 = 0x08
    static let getDeviceInfo: UInt32 = 0x02
    static let getParameters: UInt32 = 0x09
    static let startRecovery: UInt32 = 0x10
    static let endRecovery: UInt32 = 0x11
    // I/O commands, on /dev/ublkcN (payload: struct ublksrv_io_cmd).
    static let fetchRequest: UInt32 = 0x20
    static let commitAndFetchRequest: UInt32 = 0x21

    /// `_IOWR('u', nr, size)`: direction read|write (3) in bits 30–31, size in 16–29, type in 8–15.
    static func encoded(_ nr: UInt32, payloadSize: Int) -> UInt32 {
        (3 << 30) | (UInt32(payloadSize) << 16) | (UInt32(UInt8(ascii: "u")) << 8) | nr
    }

    static var controlPayloadSize: Int { MemoryLayout<ublksrv_ctrl_cmd>.size }
    static var ioPayloadSize: Int { MemoryLayout<ublksrv_io_cmd>.size }
}

/// A device's state in its info (`UBLK_S_DEV_*`).
enum UblkState: UInt16 { case dead = 0, live = 1, quiesced = 2 }

/// The operation of one ublk request (`op_flags & 0xff` of its descriptor).
enum UblkOperation: UInt8 {
    case read = 0, write = 1, flush = 2, discard = 3, writeSame = 4, writeZeroes = 5
}
