import SwapfairSys
import SystemPackage

/// The statistics files of one cgroup, kept open and re-read with `pread` at offset 0 each tick:
/// one system call per file instead of open, read and close, which keeps a tick over a thousand
/// VMs in the low milliseconds.
public final class CgroupStatFiles {
    public let group: Cgroup
    private var fds: [String: FileDescriptor] = [:]
    private var buffer = [UInt8](repeating: 0, count: 8192)

    public init(_ group: Cgroup) { self.group = group }

    deinit { for fd in fds.values { try? fd.close() } }

    public func close() {
        for fd in fds.values { try? fd.close() }
        fds.removeAll()
    }

    /// Reads a file of the group, opening it on first use, and hands its bytes to `body`.
    /// One `pread` at offset 0 returns a whole cgroup file when it fits the buffer (kernfs
    /// produces these files in one go); only a full buffer makes it read on.
    /// The corresponding C function is `pread`.
    public func withBytes<R>(_ file: String, _ body: (UnsafeRawBufferPointer) throws(CgroupError) -> R) throws(CgroupError) -> R {
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
                fds[file] = nil
                let error = Errno(error)
                if error == .operationNotSupportedByDevice || !group.exists { throw .vanished(cgroup: group.description) }
                throw .system(SysError("read", group.path + "/" + file, error))
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

    func descriptor(_ file: String) throws(CgroupError) -> FileDescriptor {
        if let open = fds[file] { return open }
        do {
            let fd = try FileDescriptor.open(FilePath(group.path + "/" + file), .readOnly, options: [.closeOnExec])
            fds[file] = fd
            return fd
        } catch {
            throw group.classify(SysError("open", group.path + "/" + file, Errno(error)), file: file,
                                 controller: Cgroup.controller(of: file))
        }
    }

    public func read(_ file: String) throws(CgroupError) -> String {
        try withBytes(file) { String(decoding: $0, as: UTF8.self) }
    }

    public func number(_ file: String) throws(CgroupError) -> UInt64 {
        try withBytes(file) { b throws(CgroupError) in try FastParse.number(b, file: "\(group)/\(file)") }
    }
}
