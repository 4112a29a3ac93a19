#if canImport(Glibc)
import Glibc
#endif

/// The guest pager's ground truth: one JSON object a line per guest swap-out, formatted by hand
/// into a buffer that goes to the file in large writes. It runs on the pager's own thread between
/// accesses, so it must cost little beside the swap-out it records: with JSONSerialization and a
/// write a line, recording cost more than the swap-out itself in the lab (under emulation), and
/// only the runs that recorded truth paid it.
public final class SwapOutLog {
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    let fd: Int32
    let path: String
    var buffer: [UInt8] = []
    let flushAt: Int
    /// The first write that failed; lines after it are dropped, and `flush` reports it.
    var failure: Failure?

    /// Creates or truncates `path`; lines are written once `flushAt` bytes have gathered, and by `flush`.
    public init(path: String, flushAt: Int = 256 << 10) throws {
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw Failure(description: "cannot write \(path): \(String(cString: strerror(errno)))") }
        self.path = path
        self.flushAt = flushAt
        buffer.reserveCapacity(flushAt + 256)
    }

    deinit {
        writeOut()
        close(fd)
    }

    /// `t`: seconds since the run began; `clock`: CLOCK_MONOTONIC seconds; `swapEntry`: nil when unknown.
    public func record(t: Double, clock: Double, block: Int, hostSwapped: Bool, swapEntry: Bool?) {
        var line = "{\"block\":\(block),\"clock\":\(clock),\"host_swapped\":\(hostSwapped)"
        if let swapEntry { line += ",\"swap_entry\":\(swapEntry)" }
        line += ",\"t\":\(t)}\n"
        buffer.append(contentsOf: line.utf8)
        if buffer.count >= flushAt { writeOut() }
    }

    /// Writes what has gathered; throws if any write so far failed.
    public func flush() throws {
        writeOut()
        if let failure { throw failure }
    }

    private func writeOut() {
        defer { buffer.removeAll(keepingCapacity: true) }
        guard failure == nil else { return }
        var done = 0
        while done < buffer.count {
            let n = buffer.withUnsafeBytes { b in b.baseAddress.map { write(fd, $0 + done, b.count - done) } ?? 0 }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else {
                let why = n < 0 ? String(cString: strerror(errno)) : "nothing written"
                failure = Failure(description: "cannot write \(path): \(why)")
                return
            }
            done += n
        }
    }
}
