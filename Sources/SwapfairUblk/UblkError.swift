import SwapfairSys
import SystemPackage

/// Why a ublk device could not be made or served, in words a host's operator can act on.
public enum UblkError: Error, CustomStringConvertible, Equatable {
    /// The kernel has no ublk: no /dev/ublk-control.
    case unavailable(String)
    /// A control command failed: which, for which device, and the kernel's errno.
    case command(String, device: Int, Errno)
    case system(SysError)

    public var description: String {
        switch self {
        case .unavailable(let why): return why
        case .command(let what, let dev, let e): return "ublk \(what) of device \(dev) failed: \(e.message)"
        case .system(let e): return "\(e)"
        }
    }
}
