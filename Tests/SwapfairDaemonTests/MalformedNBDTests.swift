import Foundation
import Testing
import SwapfairSys

#if canImport(Glibc)
import Glibc
#endif

/// A deliberately naive NBD client that sends whatever bytes it is told to.
struct RawNBD {
    let s: UnixSocket

    init(_ path: String) throws {
        s = try UnixSocket.connect(to: path)
        s.setTimeout(seconds: 5)
    }

    static func be<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.bigEndian) { Array($0) } }
    static func num<T: FixedWidthInteger>(_ b: ArraySlice<UInt8>) -> T {
        b.reduce(T(0)) { ($0 << 8) | T($1) }
    }

    func send(_ bytes: [UInt8]) { try? s.writeAll(bytes) }

    /// Exactly n bytes, or nil when the server closed (or timed out).
    func read(_ n: Int) -> [UInt8]? {
        var out: [UInt8] = []
        while out.count < n {
            guard let chunk = try? s.read(limit: n - out.count), !chunk.isEmpty else { return nil }
            out += chunk
        }
        return out
    }

    /// True when the server has closed the connection.
    func closed() -> Bool { (try? s.read(limit: 1))?.isEmpty ?? true }

    func greetingAndFlags(_ flags: UInt32 = 3) -> Bool {
        guard let g = read(18), g.prefix(8) == Self.be(UInt64(0x4e42_444d_4147_4943))[...] else { return false }
        send(Self.be(flags))
        return true
    }

    func option(_ code: UInt32, _ data: [UInt8], magic: UInt64 = 0x4948_4156_454F_5054, length: UInt32? = nil) {
        send(Self.be(magic) + Self.be(code) + Self.be(length ?? UInt32(data.count)) + data)
    }

    /// One option reply: (type, data).
    func optionReply() -> (UInt32, [UInt8])? {
        guard let h = read(20) else { return nil }
        let len: UInt32 = Self.num(h[16..<20])
        guard let d = read(Int(len)) else { return nil }
        return (Self.num(h[12..<16]), d)
    }

    func goPayload(_ name: String, info: [UInt16] = [3]) -> [UInt8] {
        Self.be(UInt32(name.utf8.count)) + Array(name.utf8) + Self.be(UInt16(info.count)) + info.flatMap { Self.be($0) }
    }

    /// Negotiates `name` with GO; true when the server said ACK.
    func go(_ name: String) -> Bool {
        option(7, goPayload(name))
        while let (type, _) = optionReply() {
            if type == 1 { return true }
            if type & 0x8000_0000 != 0 { return false }
        }
        return false
    }

    func request(type: UInt16, flags: UInt16 = 0, cookie: UInt64, offset: UInt64, length: UInt32, magic: UInt32 = 0x2560_9513,
                 payload: [UInt8] = []) {
        send(Self.be(magic) + Self.be(flags) + Self.be(type) + Self.be(cookie) + Self.be(offset) + Self.be(length) + payload)
    }

    /// A simple reply: (error, cookie), followed by `data` bytes on success.
    func reply(data: Int = 0) -> (error: UInt32, cookie: UInt64, data: [UInt8])? {
        guard let h = read(16), Self.num(h[0..<4]) as UInt32 == 0x6744_6698 else { return nil }
        let error: UInt32 = Self.num(h[4..<8])
        let body = error == 0 && data > 0 ? read(data) ?? [] : []
        return (error, Self.num(h[8..<16]), body)
    }
}

@Suite(.serialized) struct MalformedNBDTests {
    static let EINVAL: UInt32 = 22, ENOSPC: UInt32 = 28, ERR_UNSUP: UInt32 = 0x8000_0001, ERR_INVALID: UInt32 = 0x8000_0003,
               ERR_UNKNOWN: UInt32 = 0x8000_0006

