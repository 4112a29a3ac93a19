import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A non-blocking inotify instance: files are watched for modification, and `drain` returns the
/// watches that fired since the previous call, without waiting. cgroupfs raises a modify event on
/// `cgroup.events` when a group's "populated" changes, so the control loop need not read that
/// file every tick. The corresponding C functions are `inotify_init1`, `inotify_add_watch`,
/// `inotify_rm_watch` and `read`.
public final class Inotify {
    public let fd: FileDescriptor
    private var buffer = [UInt8](repeating: 0, count: 16384)

    public init() throws(SysError) {
        let raw = inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC))
        guard raw >= 0 else { throw SysError("inotify_init1", "", Errno(rawValue: errno)) }
        fd = FileDescriptor(rawValue: raw)
    }

    deinit { try? fd.close() }

    /// Watches `path` for modification and for changes of its attributes (which include its
    /// removal while open: the link count drops); returns the watch descriptor.
    public func watchModifications(_ path: String) throws(SysError) -> Int32 {
        let wd = inotify_add_watch(fd.rawValue, path, UInt32(IN_MODIFY | IN_ATTRIB))
        guard wd >= 0 else { throw SysError("inotify_add_watch", path, Errno(rawValue: errno)) }
        return wd
    }

    public func unwatch(_ wd: Int32) { _ = inotify_rm_watch(fd.rawValue, wd) }

    /// The watches that fired since the last call. `overflowed`: the kernel's event queue
    /// overflowed and events were lost, so everything watched should be treated as changed.
    public func drain() -> (fired: Set<Int32>, overflowed: Bool) {
        var fired: Set<Int32> = []
        var overflowed = false
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd.rawValue, $0.baseAddress, $0.count) }
            if n <= 0 {
                // EAGAIN: nothing more. Any other error: report what was read, treat all as changed.
                if n < 0 && errno != EAGAIN && errno != EINTR { overflowed = true }
                if n < 0 && errno == EINTR { continue }
                break
            }
            buffer.withUnsafeBytes { raw in
                var off = 0
                let header = MemoryLayout<inotify_event>.size
                while off + header <= n {
                    let wd = raw.loadUnaligned(fromByteOffset: off, as: Int32.self)
                    let mask = raw.loadUnaligned(fromByteOffset: off + 4, as: UInt32.self)
                    let len = raw.loadUnaligned(fromByteOffset: off + 12, as: UInt32.self)
                    if mask & UInt32(IN_Q_OVERFLOW) != 0 { overflowed = true } else { fired.insert(wd) }
                    off += header + Int(len)
                }
            }
        }
        return (fired, overflowed)
    }
}
