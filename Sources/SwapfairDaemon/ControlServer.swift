import Foundation
import Logging
import SwapfairSys

#if canImport(Glibc)
import Glibc
#endif

/// The control socket: one request line in, one JSON document out, then close.
/// Only root (and the configured group, if any) may connect; the peer is checked with SO_PEERCRED.
///
/// Requests: `status` → the status report.
public final class ControlServer: Sendable {
    public let path: String
    let socket: UnixSocket
    let board: StatusBoard
    let allowedGroup: UInt32?
    let logger: Logger

    public init(path: String, board: StatusBoard, allowedGroup: UInt32?, logger: Logger) throws(SysError) {
        let dir = "/" + path.split(separator: "/").dropLast().joined(separator: "/")
        try FileAccess.makeDirectories(dir, mode: 0o755)
        self.path = path
        self.socket = try UnixSocket.listen(at: path, mode: allowedGroup == nil ? 0o600 : 0o660)
        if let allowedGroup { chown(path, 0, allowedGroup) }
        self.board = board
        self.allowedGroup = allowedGroup
        self.logger = logger
    }

    /// Serves until `stop()`; run it on its own thread.
    public func serve() {
        while true {
            guard let client = try? socket.accept() else { return }
            handle(client)
        }
    }

    public func stop() {
        socket.shutdownBoth()
        unlink(path)
    }

    func handle(_ client: UnixSocket) {
        client.setTimeout(seconds: 2)
        guard let peer = try? client.peerCredentials() else { return }
        let me = geteuid()
        guard peer.uid == 0 || peer.uid == me || (allowedGroup != nil && peer.gid == allowedGroup) else {
            logger.warning("control socket: refused a client", metadata: ["uid": "\(peer.uid)", "pid": "\(peer.pid)"])
            try? client.writeAll(Array("{\"error\": \"permission denied\"}\n".utf8))
            return
        }
        let request = (try? client.read(until: UInt8(ascii: "\n"), limit: 256)) ?? []
        let command = String(decoding: request, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        let reply: String
        switch command {
        case "status":
            reply = board.current?.json() ?? "{\"error\": \"no status yet: the first tick has not finished\"}"
        default:
            reply = "{\"error\": \"unknown request \\\"\(command.prefix(40))\\\"; known: status\"}"
        }
        try? client.writeAll(Array((reply + "\n").utf8))
    }
}

/// The client side, for `swapfairctl`.
public enum ControlClient {
    public enum Failure: Error, CustomStringConvertible {
        case connect(String, SysError)
        case daemon(String)
        case garbled(String)
        public var description: String {
            switch self {
            case .connect(let path, let e):
                if e.errno == .noSuchFileOrDirectory || e.errno == .connectionRefused {
                    return "swapfaird is not running (no control socket at \(path))"
                }
                if e.errno == .permissionDenied { return "permission denied on \(path) (run as root)" }
                return "cannot reach swapfaird at \(path): \(e.errno.message)"
            case .daemon(let m): return "swapfaird answered: \(m)"
            case .garbled(let m): return "unreadable answer from swapfaird: \(m)"
            }
        }
    }

    public static func status(socket path: String) throws(Failure) -> StatusReport {
        let s: UnixSocket
        do { s = try UnixSocket.connect(to: path) } catch { throw .connect(path, error) }
        s.setTimeout(seconds: 5)
        let data: [UInt8]
        do {
            try s.writeAll(Array("status\n".utf8))
            data = try s.read(limit: 64 << 20)
        } catch {
            throw .connect(path, error)
        }
        if let obj = try? JSONSerialization.jsonObject(with: Data(data)) as? [String: Any],
           let message = obj["error"] as? String {
            throw .daemon(message)
        }
        do { return try StatusReport.decode(data) } catch { throw .garbled("\(error)") }
    }
}
