import Foundation
import SwapfairSys

/// The balloon part of QMP, served on a Unix socket for a stand-in guest (the paging benchmark's
/// guest pager), so that swapfaird drives it exactly as it drives QEMU: the greeting,
/// `qmp_capabilities`, `balloon` and `query-balloon`; any other command is refused as QEMU refuses
/// an unknown one. One client at a time, as QEMU's QMP socket.
public final class BalloonResponder: Sendable {
    public let path: String
    let listener: UnixSocket
    /// `balloon`: the bytes the guest should be left with.
    let setTarget: @Sendable (UInt64) -> Void
    /// `query-balloon`: what the guest has now.
    let actual: @Sendable () -> UInt64

    public init(path: String, setTarget: @escaping @Sendable (UInt64) -> Void,
                actual: @escaping @Sendable () -> UInt64) throws(SysError) {
        unlink(path)
        listener = try UnixSocket.listen(at: path)
        self.path = path
        self.setTarget = setTarget
        self.actual = actual
    }

    /// Serves clients one after another on a thread of its own, until `stop`.
    public func start() {
        startThread(named: "balloon-qmp") { [self] in
            while let c = try? listener.accept() {
                serve(c)
            }
        }
    }

    public func stop() {
        listener.shutdownBoth()
        unlink(path)
    }

    func serve(_ c: UnixSocket) {
        c.setTimeout(seconds: 10)
        func send(_ object: [String: Any]) -> Bool {
            guard let data = try? JSONSerialization.data(withJSONObject: object) else { return false }
            return (try? c.writeAll(Array(data) + [0x0D, 0x0A])) != nil
        }
        guard send(["QMP": ["version": ["qemu": ["major": 0, "minor": 0, "micro": 0], "package": "swapfair balloon responder"],
                            "capabilities": [String]()]]) else { return }
        var pending: [UInt8] = []
        while true {
            guard let bytes = try? c.read(until: 0x0A, limit: 65536), !bytes.isEmpty else { return }
            pending += bytes
            if pending.count > 1 << 20 { return }
            while let nl = pending.firstIndex(of: 0x0A) {
                let line = Array(pending[..<nl])
                pending.removeSubrange(...nl)
                if line.allSatisfy({ $0 == 0x0D || $0 == 0x20 }) { continue }
                let reply: [String: Any]
                if let obj = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any],
                   let command = obj["execute"] as? String {
                    reply = answer(command, obj["arguments"] as? [String: Any])
                } else {
                    reply = ["error": ["class": "GenericError", "desc": "JSON parse error: not a command object"]]
                }
                if !send(reply) { return }
            }
        }
    }

    func answer(_ command: String, _ arguments: [String: Any]?) -> [String: Any] {
        switch command {
        case "qmp_capabilities":
            return ["return": [String: Any]()]
        case "balloon":
            guard let value = (arguments?["value"] as? NSNumber)?.int64Value, value > 0 else {
                return ["error": ["class": "GenericError", "desc": "Parameter 'value' expects a size above 0"]]
            }
            setTarget(UInt64(value))
            return ["return": [String: Any]()]
        case "query-balloon":
            return ["return": ["actual": NSNumber(value: actual())]]
        default:
            return ["error": ["class": "CommandNotFound", "desc": "The command \(command) has not been found"]]
        }
    }
}
