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
    var transfersInline: Bool { inner.transfersInline }

    func start(_ r: UblkRequest, transfers: inout UblkTransfers) -> UblkStart { inner.start(r, transfers: &transfers) }

    func finish(_ r: UblkRequest, result: Int32) -> Int32 {
        if result > 0 && r.length % PageDigest.pageSize == 0 {
            switch r.kind {
            case .read: tracker.hostSwappedIn(UnsafeRawBufferPointer(start: r.buffer, count: r.length), now: monotonicSeconds())
            case .write: tracker.hostSwappedOut(bytes: r.length)
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
struct ElidingTarget: UblkTarget {
    let inner: VolumeTarget
    let tracker: DoublePagingTracker
    let elision: WriteElision
    let slots: Int
    /// Pages in the largest request.
    let maxPages: Int
    var size: UInt64 { UInt64(slots) * UInt64(PageDigest.pageSize) }
    var transfersInline: Bool { inner.transfersInline }

    init(inner: VolumeTarget, tracker: DoublePagingTracker, elision: WriteElision, slots: Int, maxIOBytes: Int) {
        self.inner = inner
        self.tracker = tracker
        self.elision = elision
        self.slots = slots
        maxPages = max(1, maxIOBytes / PageDigest.pageSize)
    }

    /// Each tag's scratch: the count of its runs, its runs, and its pages' digests.
    var scratchBytes: Int { 16 + maxPages * MemoryLayout<WriteElision.Run>.stride + maxPages * 8 }

    private func count(_ r: UblkRequest) -> UnsafeMutablePointer<Int> { r.scratch.bindMemory(to: Int.self, capacity: 1) }
    private func runs(_ r: UblkRequest) -> UnsafeMutableBufferPointer<WriteElision.Run> {
        UnsafeMutableBufferPointer(start: (r.scratch + 16).bindMemory(to: WriteElision.Run.self, capacity: maxPages), count: maxPages)
    }
    private func digests(_ r: UblkRequest) -> UnsafeMutableBufferPointer<UInt64> {
        let at = 16 + maxPages * MemoryLayout<WriteElision.Run>.stride
        return UnsafeMutableBufferPointer(start: (r.scratch + at).bindMemory(to: UInt64.self, capacity: maxPages), count: maxPages)
    }

    func start(_ r: UblkRequest, transfers: inout UblkTransfers) -> UblkStart {
        let page = PageDigest.pageSize
        switch r.kind {
        case .read, .write:
            guard r.offset % UInt64(page) == 0, r.length % page == 0, r.length / page <= maxPages,
                  r.offset + UInt64(r.length) <= size else { return .done(-EINVAL) }
            let bytes = UnsafeRawBufferPointer(start: r.buffer, count: r.length)
            let runs = runs(r)
            let n = elision.hostRuns(slot: Int(r.offset) / page, pages: r.length / page, write: r.kind == .write, bytes: bytes,
                                     digests: digests(r), into: runs)
            guard n >= 0 else { return .done(-EIO) }
            count(r).pointee = n
            for run in runs[0..<n] {
                // Room for one transfer per page of the largest request, and runs are at most that.
                let added = transfers.add(fd: inner.volume.fd, offset: UInt64(run.physical * page), length: run.pages * page,
                                          bufferOffset: run.first * page)
                precondition(added, "a request's runs exceed the queue's room for its transfers")
            }
            return .transfer
        case .flush:
            return inner.start(r, transfers: &transfers)
        case .discard:
            // Slots may live elsewhere and blocks may be shared; a discard is advisory (what a
            // discarded block reads is unspecified), so it is acknowledged and skipped, except
            // that slots referring to other blocks let go of them.
            if r.offset % UInt64(page) == 0, r.length % page == 0, r.offset < size {
                elision.hostDiscarded(slot: Int(r.offset) / page, pages: r.length / page)
            }
            return .done(0)
        case .writeZeroes:
            return .done(-EOPNOTSUPP)  // the kernel then writes zeros as ordinary writes
        }
    }

    func finish(_ r: UblkRequest, result: Int32) -> Int32 {
        let bytes = UnsafeRawBufferPointer(start: r.buffer, count: r.length)
        let done = runs(r)[0..<count(r).pointee]
        if r.kind == .write {
            elision.hostWrote(done, ok: result >= 0, bytes, digests: digests(r))
            if result >= 0 { tracker.hostSwappedOut(bytes: r.length) }
        } else if r.kind == .read && result >= 0 {
            // One digest of each page for both.
            let digests = digests(r)
            PageDigest.fill(bytes, into: digests)
            tracker.hostSwappedIn(bytes, digests: UnsafeBufferPointer(digests), now: monotonicSeconds())
            elision.hostRead(done, bytes, digests: digests)
        }
        return result
    }
}

/// Write elision as the guests' exports see it; it also tells the tracker of each guest write (in
/// place of the exports' write observer), so that each page is digested once for both.
struct ElisionSharing: BlockSharing {
    let elision: WriteElision
    let tracker: DoublePagingTracker
    /// Where each detection and each elided block is logged, if anywhere (`--double-paging-events`).
    var log: DoublePagingEventLog? = nil
    func guestWrite(vm: String, offset: UInt64, _ bytes: UnsafeRawBufferPointer) -> SharedWrite {
        let first = offset / UInt64(PageDigest.pageSize)
        var digests = [UInt64](repeating: 0, count: bytes.count / PageDigest.pageSize)
        let result = digests.withUnsafeMutableBufferPointer { d in
            PageDigest.fill(bytes, into: d)
            SwapDevices.observeGuestWrite(tracker, log: log, vm: vm, offset: offset, bytes, digests: UnsafeBufferPointer(d))
            let report = log.map { log in { @Sendable (page: Int, fromWrite: Bool) in
                log.record(time: monotonicSeconds(), vm: vm, block: first + UInt64(page),
                           kind: fromWrite ? "elided-from-write" : "elided-from-read")
            } }
            return elision.guestWrite(vm: vm, offset: offset, bytes, digests: UnsafeBufferPointer(d), elided: report)
        }
        switch result {
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
