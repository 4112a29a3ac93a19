import CSwapfairShim
import SwapfairSys
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// One VM's swap volume: a sparse file, opened for direct I/O. Its contents outlive the daemon, so
/// a guest finds the pages it swapped out after swapfaird restarts.
public final class Volume: Sendable {
    public let path: String
    public let size: UInt64
    public let fd: Int32
    /// False where the file system refuses O_DIRECT (then the page cache is used).
    public let direct: Bool

    public enum Failure: Error, CustomStringConvertible, Equatable {
        case cannotOpen(String, Errno)
        case notABlockDevice(String)
        case wouldShrink(path: String, existing: UInt64, configured: UInt64)
        case notAligned(UInt64)
        public var description: String {
            switch self {
            case .cannotOpen(let p, let e): return "cannot open volume \(p): \(e.message)"
            case .wouldShrink(let p, let have, let want):
                return "volume \(p) holds \(have) bytes but the configuration says \(want); refusing to shrink it "
                    + "(the guest's swapped pages would be lost): raise the size or remove the file"
            case .notAligned(let s): return "volume size \(s) is not a multiple of 4096"
            case .notABlockDevice(let p): return "\(p) is not a block device"
            }
        }
    }

    /// Opens the volume, creating it sparse if missing and growing it if the configuration grew.
    public init(path: String, size: UInt64) throws(Failure) {
        guard size % 4096 == 0, size > 0 else { throw .notAligned(size) }
        let flags = O_RDWR | O_CREAT | O_CLOEXEC
        var fd = open(path, flags | swapfair_o_direct(), 0o600)
        var direct = true
        if fd < 0 && errno == EINVAL {
            fd = open(path, flags, 0o600)
            direct = false
        }
        guard fd >= 0 else { throw .cannotOpen(path, Errno(rawValue: errno)) }
        var st = stat()
        fstat(fd, &st)
        let existing = UInt64(st.st_size)
        if existing > size {
            close(fd)
            throw .wouldShrink(path: path, existing: existing, configured: size)
        }
        if existing < size && ftruncate(fd, off_t(size)) != 0 {
            let e = Errno(rawValue: errno)
            close(fd)
            throw .cannotOpen(path, e)
        }
        self.path = path
        self.size = size
        self.fd = fd
        self.direct = direct
    }

    /// A whole block device (a partition, a logical volume) as a volume: its size is the device's,
    /// rounded down to 4 KiB. Nothing is created; the device must exist.
    public init(device path: String) throws(Failure) {
        var fd = open(path, O_RDWR | O_CLOEXEC | swapfair_o_direct())
        var direct = true
        if fd < 0 && errno == EINVAL {
            fd = open(path, O_RDWR | O_CLOEXEC)
            direct = false
        }
        guard fd >= 0 else { throw .cannotOpen(path, Errno(rawValue: errno)) }
        var st = stat()
        fstat(fd, &st)
        guard (st.st_mode & S_IFMT) == S_IFBLK else {
            close(fd)
            throw .notABlockDevice(path)
        }
        let end = lseek(fd, 0, SEEK_END)
        guard end >= 4096 else {
            let e = Errno(rawValue: errno)
            close(fd)
            throw .cannotOpen(path, end < 0 ? e : .invalidArgument)
        }
        self.path = path
        self.size = UInt64(end) / 4096 * 4096
        self.fd = fd
        self.direct = direct
    }

    deinit { close(fd) }

    /// `pread`s or `pwrite`s the whole range, again after EINTR and short transfers. Returns the
    /// bytes done, fewer than `length` only at the end of the file, or -errno.
    public func transfer(write: Bool, _ buffer: UnsafeMutableRawPointer, length: Int, offset: UInt64) -> Int {
        Self.transfer(fd: fd, write: write, buffer, length: length, offset: offset)
    }

    /// The same on any descriptor.
    public static func transfer(fd: Int32, write: Bool, _ buffer: UnsafeMutableRawPointer, length: Int, offset: UInt64) -> Int {
        var done = 0
        while done < length {
            let n = write
                ? pwrite(fd, buffer + done, length - done, off_t(offset) + off_t(done))
                : pread(fd, buffer + done, length - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                return -Int(errno)
            }
            if n == 0 { break }
            done += n
        }
        return done
    }

    /// Bytes actually allocated on disk (the file is sparse).
    public var allocatedBytes: UInt64 {
        var st = stat()
        fstat(fd, &st)
        return UInt64(st.st_blocks) * 512
    }
}
