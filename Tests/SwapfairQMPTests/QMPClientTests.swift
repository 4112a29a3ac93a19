import Foundation
import Testing
import SwapfairQMP
import SwapfairSys
import Synchronization

/// A QMP peer in miniature on a Unix socket: greets, answers the commands it knows (with an event
/// thrown in before each answer, as QEMU may send), refuses the others as QEMU does.
final class FakeQEMU: @unchecked Sendable {
    let path = "/tmp/swapfair-qmp-\(UUID().uuidString.prefix(8)).sock"
    let listener: UnixSocket
    var received: [String] = []
    var actual: UInt64 = 1 << 30

    init() throws {
        listener = try UnixSocket.listen(at: path)
        Thread { [self] in serve() }.start()
    }

    func serve() {
        guard let c = try? listener.accept() else { return }
        func send(_ s: String) { try? c.writeAll(Array((s + "\r\n").utf8)) }
        send(#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": []}}"#)
        var pending: [UInt8] = []
        while true {
            guard let bytes = try? c.read(until: 0x0A, limit: 65536), !bytes.isEmpty else { return }
            pending += bytes
            while let nl = pending.firstIndex(of: 0x0A) {
                let line = String(decoding: pending[..<nl], as: UTF8.self)
                pending.removeSubrange(...nl)
                guard let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                      let cmd = obj["execute"] as? String else { send(#"{"error": {"class": "GenericError", "desc": "bad"}}"#); continue }
                received.append(cmd)
                send(#"{"event": "BALLOON_CHANGE", "data": {"actual": 1}, "timestamp": {"seconds": 1, "microseconds": 2}}"#)
                switch cmd {
                case "qmp_capabilities": send(#"{"return": {}}"#)
                case "balloon":
                    actual = ((obj["arguments"] as? [String: Any])?["value"] as? NSNumber)?.uint64Value ?? 0
                    send(#"{"return": {}}"#)
                case "query-balloon": send(#"{"return": {"actual": \#(actual)}}"#)
                default: send(#"{"error": {"class": "CommandNotFound", "desc": "The command \#(cmd) has not been found"}}"#)
                }
            }
        }
    }

    deinit { unlink(path) }
}

@Suite struct QMPClientTests {
    @Test func setsAndReadsTheBalloonSkippingEvents() throws {
        let qemu = try FakeQEMU()
        let client = try QMPClient(path: qemu.path)
        #expect(try client.balloonActual() == 1 << 30)
        try client.setBalloonTarget(bytes: 768 << 20)
        #expect(try client.balloonActual() == 768 << 20)
        #expect(qemu.received == ["qmp_capabilities", "query-balloon", "balloon", "query-balloon"])
    }

    @Test func aRefusedCommandSaysWhatQEMUSaid() throws {
        let qemu = try FakeQEMU()
        let client = try QMPClient(path: qemu.path)
        do {
            try client.execute("no-such-command")
            Issue.record("a refused command did not throw")
        } catch {
            #expect(error.description.contains("has not been found") && error.description.contains("CommandNotFound"))
        }
    }

    @Test func aMissingSocketIsNamed() {
        do {
            _ = try QMPClient(path: "/tmp/swapfair-no-such-qmp.sock")
            Issue.record("connected to nothing")
        } catch {
            #expect(error.description.contains("/tmp/swapfair-no-such-qmp.sock"))
        }
    }
}

/// The balloon responder a stand-in guest serves: swapfair's own QMP client drives it as it
/// drives QEMU, one connection after another.
@Suite struct BalloonResponderTests {
    final class Guest: Sendable {
        let bytes = Mutex<UInt64>(96 << 20)
    }

    @Test func answersTheBalloonCommandsAndRefusesTheRestAsQEMUDoes() throws {
        let guest = Guest()
        let path = "/tmp/swapfair-balloon-\(UUID().uuidString.prefix(8)).sock"
        let responder = try BalloonResponder(path: path, setTarget: { v in guest.bytes.withLock { $0 = v } },
                                             actual: { guest.bytes.withLock { $0 } })
        responder.start()
        defer { responder.stop() }
        do {
            let client = try QMPClient(path: path)
            #expect(try client.balloonActual() == 96 << 20)
            try client.setBalloonTarget(bytes: 72 << 20)
            #expect(try client.balloonActual() == 72 << 20)
            #expect(throws: QMPError.self) { try client.execute("quit") }
            #expect(throws: QMPError.self) { try client.execute("balloon", arguments: ["value": -5]) }
        }
        // The next client, after the first has gone (one at a time, as QEMU's socket).
        do {
            let again = try QMPClient(path: path)
            #expect(try again.balloonActual() == 72 << 20)
        }
        // Garbage gets an error reply, not a hang or a crash.
        let raw = try UnixSocket.connect(to: path)
        raw.setTimeout(seconds: 5)
        _ = try raw.read(until: 0x0A, limit: 4096)  // greeting
        try raw.writeAll(Array("this is not json\n".utf8))
        let reply = String(decoding: try raw.read(until: 0x0A, limit: 4096), as: UTF8.self)
        #expect(reply.contains("GenericError"))
    }

    /// A peer that closes at each point of the exchange: every time an error naming what
    /// happened, never a signal (a write to a closed socket is EPIPE, not SIGPIPE's death).
    @Test(arguments: ["before the greeting", "after the greeting", "after reading a command", "mid-answer"])
    func aPeerThatClosesMidExchangeIsAnError(_ when: String) throws {
        let path = "/tmp/swapfair-qmp-\(UUID().uuidString.prefix(8)).sock"
        let listener = try UnixSocket.listen(at: path)
        defer { unlink(path) }
        let done = DispatchSemaphore(value: 0)
        startThread(named: "test-qmp-peer") {
            defer { done.signal() }
            guard let c = try? listener.accept() else { return }
            if when == "before the greeting" { return }
            try? c.writeAll(Array(#"{"QMP": {"version": {}, "capabilities": []}}"#.utf8) + [0x0A])
            if when == "after the greeting" { return }
            _ = try? c.read(until: 0x0A, limit: 4096)
            try? c.writeAll(Array(#"{"return": {}}"#.utf8) + [0x0A])
            _ = try? c.read(until: 0x0A, limit: 4096)
            if when == "mid-answer" { try? c.writeAll(Array(#"{"return": {"act"#.utf8)) }
        }
        do {
            let client = try QMPClient(path: path, timeoutSeconds: 5)
            // The peer goes at its point; the commands after it meet a closed socket.
            for _ in 0..<3 { _ = try client.balloonActual() }
            Issue.record("a closed peer answered")
        } catch {
            #expect("\(error)".contains("QMP"), "\(error)")
        }
        #expect(done.wait(timeout: .now() + 10) == .success)
    }
}
