import CSwapfairShim
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A Unix stream socket (listening or connected). Owns its descriptor.
public final class UnixSocket: @unchecked Sendable {
    // @unchecked: the descriptor is immutable after init and each socket is used by one thread.
    public let fd: FileDescriptor

    init(fd: FileDescriptor) { self.fd = fd }

    deinit { try? fd.close() }

    /// The peer's process, user and group (`SO_PEERCRED`).
    public struct Credentials: Sendable, Equatable {
        public var pid: Int32
        public var uid: UInt32
        public var gid: UInt32
    }

    static func make(_ path: String) throws(SysError) -> (FileDescriptor, sockaddr_un) {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        guard bytes.count < capacity else { throw SysError("socket path too long:", path, .fileNameTooLong) }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
            raw[bytes.count] = 0
        }
        let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard s >= 0 else { throw SysError("socket", path, Errno(rawValue: errno)) }
        return (FileDescriptor(rawValue: s), addr)
    }

    /// Binds and listens at `path`, replacing a stale socket file; the file gets `mode`.
    /// The corresponding C functions are `socket`, `bind`, `chmod` and `listen`.
    public static func listen(at path: String, mode: mode_t = 0o600, backlog: Int32 = 16) throws(SysError) -> UnixSocket {
        let (fd, addr) = try make(path)
        let sock = UnixSocket(fd: fd)
        var st = stat()
        if lstat(path, &st) == 0 {
            guard (st.st_mode & S_IFMT) == S_IFSOCK else { throw SysError("refusing to replace non-socket", path, .fileExists) }
            unlink(path)
        }
        var a = addr
        let rc = withUnsafePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd.rawValue, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else { throw SysError("bind", path, Errno(rawValue: errno)) }
        guard chmod(path, mode) == 0 else { throw SysError("chmod", path, Errno(rawValue: errno)) }
        guard Glibc.listen(fd.rawValue, backlog) == 0 else { throw SysError("listen", path, Errno(rawValue: errno)) }
        return sock
    }

    /// Connects to a listening socket. The corresponding C function is `connect`.
    public static func connect(to path: String) throws(SysError) -> UnixSocket {
        let (fd, addr) = try make(path)
        let sock = UnixSocket(fd: fd)
        var a = addr
        let rc = withUnsafePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd.rawValue, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard rc == 0 else { throw SysError("connect", path, Errno(rawValue: errno)) }
        return sock
    }

    /// Waits for a connection. The corresponding C function is `accept`.
    public func accept() throws(SysError) -> UnixSocket {
        while true {
            let c = Glibc.accept(fd.rawValue, nil, nil)
            if c >= 0 {
                _ = fcntl(c, F_SETFD, FD_CLOEXEC)
                return UnixSocket(fd: FileDescriptor(rawValue: c))
            }
            let e = Errno(rawValue: errno)
            if e != .interrupted { throw SysError("accept", "socket", e) }
        }
    }

    public func peerCredentials() throws(SysError) -> Credentials {
        var pid: Int32 = 0, uid: UInt32 = 0, gid: UInt32 = 0
        guard swapfair_peer_credentials(fd.rawValue, &pid, &uid, &gid) == 0 else {
            throw SysError("getsockopt SO_PEERCRED", "socket", Errno(rawValue: errno))
        }
        return Credentials(pid: pid, uid: uid, gid: gid)
    }

    /// Bounds how long a read or write may wait (`SO_RCVTIMEO`, `SO_SNDTIMEO`).
    public func setTimeout(seconds: Int) {
        var tv = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd.rawValue, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd.rawValue, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Writes every byte, waiting for room (within the socket's timeout). A peer that has gone
    /// away is an error (EPIPE), never a signal: `send` with `MSG_NOSIGNAL`, so that nothing a
    /// client does can end the process. The corresponding C function is `send`.
    public func writeAll(_ bytes: [UInt8]) throws(SysError) {
        var sent = 0
        while sent < bytes.count {
            let n = bytes.withUnsafeBytes { b in
                Glibc.send(fd.rawValue, b.baseAddress! + sent, b.count - sent, Int32(MSG_NOSIGNAL))
            }
            if n < 0 {
                let e = Errno(rawValue: errno)
                if e == .interrupted { continue }
                throw SysError("send", "socket", e)
            }
            sent += n
        }
    }

    /// Reads until `delimiter` (included) or end of stream, at most `limit` bytes. Never takes
    /// more from the socket than it returns.
    public func read(until delimiter: UInt8? = nil, limit: Int) throws(SysError) -> [UInt8] {
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while out.count < limit {
            let want = min(chunk.count, limit - out.count)
            let got: Int
            do {
                got = try chunk.withUnsafeMutableBytes {
                    try fd.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<want]), retryOnInterrupt: true)
                }
            } catch {
                throw SysError("read", "socket", Errno(error))
            }
            if got == 0 { break }
            out.append(contentsOf: chunk[0..<got])
            if let delimiter, chunk[0..<got].contains(delimiter) { break }
        }
        return out
    }

    /// Reads until `delimiter` (included), end of stream, `limit` bytes or `deadline` (monotonic
    /// seconds), whichever comes first: a peer that sends slowly, or nothing, cannot hold the
    /// reader past the deadline. Returns what arrived and whether the deadline cut it short.
    /// The corresponding C functions are `poll` and `read`.
    public func read(until delimiter: UInt8, limit: Int, deadline: Double) throws(SysError) -> (bytes: [UInt8], timedOut: Bool) {
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while out.count < limit {
            let left = deadline - monotonicSeconds()
            if left <= 0 { return (out, true) }
            var p = pollfd(fd: fd.rawValue, events: Int16(POLLIN), revents: 0)
            let ready = poll(&p, 1, Int32(min(left * 1000, 60_000).rounded(.up)))
            if ready < 0 {
                let e = Errno(rawValue: errno)
                if e == .interrupted { continue }
                throw SysError("poll", "socket", e)
            }
            if ready == 0 { continue }
            let want = min(chunk.count, limit - out.count)
            let got = chunk.withUnsafeMutableBytes { Glibc.read(fd.rawValue, $0.baseAddress, want) }
            if got < 0 {
                let e = Errno(rawValue: errno)
                if e == .interrupted || e == .resourceTemporarilyUnavailable { continue }
                throw SysError("read", "socket", e)
            }
            if got == 0 { break }
            out.append(contentsOf: chunk[0..<got])
            if chunk[0..<got].contains(delimiter) { break }
        }
        return (out, false)
    }

    /// Says "no more from this side" (`shutdown(SHUT_WR)`), then reads and drops what the peer
    /// still sends, until it closes, `limit` bytes or `deadline`: closing a socket with unread
    /// input resets the connection, and the peer would lose the answer it was sent.
    public func finish(deadline: Double, limit: Int = 1 << 20) {
        Glibc.shutdown(fd.rawValue, Int32(SHUT_WR))
        var dropped = 0
        while dropped < limit {
            do {
                let (bytes, timedOut) = try read(until: 0, limit: min(64 << 10, limit - dropped), deadline: deadline)
                if bytes.isEmpty || timedOut { return }
                dropped += bytes.count
            } catch {
                return  // the peer is gone: nothing left to protect
            }
        }
    }

    /// Drops what has arrived so far without waiting (`recv` with `MSG_DONTWAIT`).
    public func discardPending() {
        var chunk = [UInt8](repeating: 0, count: 4096)
        while chunk.withUnsafeMutableBytes({ recv(fd.rawValue, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }) > 0 {}
    }

    /// No more writes from this side; the peer reads end of stream after what was sent. (`shutdown`)
    public func shutdownWrite() { Glibc.shutdown(fd.rawValue, Int32(SHUT_WR)) }

    /// Stops further reads and writes, waking a thread blocked in `accept`. (`shutdown`)
    public func shutdownBoth() { Glibc.shutdown(fd.rawValue, Int32(SHUT_RDWR)) }
}

/// `prctl(PR_SET_IO_FLUSHER)`: see the shim for why.
public func setIOFlusher() throws(SysError) {
    guard swapfair_set_io_flusher() == 0 else { throw SysError("prctl PR_SET_IO_FLUSHER", "self", Errno(rawValue: errno)) }
}
