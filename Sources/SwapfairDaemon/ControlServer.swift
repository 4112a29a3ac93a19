import Foundation
import Logging
import SwapfairSys
import SystemPackage
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The control socket: one request line in, one JSON document out, then close. Each client is
/// served on a thread of its own within a deadline, and at most `maxClients` at once, so a client
/// that connects and says nothing (or sends slowly) delays no other.
/// Only root (and the configured group, if any) may connect; the peer is checked with SO_PEERCRED.
///
/// Requests: `status` → the status report; `metrics` → the metrics in Prometheus's text format;
/// `reload` (root only) → the outcome of reading the configuration again (`ReloadReport`).
public final class ControlServer: Sendable {
    public let path: String
    let socket: UnixSocket
    let board: StatusBoard
    let allowedGroup: UInt32?
    let logger: Logger
    let reload: (@Sendable () -> ReloadReport)?
    let metrics: MetricsExporter?
    let health: Health?
    private let active = Mutex(0)
    private let stopped = Mutex(false)
    private let lastBusyWarning = Mutex(-Double.infinity)
    /// Clients served at once; more are told the daemon is busy.
    public static let maxClients = 16
    /// How long a client has to send its request line.
    public static let requestSeconds = 2.0
    static let requestLimit = 256

    public init(path: String, board: StatusBoard, allowedGroup: UInt32?, logger: Logger,
                reload: (@Sendable () -> ReloadReport)? = nil, metrics: MetricsExporter? = nil,
                health: Health? = nil) throws(SysError) {
        let dir = "/" + path.split(separator: "/").dropLast().joined(separator: "/")
        try FileAccess.makeDirectories(dir, mode: 0o755)
        self.path = path
        self.socket = try UnixSocket.listen(at: path, mode: allowedGroup == nil ? 0o600 : 0o660, backlog: 64)
        if let allowedGroup, chown(path, 0, allowedGroup) != 0 {
            throw SysError("chown", path, Errno(rawValue: errno))
        }
        self.board = board
        self.allowedGroup = allowedGroup
        self.logger = logger
        self.reload = reload
        self.metrics = metrics
        self.health = health
    }

    /// Serves until `stop()`; run it on its own thread.
    public func serve() {
        acceptConnections(on: socket, isStopped: { stopped.withLock { $0 } }, report: { event in
            switch event {
            case .transient(let e, let retry):
                logger.warning("control socket: cannot accept a connection; trying again",
                               metadata: ["error": "\(e.errno.message)", "retry_in_ms": "\(Int(retry * 1000))"])
            case .recovered(let failures):
                logger.notice("control socket: accepting connections again", metadata: ["failures": "\(failures)"])
            case .fatal(let e):
                logger.error("control socket: stopped accepting connections", metadata: ["error": "\(e)"])
                health?.record("control socket", "stopped accepting connections: \(e)")
            }
        }) { client in
            let admitted = active.withLock { n in
                guard n < Self.maxClients else { return false }
                n += 1
                return true
            }
            guard admitted else {
                refuseBusy(client)
                return
            }
            startThread(named: "control-client", stackSize: 512 << 10) { [self] in
                defer { active.withLock { $0 -= 1 } }
                handle(client)
            }
        }
    }

    public func stop() {
        stopped.withLock { $0 = true }
        socket.shutdownBoth()
        unlink(path)
    }

    /// Clients being served now.
    public var activeClients: Int { active.withLock { $0 } }

    func refuseBusy(_ client: UnixSocket) {
        client.setTimeout(seconds: 1)
        let now = monotonicSeconds()
        let warn = lastBusyWarning.withLock { last in
            defer { if now - last >= 10 { last = now } }
            return now - last >= 10
        }
        if warn { logger.warning("control socket: \(Self.maxClients) clients already; refusing more for now") }
        // On the accept thread: nothing here may wait on the client.
        client.discardPending()
        do { try client.writeAll(Array("{\"error\": \"busy: \(Self.maxClients) clients at once; try again\"}\n".utf8)) } catch {
            logger.debug("control socket: a refused client left first", metadata: ["error": "\(error)"])
        }
        client.discardPending()
        client.shutdownWrite()
    }

