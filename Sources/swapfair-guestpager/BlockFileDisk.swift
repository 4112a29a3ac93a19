import Dispatch
import Synchronization
import SwapfairSys
import SwapfairWorkload
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The guest's swap disk: a block device (a swapfair export attached with `nbd-client`, a plain
/// partition) or a regular file of 4 KiB blocks (swap slots), written and read with O_DIRECT
/// where the file system allows it, so that every swap-out and swap-in is real I/O.
final class BlockFileDisk: GuestSwapDisk, @unchecked Sendable {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    private(set) var fd: FileDescriptor
    let path: String
    let direct: Bool

    /// Opens `path`, creating a regular file of `blocks` blocks if there is none; a device or an
    /// existing file must already hold that many.
    init(path: String, blocks: Int) throws {
        let need = Int64(blocks) * Int64(GuestPager.pageSize)
        var st = stat()
        let exists = stat(path, &st) == 0
        let isFile = !exists || (st.st_mode & S_IFMT) == S_IFREG
        let options: FileDescriptor.OpenOptions = exists ? [] : [.create]
        var direct = true
        let fd: FileDescriptor
        do {
            fd = try FileDescriptor.open(path, .readWrite, options: options.union(.direct), permissions: [.ownerReadWrite])
        } catch Errno.invalidArgument {
            // tmpfs and a few others have no direct I/O; the page cache is then in the way, and said so.
            direct = false
            fd = try FileDescriptor.open(path, .readWrite, options: options, permissions: [.ownerReadWrite])
        } catch {
            throw Failure(description: "cannot open the swap disk \(path): \(error)")
        }
        let size = try fd.seek(offset: 0, from: .end)
        if size < need {
            guard isFile else {
                try? fd.close()
                throw Failure(description: "the swap disk \(path) holds \(size >> 20) MiB; \(need >> 20) MiB are needed for the guest's pages")
            }
            guard ftruncate(fd.rawValue, off_t(need)) == 0 else {
                let e = Errno(rawValue: errno)
                try? fd.close()
                throw Failure(description: "cannot size the swap disk \(path) to \(need >> 20) MiB: \(e)")
            }
        }
        self.fd = fd
        self.path = path
        self.direct = direct
    }

    func write(block: Int, from page: UnsafeRawBufferPointer) throws {
        writeRequests.add(1, ordering: .relaxed)
        let n = try fd.writeAll(toAbsoluteOffset: Int64(block) * Int64(GuestPager.pageSize), page)
        guard n == page.count else { throw Failure(description: "short write to \(path) at block \(block)") }
    }

    /// Write requests issued (a run of neighbouring blocks is one), for the reports.
    let writeRequests = Atomic<Int>(0)

    /// The pages of a batch go out as runs of neighbouring blocks, one request each (a guest
    /// kernel's block layer merges the bios of a reclaim batch bound for consecutive slots), from
    /// up to eight threads at once (it keeps many swap writes in flight); the first failure is
    /// thrown once all have finished.
    func write(batch: [(block: Int, page: UnsafeRawBufferPointer)]) throws {
        guard !batch.isEmpty else { return }
        let order = batch.indices.sorted { batch[$0].block < batch[$1].block }
        let runs = Self.runs(ofSorted: order.map { batch[$0].block })
        struct Shared: @unchecked Sendable {
            // The pages stay mapped and unchanged until this returns; each run is one thread's.
            let batch: [(block: Int, page: UnsafeRawBufferPointer)]
            let order: [Int]
            let runs: [Range<Int>]
            let failures: UnsafeMutableBufferPointer<String?>
        }
        let failures = UnsafeMutableBufferPointer<String?>.allocate(capacity: runs.count)
        failures.initialize(repeating: nil)
        defer { failures.deallocate() }
        let shared = Shared(batch: batch, order: order, runs: runs, failures: failures)
        let raw = fd.rawValue, path = path
        let lanes = min(8, runs.count)
        writeRequests.add(runs.count, ordering: .relaxed)
        DispatchQueue.concurrentPerform(iterations: lanes) { lane in
            for r in stride(from: lane, to: shared.runs.count, by: lanes) {
                let run = shared.runs[r]
                var iov = run.map { i in
                    let page = shared.batch[shared.order[i]].page
                    return iovec(iov_base: UnsafeMutableRawPointer(mutating: page.baseAddress), iov_len: page.count)
                }
                let first = shared.batch[shared.order[run.lowerBound]].block
                let total = iov.reduce(0) { $0 + $1.iov_len }
                let n = pwritev(raw, &iov, Int32(iov.count), off_t(first) * off_t(GuestPager.pageSize))
                if n != total {
                    shared.failures[r] = "write to \(path) at block \(first) (\(run.count) blocks): " + (n < 0 ? "\(Errno(rawValue: errno))" : "short")
                }
            }
        }
        if let first = failures.compactMap({ $0 }).first { throw Failure(description: first) }
    }

    /// Blocks in ascending order, cut into runs of consecutive blocks (at most `maxRun` each):
    /// ranges of positions in that order.
    static func runs(ofSorted sorted: [Int], maxRun: Int = 64) -> [Range<Int>] {
        var runs: [Range<Int>] = []
        var start = 0
        for i in sorted.indices.dropFirst() where sorted[i] != sorted[i - 1] + 1 || i - start == maxRun {
            runs.append(start..<i)
            start = i
        }
        if !sorted.isEmpty { runs.append(start..<sorted.count) }
        return runs
    }

    func read(block: Int, into page: UnsafeMutableRawBufferPointer) throws {
        var done = 0
        while done < page.count {
            let n = try fd.read(fromAbsoluteOffset: Int64(block) * Int64(GuestPager.pageSize) + Int64(done),
                                into: UnsafeMutableRawBufferPointer(rebasing: page[done...]))
            guard n > 0 else { throw Failure(description: "short read from \(path) at block \(block)") }
            done += n
        }
    }

    /// Lets go of the disk (so that, say, the NBD device under it can be detached and attached
    /// again) until `reopen`.
    func close() { try? fd.close() }

    func reopen() throws {
        do {
            fd = try FileDescriptor.open(path, .readWrite, options: direct ? [.direct] : [], permissions: [.ownerReadWrite])
        } catch {
            throw Failure(description: "cannot open the swap disk \(path) again: \(error)")
        }
    }
}
