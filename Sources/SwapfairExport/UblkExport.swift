import Synchronization
import SwapfairIO
import SwapfairUblk

/// A VM's swap volume as a ublk block device (`/dev/ublkbN`): the other way to reach it besides its
/// NBD export, for a VMM that opens a host block device (QEMU: `host_device` with `aio=io_uring`).
/// No socket stands between the VMM and the daemon: the kernel hands each request to the device's
/// queue thread, which passes it to the swap engine under the VM's share, as the export's are.
/// The double-paging tracker and write elision see its reads and writes as they see the export's.
public struct EngineTarget: UblkTarget {
    public let name: String
    public let volume: Volume
    public let client: Int
    let engine: SwapEngine
    let writeObserver: (@Sendable (String, UInt64, UnsafeRawBufferPointer) -> Void)?
    let sharing: (any BlockSharing)?

    public init(name: String, volume: Volume, client: Int, engine: SwapEngine,
                writeObserver: (@Sendable (String, UInt64, UnsafeRawBufferPointer) -> Void)? = nil,
                sharing: (any BlockSharing)? = nil) {
        self.name = name
        self.volume = volume
        self.client = client
        self.engine = engine
        self.writeObserver = writeObserver
        self.sharing = sharing
    }

    public var size: UInt64 { volume.size }
    /// Where a request served at once on the queue's thread leaves its result.
    public var scratchBytes: Int { 8 }

    public func start(_ r: UblkRequest, transfers: inout UblkTransfers) -> UblkStart {
        switch r.kind {
        case .read:
            if let sharing, sharing.guestReadsShared(vm: name, offset: r.offset, length: r.length),
               let n = sharing.guestRead(vm: name, offset: r.offset, length: r.length, ownFD: volume.fd, into: r.buffer) {
                return .done(n < 0 ? n : Int32(r.length))
            }
            return submit(.read, r, at: 0, length: r.length)
        case .write:
            let bytes = UnsafeRawBufferPointer(start: r.buffer, count: r.length)
            writeObserver?(name, r.offset, bytes)
            switch sharing?.guestWrite(vm: name, offset: r.offset, bytes) ?? .writeAll {
            case .writeAll: return submit(.write(fua: false), r, at: 0, length: r.length, overwrites: true)
            case .writeNone: return .done(Int32(r.length))
            case .writeSome(let elided): return writeRuns(r, SharedWrite.runs(elided))
            }
        case .flush:
            return submit(.flush, r, at: 0, length: 0)
        case .discard:
            return submit(.trim, r, at: 0, length: r.length, overwrites: true)
        case .writeZeroes:
            return submit(.zero(noHole: false), r, at: 0, length: r.length, overwrites: true)
        }
    }

    /// One engine request for bytes `at..<at+length` of `r`. A read or write the engine serves at
    /// once on this thread (it was idle) is answered at once; any other is pending.
    /// `overwrites`: the range holds the guest's own data once it succeeded (write elision's view).
    func submit(_ op: BlockOp, _ r: UblkRequest, at: Int, length: Int, overwrites: Bool = false) -> UblkStart {
        let offset = r.offset + UInt64(at)
        let (name, sharing) = (name, sharing)
        let settle: @Sendable (Int32) -> Int32 = { result in
            if result >= 0, overwrites { sharing?.guestOverwrote(vm: name, offset: offset, length: length) }
            return result
        }
        let data: IOMemory? = switch op {
        case .read, .write: IOMemory(r.buffer + at)
        default: nil
        }
        let inlineResult = IOMemory(r.scratch)
        var request = BlockRequest(client: client, volume: volume, op: op, offset: offset, length: UInt32(length),
                                   memory: data) { result, _ in
            inlineResult.pointer.storeBytes(of: settle(result), as: Int32.self)
        }
        if engine.serveInline(request) { return .done(r.scratch.load(as: Int32.self)) }
        let completion = r.completion
        request.done = { result, _ in completion(settle(result)) }
        engine.submit(request)
        return .pending
    }

    /// The pages of a write that are not references, a run of consecutive pages per engine
    /// request; answered once all of them are done, with the first error if any.
    func writeRuns(_ r: UblkRequest, _ runs: [Range<Int>]) -> UblkStart {
        let page = 4096, total = Int32(r.length), completion = r.completion
        guard !runs.isEmpty else { return .done(total) }
        let (name, sharing) = (name, sharing)
        let join = Mutex((remaining: runs.count, error: Int32(0)))
        let requests = runs.map { run in
            let offset = r.offset + UInt64(run.lowerBound * page), length = run.count * page
            return BlockRequest(client: client, volume: volume, op: .write(fua: false), offset: offset, length: UInt32(length),
                                memory: IOMemory(r.buffer + run.lowerBound * page)) { result, _ in
                if result >= 0 { sharing?.guestOverwrote(vm: name, offset: offset, length: length) }
                let (last, error) = join.withLock { j -> (Bool, Int32) in
                    j.remaining -= 1
                    if result < 0 && j.error == 0 { j.error = result }
                    return (j.remaining == 0, j.error)
                }
                if last { completion(error == 0 ? total : error) }
            }
        }
        engine.submit(contentsOf: requests)
        return .pending
    }
}