    @Test func malformedHandshakesAndRequestsGetTheProtocolsAnswersAndHarmNothing() throws {
        let d = try SwapDaemon(volumes: [("web", "16M")])
        let path = d.socket("web")
        // Known data first, to check at the end that nothing wrote outside what was asked.
        let qemuIo = try tool("qemu-io")
        #expect(try run(qemuIo, ["-f", "raw", d.uri("web"), "-c", "write -P 0x5a 0 16M"]).status == 0)
        var kinds = 0
        func expect(_ ok: Bool, _ what: String) {
            kinds += 1
            #expect(ok, "\(what)")
        }
        // --- handshake ---
        var c = try RawNBD(path)
        expect(c.greetingAndFlags(0x8000_0000) && c.closed(), "unknown client flags: closed")
        c = try RawNBD(path)
        expect(c.greetingAndFlags() && { c.option(7, c.goPayload("web"), magic: 0x1234); return c.closed() }(), "bad option magic: closed")
        c = try RawNBD(path)
        expect(c.greetingAndFlags() && { c.option(7, [], length: 1 << 20); return c.closed() }(), "option over 64 KiB: closed")
        c = try RawNBD(path)
        _ = c.greetingAndFlags()
        c.option(99, [1, 2, 3])
        expect(c.optionReply()?.0 == Self.ERR_UNSUP, "unknown option: ERR_UNSUP")
        c.option(7, c.goPayload("nosuch"))
        expect(c.optionReply()?.0 == Self.ERR_UNKNOWN, "GO for an unknown export: ERR_UNKNOWN")
        c.option(7, RawNBD.be(UInt32(1000)) + Array("web".utf8))
        expect(c.optionReply()?.0 == Self.ERR_INVALID, "GO with a name length past the payload: ERR_INVALID")
        c.option(3, [0, 1])
        expect(c.optionReply()?.0 == Self.ERR_INVALID, "LIST with data: ERR_INVALID")
        expect(c.go("web"), "negotiation goes on after errors and GO succeeds")
        c = try RawNBD(path)
        _ = c.greetingAndFlags()
        c.option(2, [])
        expect(c.optionReply()?.0 == 1 && c.closed(), "ABORT: ACK, then closed")
        c = try RawNBD(path)
        _ = c.greetingAndFlags()
        c.option(1, Array("nosuch".utf8))
        expect(c.closed(), "EXPORT_NAME of an unknown export: closed")
        c = try RawNBD(path)
        _ = c.greetingAndFlags()
        c.send(RawNBD.be(UInt64(0x4948_4156_454F_5054)) + [0, 0])  // half an option header, then gone
        // --- transmission ---
        c = try RawNBD(path)
        #expect(c.greetingAndFlags() && c.go("web"))
        let size: UInt64 = 16 << 20
        let bad: [(String, UInt16, UInt16, UInt64, UInt32, UInt32)] = [
            ("misaligned offset", 0, 0, 100, 4096, Self.EINVAL),
            ("misaligned length", 0, 0, 0, 100, Self.EINVAL),
            ("read past the end", 0, 0, size - 4096, 8192, Self.EINVAL),
            ("read over the maximum block", 0, 0, 0, 64 << 20, Self.EINVAL),
            ("unknown command", 99, 0, 0, 4096, Self.EINVAL),
            ("unknown flags", 0, 0x8000, 0, 4096, Self.EINVAL),
            ("zero-length read", 0, 0, 0, 0, Self.EINVAL),
            ("flush with an offset", 3, 0, 4096, 0, Self.EINVAL),
            ("offset + length overflow", 0, 0, UInt64.max - 4095, 8192, Self.EINVAL),
            ("block status (unsupported)", 7, 0, 0, 4096, Self.EINVAL),
        ]
        for (i, b) in bad.enumerated() {
            c.request(type: b.1, flags: b.2, cookie: UInt64(i + 100), offset: b.3, length: b.4)
            let r = c.reply()
            expect(r?.error == b.5 && r?.cookie == UInt64(i + 100), "\(b.0): error \(b.5), got \(String(describing: r?.error))")
        }
        c.request(type: 1, cookie: 7, offset: size - 4096, length: 8192, payload: [UInt8](repeating: 0xEE, count: 8192))
        expect(c.reply()?.error == Self.ENOSPC, "write past the end: ENOSPC, payload drained")
        c.request(type: 0, cookie: 8, offset: 8192, length: 4096)
        let good = c.reply(data: 4096)
        expect(good?.error == 0 && good?.cookie == 8 && good?.data.allSatisfy { $0 == 0x5a } == true,
               "a valid read after the errors returns the right data")
        c.request(type: 0, cookie: 9, offset: 0, length: 4096, magic: 0xdead_beef)
        expect(c.closed(), "bad request magic: closed")
        c = try RawNBD(path)
        #expect(c.greetingAndFlags() && c.go("web"))
        c.request(type: 1, cookie: 10, offset: 1 << 20, length: 1 << 20, payload: [UInt8](repeating: 0x11, count: 4096))
        // ... and the client vanishes mid-payload.
        c = try RawNBD(path)
        #expect(c.greetingAndFlags() && c.go("web"))
        c.request(type: 1, cookie: 11, offset: 0, length: 200 << 20)
        expect(c.closed(), "a write too large to drain: closed")
        #expect(kinds >= 20, "\(kinds) kinds of malformed input")
        // The daemon is alive, the volume holds exactly what was written: the half-sent write
        // left nothing behind.
        usleep(200_000)
        #expect(d.process?.isRunning == true)
        let check = try run(qemuIo, ["-f", "raw", d.uri("web"), "-c", "read -P 0x5a 0 16M"])
        #expect(check.status == 0 && !check.output.contains("Pattern verification failed"), "\(check.output.prefix(500))")
    }
}
