import SwapfairSys
import SystemPackage

/// The files the control loop reads every tick (or every few ticks).
public enum StatFile: Int, CaseIterable, Sendable {
    case events, memoryStat, memoryCurrent, swapCurrent, memoryPressure, memoryEvents

    public var name: String {
        switch self {
        case .events: "cgroup.events"
        case .memoryStat: "memory.stat"
        case .memoryCurrent: "memory.current"
        case .swapCurrent: "memory.swap.current"
        case .memoryPressure: "memory.pressure"
        case .memoryEvents: "memory.events"
        }
    }
}

/// The statistics files of one cgroup, kept open and re-read with `pread` at offset 0 each tick:
/// one system call per file instead of open, read and close, which keeps a tick over a thousand
/// VMs in the low milliseconds.
public final class CgroupStatFiles {
    public let group: Cgroup
    /// Indexed by `StatFile.rawValue`: no hashing of names on the hot path.
    private var fds = [FileDescriptor?](repeating: nil, count: StatFile.allCases.count)
    private var buffer = [UInt8](repeating: 0, count: 8192)

    public init(_ group: Cgroup) { self.group = group }

    deinit { for case let fd? in fds { try? fd.close() } }

    public func close() {
        for case let fd? in fds { try? fd.close() }
        for i in fds.indices { fds[i] = nil }
    }

    /// Reads a file of the group, opening it on first use, and hands its bytes to `body`.
    /// One `pread` at offset 0 returns a whole cgroup file when it fits the buffer (kernfs
    /// produces these files in one go); only a full buffer makes it read on.
    /// The corresponding C function is `pread`.
    public func withBytes<R>(_ file: StatFile, _ body: (UnsafeRawBufferPointer) throws(CgroupError) -> R) throws(CgroupError) -> R {
        let fd = try descriptor(file)
        var total = 0
        while true {
            let n: Int
            do {
                n = try buffer.withUnsafeMutableBytes { raw in
                    try fd.read(fromAbsoluteOffset: Int64(total),
                                into: UnsafeMutableRawBufferPointer(rebasing: raw[total...]),
                                retryOnInterrupt: true)
                }
            } catch {
                // A removed cgroup's open files answer ENODEV.
                try? fd.close()
                fds[file.rawValue] = nil
                let error = Errno(error)
                if error == .operationNotSupportedByDevice || !group.exists { throw .vanished(cgroup: group.description) }
                throw .system(SysError("read", group.path + "/" + file.name, error))
            }
            total += n
            if total < buffer.count { break }
            buffer.append(contentsOf: repeatElement(0, count: buffer.count))
        }
        let result = buffer.withUnsafeBytes { raw in
            Result { () throws(CgroupError) -> R in try body(UnsafeRawBufferPointer(rebasing: raw[0..<total])) }
        }
        return try result.get()
    }

    func descriptor(_ file: StatFile) throws(CgroupError) -> FileDescriptor {
        if let open = fds[file.rawValue] { return open }
        let path = group.path + "/" + file.name
        do {
            // O_NOATIME: a statistics read need not update the file's access time (on a tmpfs
            // test tree that was a tenth of each read's cost). Only the owner or a privileged
            // process may ask for it; others open without it.
            let fd: FileDescriptor
            do {
                fd = try FileDescriptor.open(FilePath(path), .readOnly,
                                             options: [.closeOnExec, .noAccessTime])
            } catch Errno.notPermitted {
                fd = try FileDescriptor.open(FilePath(path), .readOnly, options: [.closeOnExec])
            }
            fds[file.rawValue] = fd
            return fd
        } catch {
            throw group.classify(SysError("open", path, Errno(error)), file: file.name,
                                 controller: Cgroup.controller(of: file.name))
        }
    }

    public func read(_ file: StatFile) throws(CgroupError) -> String {
        try withBytes(file) { String(decoding: $0, as: UTF8.self) }
    }

    public func number(_ file: StatFile) throws(CgroupError) -> UInt64 {
        try withBytes(file) { b throws(CgroupError) in try FastParse.number(b, file: "\(group)/\(file.name)") }
    }
}
