import Foundation
import Synchronization
import SwapfairExport
import SwapfairIO
import SwapfairTracking
import SwapfairUblk
import SwapfairSys

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

/// The host's swap volume with write elision: the device shows the volume less its spare blocks;
/// each request goes to the physical blocks its slots live in now (a slot a guest shares is
/// redirected to a spare when the host writes it), and every page the host reads back or writes is
/// kept for a while so that a guest swap-out of the same bytes, or the host's own re-swap of an
/// unchanged page, can refer to it.
final class ElidingTarget: UblkTarget, @unchecked Sendable {
    let inner: VolumeTarget
    let tracker: DoublePagingTracker
    let elision: WriteElision
    let slots: Int
    /// The queue's scratch for one request's runs and page digests (served one at a time, on the
    /// queue's thread).
    private let runs: UnsafeMutableBufferPointer<WriteElision.Run>
    private let digests: UnsafeMutableBufferPointer<UInt64>
    var size: UInt64 { UInt64(slots) * UInt64(PageDigest.pageSize) }

    init(inner: VolumeTarget, tracker: DoublePagingTracker, elision: WriteElision, slots: Int, maxIOBytes: Int) {
        self.inner = inner
        self.tracker = tracker
        self.elision = elision
        self.slots = slots
        runs = .allocate(capacity: max(1, maxIOBytes / PageDigest.pageSize))
        runs.initialize(repeating: WriteElision.Run(slot: 0, physical: 0, pages: 0, first: 0))
        digests = .allocate(capacity: max(1, maxIOBytes / PageDigest.pageSize))
        digests.initialize(repeating: 0)
    }

    deinit {
        runs.deallocate()
        digests.deallocate()
    }

    func serve(_ op: UblkRequestKind, offset: UInt64, length: Int, buffer: UnsafeMutableRawPointer) -> Int32 {
        let page = PageDigest.pageSize
        switch op {
        case .read, .write:
            guard offset % UInt64(page) == 0, length % page == 0, length / page <= runs.count,
                  offset + UInt64(length) <= size else { return -EINVAL }
            let bytes = UnsafeRawBufferPointer(start: buffer, count: length)
            let n = elision.hostRuns(slot: Int(offset) / page, pages: length / page, write: op == .write, bytes: bytes,
                                     digests: digests, into: runs)
            guard n >= 0 else { return -EIO }
            var result = Int32(length)
            for r in runs[0..<n] {
                let got = inner.serve(op, offset: UInt64(r.physical * page), length: r.pages * page, buffer: buffer + r.first * page)
                if got < 0 { result = got; break }
            }
            if op == .write {
                elision.hostWrote(runs[0..<n], ok: result >= 0, bytes, digests: digests)
                if result >= 0 { tracker.hostSwappedOut(bytes: length) }
            } else if result >= 0 {
                tracker.hostSwappedIn(bytes, now: monotonicSeconds())
                elision.hostRead(runs[0..<n], bytes)
            }
            return result
        case .flush:
            return inner.serve(.flush, offset: 0, length: 0, buffer: buffer)
        case .discard:
            // Slots may live elsewhere and blocks may be shared; a discard is advisory (what a
            // discarded block reads is unspecified), so it is acknowledged and skipped, except
            // that slots referring to other blocks let go of them.
            if offset % UInt64(page) == 0, length % page == 0, offset < size {
                elision.hostDiscarded(slot: Int(offset) / page, pages: length / page)
            }
            return 0
        case .writeZeroes:
            return -EOPNOTSUPP  // the kernel then writes zeros as ordinary writes
        }
    }
}

/// Write elision as the guests' exports see it.
struct ElisionSharing: BlockSharing {
    let elision: WriteElision
    /// Where each elided block is logged, if anywhere (`--double-paging-events`).
    var log: DoublePagingEventLog? = nil
    func guestWrite(vm: String, offset: UInt64, _ bytes: UnsafeRawBufferPointer) -> SharedWrite {
        let first = offset / UInt64(PageDigest.pageSize)
        let report = log.map { log in { @Sendable (page: Int, fromWrite: Bool) in
            log.record(time: monotonicSeconds(), vm: vm, block: first + UInt64(page),
                       kind: fromWrite ? "elided-from-write" : "elided-from-read")
        } }
        switch elision.guestWrite(vm: vm, offset: offset, bytes, elided: report) {
        case .none: return .writeAll
        case .all: return .writeNone
        case .pages(let elided): return .writeSome(elided: elided)
        }
    }
    func guestReadsShared(vm: String, offset: UInt64, length: Int) -> Bool {
        elision.guestReadsShared(vm: vm, offset: offset, length: length)
    }
    func guestRead(vm: String, offset: UInt64, length: Int, ownFD: Int32, into: UnsafeMutableRawPointer) -> Int32? {
        elision.guestRead(vm: vm, offset: offset, length: length, ownFD: ownFD, into: into)
    }
    func guestOverwrote(vm: String, offset: UInt64, length: Int) {
        elision.guestOverwrote(vm: vm, offset: offset, length: length)
    }
}

/// One line per detected double-paging event ("time vm block"), and with elision one per elided
/// block ("time vm block elided-from-read" or "elided-from-write", after where its copy came
/// from), for benchmarks that judge both against a workload's ground truth
/// (`swapfaird --double-paging-events FILE`).
final class DoublePagingEventLog: Sendable {
    let fd: Int32
    init?(path: String) {
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0o644)
        if fd < 0 { return nil }
    }
    deinit { close(fd) }
    func record(time: Double, vm: String, block: UInt64, kind: String? = nil) {
        let line = kind.map { "\(time) \(vm) \(block) \($0)\n" } ?? "\(time) \(vm) \(block)\n"
        _ = line.utf8CString.withUnsafeBufferPointer { write(fd, $0.baseAddress, $0.count - 1) }
    }
}
