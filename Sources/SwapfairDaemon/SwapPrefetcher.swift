import Dispatch
import Logging
import SwapfairCgroup
import SwapfairPolicy
import SwapfairSys
import Synchronization
import SystemPackage

/// A VM's private anonymous memory, from `/proc/PID/maps`: where a VMM keeps guest RAM (QEMU's
/// default, Firecracker's, the stand-ins'). File and shared mappings are left out: their swapped
/// pages (shmem) do not show in the page tables, and file pages are read back by readahead.
enum AnonymousRegions {
    static func parse(_ maps: String) -> [Range<UInt64>] {
        var out: [Range<UInt64>] = []
        for line in maps.split(separator: "\n") {
            let fields = line.split(separator: " ", maxSplits: 5, omittingEmptySubsequences: true)
            guard fields.count >= 5, fields[1] == "rw-p" else { continue }
            let path = fields.count > 5 ? String(fields[5].drop { $0 == " " }) : ""
            guard path.isEmpty || path == "[heap]" else { continue }
            let bounds = fields[0].split(separator: "-")
            guard bounds.count == 2, let lo = UInt64(bounds[0], radix: 16), let hi = UInt64(bounds[1], radix: 16),
                  lo < hi else { continue }
            out.append(lo..<hi)
        }
        return out
    }
}

/// Runs of swapped pages, from `/proc/PID/pagemap` entries (bit 62: the page-table entry is a
/// swap entry; bit 63 would say present).
struct SwappedRuns {
    static let page = WeightedDivision.page
    private(set) var runs: [(start: UInt64, length: UInt64)] = []
    private(set) var bytes: UInt64 = 0
    let budget: UInt64

    init(budget: UInt64) { self.budget = budget }

    var full: Bool { bytes >= budget }

    /// Adds the swapped pages among `entries`, the entries of consecutive pages from `address`,
    /// until the budget is reached. Returns how many entries it took (all of them unless full).
    mutating func add(_ entries: UnsafeBufferPointer<UInt64>, from address: UInt64) -> Int {
        for (k, e) in entries.enumerated() {
            if full { return k }
            guard e & (1 << 62) != 0, e & (1 << 63) == 0 else { continue }
            let a = address + UInt64(k) * Self.page
            if let last = runs.last, last.start + last.length == a {
                runs[runs.count - 1].length += Self.page
            } else {
                runs.append((a, Self.page))
            }
            bytes += Self.page
        }
        return entries.count
    }
}

/// Swap-in prefetch: reads a VM's swapped memory back ahead of its faults with
/// `process_madvise(MADV_WILLNEED)`, which queues the reads of many pages at once where faults
/// would read them one by one (see `Planner`, step 6). Requests run on a thread of their own, so
/// a slow page-table walk never holds up the control loop; a request for a VM already being
/// served is dropped (the next tick asks again if it still needs to). Each VM keeps a cursor, so
/// that successive requests walk on through its memory instead of scanning the same start.
final class SwapPrefetcher: Sendable {
    /// One request of the control loop.
    struct Job: Sendable {
        let vm: String
        /// The VM's cgroup: its processes are walked.
        let group: Cgroup
        /// The most to read back.
        let bytes: UInt64
    }

    struct State: Sendable {
        var pending: [Job] = []
        var busy: Set<String> = []
        var cursors: [String: Cursor] = [:]
        var done: [String: UInt64] = [:]
        /// Failures already warned about, per VM (one warning each, not one a tick).
        var warned: Set<String> = []
        var stopped = false
        /// The thread starts with the first request: most daemons never need it.
        var started = false
    }

    /// Where a VM's last request stopped: the process and the address to go on from.
    typealias Cursor = (pid: Int32, address: UInt64)

    let proc: String
    let logger: Logger
    /// Most address space one request walks, in pages (8 GiB: 16 MiB of pagemap, tens of
    /// milliseconds), so a large VM with little in swap is walked over several requests.
    let scanLimit: UInt64
    let state = Mutex(State())
    let wake = DispatchSemaphore(value: 0)

    init(proc: String = "/proc", scanLimit: UInt64 = (8 << 30) / 4096, logger: Logger) {
        self.proc = proc
        self.scanLimit = scanLimit
        self.logger = logger
    }

    /// Asks for `bytes` of the VM's swapped memory to be read back. False if one is under way.
    @discardableResult
    func request(vm: String, group: Cgroup, bytes: UInt64) -> Bool {
        let (queued, start) = state.withLock { s -> (Bool, Bool) in
            guard !s.stopped, !s.busy.contains(vm) else { return (false, false) }
            s.busy.insert(vm)
            s.pending.append(Job(vm: vm, group: group, bytes: bytes))
            defer { s.started = true }
            return (true, !s.started)
        }
        if start { startThread(named: "swap-prefetch") { [self] in run() } }
        if queued { wake.signal() }
        return queued
    }

    /// Bytes read back ahead of faults so far, per VM.
    func prefetched(_ vm: String) -> UInt64 { state.withLock { $0.done[vm] ?? 0 } }

    func stop() {
        state.withLock { $0.stopped = true }
        wake.signal()
    }

