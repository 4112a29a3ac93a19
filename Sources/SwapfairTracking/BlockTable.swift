#if canImport(Glibc)
import Glibc
#endif

/// A table of 32-bit entries in a file mapped shared: every store is in the page cache the moment
/// it is made, so what the daemon recorded survives the daemon's own death (SIGKILL, a crash)
/// without a write or an fsync on the I/O path. It lives in a runtime directory (tmpfs): swap is
/// meaningless after the host reboots, and tmpfs pages need no journal or writeback to be changed,
/// which a file on a journaling file system would (a wait for memory while serving swap). The
/// mapping is populated and locked up front.
public final class BlockTable: @unchecked Sendable {
    public let count: Int
    public let path: String?
    let base: UnsafeMutablePointer<UInt32>
    private let bytes: Int

    public enum Failure: Error, CustomStringConvertible, Equatable {
        case cannotOpen(String, Int32)
        case cannotMap(String, Int32)
        case wrongSize(String, have: Int, want: Int)
        case cannotLock(String, Int32)
        public var description: String {
            switch self {
            case .cannotLock(let p, let e): return "cannot lock the block table \(p) in memory: \(String(cString: strerror(e)))"
            case .cannotOpen(let p, let e): return "cannot open the block table \(p): \(String(cString: strerror(e)))"
            case .cannotMap(let p, let e): return "cannot map the block table \(p): \(String(cString: strerror(e)))"
            case .wrongSize(let p, let have, let want):
                return "the block table \(p) has \(have) entries where \(want) are expected (the volume's size changed "
                    + "while blocks were shared); remove it only when no guest has swapped pages in it"
            }
        }
    }

    /// Opens (or creates, zero-filled) the table at `path`. A table that exists with another size
    /// is refused unless it holds only zeros, which mean "nothing shared".
    public init(path: String, count: Int) throws(Failure) {
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .cannotOpen(path, errno) }
        defer { close(fd) }
        var st = stat()
        fstat(fd, &st)
        let want = max(1, count) * 4
        if st.st_size != 0 && Int(st.st_size) != want {
            // A table of zeros records nothing: it may be resized.
            if !Self.allZero(fd: fd, size: Int(st.st_size)) {
                throw .wrongSize(path, have: Int(st.st_size) / 4, want: count)
            }
        }
        if Int(st.st_size) != want && ftruncate(fd, off_t(want)) != 0 { throw .cannotOpen(path, errno) }
        let p = mmap(nil, want, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0)
        guard let p, p != MAP_FAILED else { throw .cannotMap(path, errno) }
        // Swapped out, the table would wait on the very device it describes.
        guard mlock(p, want) == 0 else {
            let e = errno
            munmap(p, want)
            throw .cannotLock(path, e)
        }
        self.base = p.bindMemory(to: UInt32.self, capacity: max(1, count))
        self.bytes = want
        self.count = count
        self.path = path
    }

    /// A table in anonymous memory: for tests, and for a daemon told to keep nothing.
    public init(anonymous count: Int) {
        let want = max(1, count) * 4
        let p = mmap(nil, want, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_POPULATE, -1, 0)
        guard let p, p != MAP_FAILED else { fatalError("anonymous mapping of \(want) bytes failed") }
        self.base = p.bindMemory(to: UInt32.self, capacity: max(1, count))
        self.bytes = want
        self.count = count
        self.path = nil
    }

    deinit { munmap(base, bytes) }

    public subscript(i: Int) -> UInt32 {
        get { base[i] }
        set { base[i] = newValue }
    }

    /// The number of entries of the table at `path`, nil if there is none.
    public static func entries(at path: String) -> Int? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return Int(st.st_size) / 4
    }

    /// Whether the table at `path` exists and records anything.
    public static func holdsEntries(at path: String) -> Bool {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var st = stat()
        fstat(fd, &st)
        return !allZero(fd: fd, size: Int(st.st_size))
    }

    private static func allZero(fd: Int32, size: Int) -> Bool {
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        var at = 0
        while at < size {
            let n = chunk.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(at)) }
            if n <= 0 { return n == 0 }
            if chunk[0..<n].contains(where: { $0 != 0 }) { return false }
            at += n
        }
        return true
    }
}
