import CSwapfairShim
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

extension FileDescriptor.OpenOptions {
    /// O_NOATIME: reads do not update the file's access time. Allowed to the file's owner and to
    /// privileged processes; others get EPERM from `open`.
    public static var noAccessTime: FileDescriptor.OpenOptions { .init(rawValue: swapfair_o_noatime()) }
    /// O_DIRECT: I/O goes to the device without the page cache; buffers, offsets and lengths must
    /// be aligned to the logical block size. Some file systems (tmpfs) refuse it with EINVAL.
    public static var direct: FileDescriptor.OpenOptions { .init(rawValue: swapfair_o_direct()) }
}

/// Whole-file reads and writes for small kernel interface files (cgroupfs, procfs), with typed errors.
public enum FileAccess {
    /// Reads a small file completely. The corresponding C functions are `open` and `read`.
    public static func read(_ path: String, limit: Int = 1 << 20) throws(SysError) -> String {
        let fd: FileDescriptor
        do {
            fd = try FileDescriptor.open(FilePath(path), .readOnly, options: [.closeOnExec], retryOnInterrupt: true)
        } catch {
            throw SysError("open", path, Errno(error))
        }
        defer { try? fd.close() }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16384)
        while out.count < limit {
            let n: Int
            do {
                n = try chunk.withUnsafeMutableBytes { try fd.read(into: $0, retryOnInterrupt: true) }
            } catch {
                throw SysError("read", path, Errno(error))
            }
            if n == 0 { break }
            out.append(contentsOf: chunk[0..<n])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Writes `text` with one `write` call, as cgroupfs wants. `nonBlocking` opens with O_NONBLOCK,
    /// which recent kernels honour for `memory.high`/`memory.max` (no synchronous reclaim in the writer).
    /// The corresponding C functions are `open` and `write`.
    public static func write(_ path: String, _ text: String, nonBlocking: Bool = false) throws(SysError) {
        let fd: FileDescriptor
        do {
            // O_TRUNC as a shell redirection does: kernfs ignores it, a regular file (a test tree) needs it.
            var options: FileDescriptor.OpenOptions = [.closeOnExec, .truncate]
            if nonBlocking { options.insert(.nonBlocking) }
            fd = try FileDescriptor.open(FilePath(path), .writeOnly, options: options, retryOnInterrupt: true)
        } catch {
            throw SysError("open", path, Errno(error))
        }
        defer { try? fd.close() }
        let bytes = Array(text.utf8)
        do {
            let n = try bytes.withUnsafeBytes { try fd.write($0, retryOnInterrupt: true) }
            if n != bytes.count { throw SysError("write", path, .ioError) }
        } catch let e as SysError {
            throw e
        } catch let e as Errno {
            throw SysError("write", path, e)
        } catch {
            throw SysError("write", path, .ioError)
        }
    }

    /// Replaces a small file whole: written to `path.tmp`, flushed, then renamed over `path`, so
    /// that a crash leaves the old contents or the new, never a mix. The corresponding C functions
    /// are `open`, `write`, `fsync` and `rename`.
    public static func replace(_ path: String, with text: String, mode: mode_t = 0o600) throws(SysError) {
        let temporary = path + ".tmp"
        let fd: FileDescriptor
        do {
            fd = try FileDescriptor.open(FilePath(temporary), .writeOnly, options: [.closeOnExec, .create, .truncate],
                                         permissions: FilePermissions(rawValue: mode), retryOnInterrupt: true)
        } catch {
            throw SysError("open", temporary, Errno(error))
        }
        do {
            _ = try Array(text.utf8).withUnsafeBytes { try fd.writeAll($0) }
            guard fsync(fd.rawValue) == 0 else { throw Errno(rawValue: errno) }
            try fd.close()
        } catch {
            try? fd.close()  // the write's error is the one to report
            unlink(temporary)
            throw SysError("write", temporary, Errno(error))
        }
        guard rename(temporary, path) == 0 else {
            let e = Errno(rawValue: errno)
            unlink(temporary)
            throw SysError("rename", path, e)
        }
    }

    /// The contents of a small file, or nil when it does not exist; any other failure is thrown.
    public static func readIfPresent(_ path: String) throws(SysError) -> String? {
        do { return try read(path) } catch where error.errno == .noSuchFileOrDirectory { return nil }
    }

    public static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    public static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    /// Creates a directory; succeeds if it exists. The corresponding C function is `mkdir`.
    public static func makeDirectory(_ path: String, mode: mode_t = 0o755) throws(SysError) {
        if mkdir(path, mode) != 0 {
            let e = Errno(rawValue: errno)
            if e == .fileExists && isDirectory(path) { return }
            throw SysError("mkdir", path, e)
        }
    }

    /// Creates a directory and any missing parents (`mkdir -p`). Parents get mode 0755.
    public static func makeDirectories(_ path: String, mode: mode_t = 0o755) throws(SysError) {
        var prefix = ""
        let parts = path.split(separator: "/")
        for (i, part) in parts.enumerated() {
            prefix += "/" + part
            try makeDirectory(prefix, mode: i == parts.count - 1 ? mode : 0o755)
        }
    }

    /// Removes an empty directory. The corresponding C function is `rmdir`.
    public static func removeDirectory(_ path: String) throws(SysError) {
        if rmdir(path) != 0 { throw SysError("rmdir", path, Errno(rawValue: errno)) }
    }

    /// Names in a directory, without "." and "..". The corresponding C functions are `opendir`/`readdir`.
    public static func list(_ path: String) throws(SysError) -> [String] {
        guard let dir = opendir(path) else { throw SysError("opendir", path, Errno(rawValue: errno)) }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    /// The file system type magic of the file system holding `path` (`statfs`'s `f_type`).
    public static func fileSystemType(_ path: String) throws(SysError) -> Int {
        var type: Int64 = 0
        if swapfair_fs_type(path, &type) != 0 { throw SysError("statfs", path, Errno(rawValue: errno)) }
        return Int(type)
    }
}