    private func run() {
        while true {
            wake.wait()
            let (jobs, stopped) = state.withLock { s in
                defer { s.pending = [] }
                return (s.pending, s.stopped)
            }
            if stopped { return }
            for job in jobs {
                let cursor = state.withLock { $0.cursors[job.vm] }
                let (advised, next) = prefetch(job, from: cursor)
                state.withLock { s in
                    s.busy.remove(job.vm)
                    s.cursors[job.vm] = next
                    s.done[job.vm, default: 0] += advised
                }
            }
        }
    }

    /// One request: the group's processes in order, from the cursor on, wrapping round once.
    func prefetch(_ job: Job, from cursor: Cursor?) -> (UInt64, Cursor?) {
        let pids: [Int32]
        do { pids = try job.group.processes().sorted() } catch {
            logger.debug("swap-in prefetch: cannot list the group's processes", metadata: ["vm": "\(job.vm)", "error": "\(error)"])
            return (0, cursor)
        }
        guard !pids.isEmpty else { return (0, nil) }
        let first = cursor.flatMap { c in pids.firstIndex { $0 >= c.pid } } ?? 0
        var runs = SwappedRuns(budget: job.bytes)
        var scanLeft = scanLimit
        var advised: UInt64 = 0
        var next: Cursor?
        var failure: SysError?
        // The cursor's process from its address on, then every process in turn, then the
        // cursor's process again from its start.
        var order = Array(pids[first...]) + Array(pids[..<first])
        if let c = cursor, order.first == c.pid, c.address > 0 { order.append(c.pid) }
        for (k, pid) in order.enumerated() {
            let from: UInt64 = (k == 0 && cursor?.pid == pid) ? cursor?.address ?? 0 : 0
            let until: UInt64 = (k > 0 && k == order.count - 1 && cursor?.pid == pid) ? cursor?.address ?? .max : .max
            do {
                let handle = try ProcessHandle.open(pid)
                defer { handle.close() }
                let end = try scan(pid: pid, from: from, until: until, into: &runs, pages: &scanLeft)
                if !runs.runs.isEmpty { advised += try handle.advise(runs.runs, .willNeed) }
                if runs.full || scanLeft == 0 { next = (pid: pid, address: end) }
            } catch {
                // A VMM that exits or unmaps memory mid-walk (ESRCH, ENOMEM: nothing to say), or
                // a kernel without process_madvise (ENOSYS), or a security module that refuses it
                // (EPERM).
                if error.errno != .noSuchProcess && error.errno != .noMemory { failure = error }
            }
            if runs.full || scanLeft == 0 { break }
            runs = SwappedRuns(budget: job.bytes - min(advised, job.bytes))
        }
        if let failure {
            let key = "\(job.vm) \(failure.operation) \(failure.errno.rawValue)"
            if state.withLock({ $0.warned.insert(key).inserted }) {
                logger.warning("swap-in prefetch failed; the VM's swapped memory comes back by its own faults",
                               metadata: ["vm": "\(job.vm)", "error": "\(failure)"])
            }
        }
        if advised > 0 {
            logger.info("swap-in prefetch: \(Format.bytes(advised)) of swapped memory read back ahead of faults",
                        metadata: ["vm": "\(job.vm)", "asked": "\(Format.bytes(job.bytes))"])
        }
        return (advised, next)
    }

    /// Walks the process's anonymous regions in `from..<until`, adding its swapped pages to
    /// `runs`, for at most `pages` pages (less what it walks); returns the address it stopped at.
    func scan(pid: Int32, from: UInt64, until: UInt64, into runs: inout SwappedRuns,
              pages: inout UInt64) throws(SysError) -> UInt64 {
        let maps = try FileAccess.read("\(proc)/\(pid)/maps", limit: 16 << 20)
        let path = "\(proc)/\(pid)/pagemap"
        let fd: FileDescriptor
        do { fd = try FileDescriptor.open(FilePath(path), .readOnly, options: [.closeOnExec]) } catch {
            throw SysError("open", path, Errno(error))
        }
        defer { try? fd.close() }
        let chunk = 512  // entries per read: 2 MiB of address space
        var entries = [UInt64](repeating: 0, count: chunk)
        for region in AnonymousRegions.parse(maps) {
            var a = max(region.lowerBound, from)
            let end = min(region.upperBound, until)
            while a < end {
                let count = Int(min(UInt64(chunk), (end - a) / SwappedRuns.page, pages))
                guard count > 0 else { break }
                let got: Int
                do {
                    got = try entries.withUnsafeMutableBytes {
                        try fd.read(fromAbsoluteOffset: Int64(a / SwappedRuns.page * 8),
                                    into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<count * 8]))
                    }
                } catch {
                    throw SysError("read", path, Errno(error))
                }
                let n = got / 8
                guard n > 0 else { break }
                let taken = entries.withUnsafeBufferPointer { runs.add(UnsafeBufferPointer(rebasing: $0[0..<n]), from: a) }
                a += UInt64(taken) * SwappedRuns.page
                pages -= min(UInt64(taken), pages)
                if runs.full || pages == 0 { return a }
            }
        }
        return until == .max ? 0 : until
    }
}
