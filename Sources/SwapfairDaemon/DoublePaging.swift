import Foundation
import Synchronization
import SwapfairIO
import SwapfairTracking
import SwapfairUblk

#if canImport(Glibc)
import Glibc
#endif

/// The host's swap volume as a ublk target that also tells the double-paging tracker what the
/// host swaps in (the content it reads back) and how much it swaps out.
struct TrackedTarget: UblkTarget {
    let inner: VolumeTarget
    let tracker: DoublePagingTracker
    var size: UInt64 { inner.size }

    func serve(_ op: UblkRequestKind, offset: UInt64, length: Int, buffer: UnsafeMutableRawPointer) -> Int32 {
        let result = inner.serve(op, offset: offset, length: length, buffer: buffer)
        if result > 0 && length % PageDigest.pageSize == 0 {
            switch op {
            case .read: tracker.hostSwappedIn(UnsafeRawBufferPointer(start: buffer, count: length), now: monotonicSeconds())
            case .write: tracker.hostSwappedOut(bytes: length)
            default: break
            }
        }
        return result
    }
}

/// One line per detected double-paging event ("time vm block"), for benchmarks that judge the
/// detection against a workload's ground truth (`swapfaird --double-paging-events FILE`).
final class DoublePagingEventLog: Sendable {
    let fd: Int32
    init?(path: String) {
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0o644)
        if fd < 0 { return nil }
    }
    deinit { close(fd) }
    func record(time: Double, vm: String, block: UInt64) {
        let line = "\(time) \(vm) \(block)\n"
        _ = line.utf8CString.withUnsafeBufferPointer { write(fd, $0.baseAddress, $0.count - 1) }
    }
}