    func handle(_ client: UnixSocket) {
        client.setTimeout(seconds: Int(Self.requestSeconds))
        let peer: UnixSocket.Credentials
        do { peer = try client.peerCredentials() } catch {
            logger.notice("control socket: dropped a client whose credentials cannot be read", metadata: ["error": "\(error)"])
            return
        }
        let me = geteuid()
        let privileged = peer.uid == 0 || peer.uid == me
        guard privileged || (allowedGroup != nil && peer.gid == allowedGroup) else {
            logger.warning("control socket: refused a client", metadata: ["uid": "\(peer.uid)", "pid": "\(peer.pid)"])
            answer(client, "{\"error\": \"permission denied\"}")
            return
        }
        let request: (bytes: [UInt8], timedOut: Bool)
        do {
            request = try client.read(until: UInt8(ascii: "\n"), limit: Self.requestLimit,
                                      deadline: monotonicSeconds() + Self.requestSeconds)
        } catch {
            logger.debug("control socket: a client left before its request", metadata: ["error": "\(error)"])
            return
        }
        if request.timedOut {
            answer(client, "{\"error\": \"no request line within \(Self.requestSeconds) s\"}")
            return
        }
        if request.bytes.count >= Self.requestLimit && !request.bytes.contains(UInt8(ascii: "\n")) {
            answer(client, "{\"error\": \"request longer than \(Self.requestLimit) bytes\"}")
            return
        }
        let command = String(decoding: request.bytes, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        switch command {
        case "status":
            answer(client, board.current?.json() ?? "{\"error\": \"no status yet: the first tick has not finished\"}")
        case "metrics":
            // Prometheus's text format, not JSON: what `swapfairctl metrics` prints as it is.
            if let metrics { answer(client, metrics.text(), newline: false) }
            else { answer(client, "{\"error\": \"this daemon keeps no metrics\"}") }
        case "reload" where reload == nil:
            answer(client, "{\"error\": \"this daemon cannot reload\"}")
        case "reload" where !privileged:
            answer(client, "{\"error\": \"permission denied: only root may reload\"}")
        case "reload":
            logger.notice("reload asked for on the control socket", metadata: ["pid": "\(peer.pid)"])
            answer(client, reload?().json() ?? "{}")
        default:
            let shown = String(command.prefix(40).unicodeScalars.filter { $0.value >= 0x20 && $0 != "\"" && $0 != "\\" })
            answer(client, "{\"error\": \"unknown request \\\"\(shown)\\\"; known: status, metrics, reload\"}")
        }
    }

    /// One reply; a client that has gone is no error of the daemon's. Whatever the client still
    /// sends is read and dropped for a moment, so that closing does not reset the connection
    /// under the answer.
    func answer(_ client: UnixSocket, _ json: String, newline: Bool = true) {
        do { try client.writeAll(Array((newline ? json + "\n" : json).utf8)) } catch {
            logger.debug("control socket: a client left before its answer", metadata: ["error": "\(error)"])
            return
        }
        client.finish(deadline: monotonicSeconds() + 0.5)
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
        let data = try request("status", socket: path, timeout: 5)
        do { return try StatusReport.decode(data) } catch { throw .garbled("\(error)") }
    }

    /// The daemon's metrics, in Prometheus's text format.
    public static func metrics(socket path: String) throws(Failure) -> String {
        String(decoding: try request("metrics", socket: path, timeout: 5), as: UTF8.self)
    }

    /// Asks the daemon to read its configuration again; waits for the outcome.
    public static func reload(socket path: String) throws(Failure) -> ReloadReport {
        let data = try request("reload", socket: path, timeout: 75)
        do { return try ReloadReport.decode(data) } catch { throw .garbled("\(error)") }
    }

    /// Sends one request line and reads the whole answer; an answer with "error" is thrown.
    static func request(_ line: String, socket path: String, timeout: Int) throws(Failure) -> [UInt8] {
        let s: UnixSocket
        do { s = try UnixSocket.connect(to: path) } catch { throw .connect(path, error) }
        s.setTimeout(seconds: timeout)
        let data: [UInt8]
        do {
            // A daemon that refuses (busy) answers and closes, perhaps before the request is
            // sent: its answer is still there to read.
            do { try s.writeAll(Array((line + "\n").utf8)) } catch where error.errno == .brokenPipe || error.errno == .connectionReset {}
            data = try s.read(limit: 64 << 20)
        } catch {
            throw .connect(path, error)
        }
        if let obj = try? JSONSerialization.jsonObject(with: Data(data)) as? [String: Any],
           let message = obj["error"] as? String {
            throw .daemon(message)
        }
        return data
    }
}
