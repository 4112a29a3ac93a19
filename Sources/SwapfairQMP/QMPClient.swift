import Foundation
import SwapfairSys

/// Why a QMP exchange failed.
public enum QMPError: Error, CustomStringConvertible {
    case connect(String, SysError)
    case io(SysError)
    /// The peer said something that is not QMP (or closed the connection).
    case protocolError(String)
    /// QEMU refused the command: its error class and description.
    case refused(command: String, errorClass: String, description: String)

    public var description: String {
        switch self {
        case .connect(let path, let e): return "cannot connect to the QMP socket \(path): \(e.errno.message)"
        case .io(let e): return "QMP: \(e)"
        case .protocolError(let what): return "QMP: \(what)"
        case .refused(let c, let k, let d): return "QEMU refused \(c): \(d) (\(k))"
        }
    }
}

/// A client of QEMU's machine protocol (QMP) on a Unix socket: one JSON object a line each way.
/// After connecting it reads the greeting and leaves negotiation mode (`qmp_capabilities`);
/// asynchronous events that arrive between a command and its answer are skipped.
public final class QMPClient {
    let socket: UnixSocket
    let path: String
    private var buffered: [UInt8] = []

    public init(path: String, timeoutSeconds: Int = 5) throws(QMPError) {
        do { socket = try UnixSocket.connect(to: path) } catch { throw .connect(path, error) }
        self.path = path
        socket.setTimeout(seconds: timeoutSeconds)
        let greeting = try readMessage()
        guard greeting["QMP"] != nil else { throw .protocolError("\(path) did not greet as QMP does") }
        _ = try execute("qmp_capabilities")
    }

    /// Runs one command and returns its "return" value.
    @discardableResult
    public func execute(_ command: String, arguments: [String: Any]? = nil) throws(QMPError) -> Any {
        var message: [String: Any] = ["execute": command]
        if let arguments { message["arguments"] = arguments }
        guard let data = try? JSONSerialization.data(withJSONObject: message) else {
            throw .protocolError("cannot encode \(command)")
        }
        do { try socket.writeAll(Array(data) + [0x0A]) } catch { throw .io(error) }
        while true {
            let reply = try readMessage()
            if reply["event"] != nil { continue }
            if let error = reply["error"] as? [String: Any] {
                throw .refused(command: command, errorClass: error["class"] as? String ?? "?",
                               description: error["desc"] as? String ?? "?")
            }
            guard let value = reply["return"] else { throw .protocolError("an answer to \(command) without \"return\"") }
            return value
        }
    }

    /// Asks the guest's balloon driver to leave the guest `bytes` of RAM (QMP `balloon`).
    public func setBalloonTarget(bytes: UInt64) throws(QMPError) {
        try execute("balloon", arguments: ["value": bytes])
    }

    /// The RAM the guest has now, as the balloon reports it (QMP `query-balloon`, "actual").
    public func balloonActual() throws(QMPError) -> UInt64 {
        let r = try execute("query-balloon")
        guard let d = r as? [String: Any], let actual = (d["actual"] as? NSNumber)?.uint64Value else {
            throw .protocolError("query-balloon without \"actual\"")
        }
        return actual
    }

    private func readMessage() throws(QMPError) -> [String: Any] {
        while true {
            if let nl = buffered.firstIndex(of: 0x0A) {
                let line = Array(buffered[..<nl])
                buffered.removeSubrange(...nl)
                if line.allSatisfy({ $0 == 0x0D || $0 == 0x20 }) { continue }
                guard let obj = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any] else {
                    throw .protocolError("not a JSON object: \(String(decoding: line.prefix(200), as: UTF8.self))")
                }
                return obj
            }
            let more: [UInt8]
            do { more = try socket.read(until: 0x0A, limit: 1 << 20) } catch { throw .io(error) }
            if more.isEmpty { throw .protocolError("\(path) closed the connection") }
            buffered += more
            if buffered.count > 1 << 20 { throw .protocolError("a message longer than 1 MiB") }
        }
    }
}
