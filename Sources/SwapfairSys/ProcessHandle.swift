import CSwapfairShim
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Advice for another process's memory (process_madvise(2) accepts these).
public enum MemoryAdvice: Int32, Sendable {
    /// MADV_WILLNEED: read the range's swapped pages back into memory ahead of their faults.
    case willNeed = 3
    /// MADV_COLD: deactivate the range's pages, so reclaim takes them first.
    case cold = 20
    /// MADV_PAGEOUT: reclaim the range's pages now.
    case pageOut = 21
}

/// A handle on one process (a pidfd): it refers to that process for as long as it is open, so a
/// call made through it cannot reach another process that reused the number.
public struct ProcessHandle: Sendable {
    public let pid: Int32
    let fd: Int32

    /// The corresponding C function is `pidfd_open`. ESRCH: the process has exited.
    public static func open(_ pid: Int32) throws(SysError) -> ProcessHandle {
        let fd = swapfair_pidfd_open(pid)
        guard fd >= 0 else { throw SysError("pidfd_open", "pid \(pid)", Errno(rawValue: errno)) }
        return ProcessHandle(pid: pid, fd: fd)
    }

    /// Advises the kernel about `ranges` (start, length) of the process's memory; returns the
    /// bytes advised. Ranges go in calls of at most 1024 (the kernel's limit per call). The
    /// corresponding C function is `process_madvise`.
    @discardableResult
    public func advise(_ ranges: [(start: UInt64, length: UInt64)], _ advice: MemoryAdvice) throws(SysError) -> UInt64 {
        var done: UInt64 = 0
        var flat: [UInt64] = []
        flat.reserveCapacity(min(ranges.count, 1024) * 2)
        var i = 0
        while i < ranges.count {
            let batch = ranges[i..<min(i + 1024, ranges.count)]
            flat.removeAll(keepingCapacity: true)
            for r in batch { flat.append(r.start); flat.append(r.length) }
            let n = flat.withUnsafeBufferPointer {
                swapfair_process_madvise(fd, $0.baseAddress, Int32(batch.count), advice.rawValue)
            }
            guard n >= 0 else { throw SysError("process_madvise", "pid \(pid)", Errno(rawValue: errno)) }
            done += UInt64(n)
            i += batch.count
        }
        return done
    }

    public func close() { _ = Glibc.close(fd) }
}
