import Foundation
import Testing
import SwapfairCgroup
import SwapfairSys
import SwapfairTestSupport
@testable import SwapfairDaemon

@Suite struct ControlSocketTests {
    func socketPath() -> String { "/tmp/swapfair-test-\(UUID().uuidString.prefix(8)).sock" }

    @Test func statusTravelsOverTheSocket() throws {
        let tree = try FakeCgroupTree()
        try tree.add("machine.slice/a.scope", FakeCgroupTree.Group(current: GiB))
        let board = StatusBoard()
        let loop = ControlLoop(configuration: try configuration("""
            [[vm]]
            name = "a"
            cgroup = "machine.slice/a.scope"
            [[vm]]
            name = "absent"
            cgroup = "nowhere.scope"
            """), facts: facts, root: CgroupRoot(path: tree.path), logger: LogCapture().logger(), board: board, now: 0)
        loop.tick(now: 0)
        let path = socketPath()
        let server = try ControlServer(path: path, board: board, allowedGroup: nil, logger: LogCapture().logger())
        let thread = Thread { server.serve() }
        thread.start()
        defer { server.stop() }
        let report = try ControlClient.status(socket: path)
        #expect(report == board.current)
        #expect(report.vms.map(\.name) == ["a", "absent"])
        #expect(report.vms[0].state == "running")
        #expect(report.vms[0].memoryCurrent == GiB)
        #expect(report.vms[1].state.contains("does not exist"))
        let table = StatusTable.render(report)
        #expect(table.contains("MEMORY.HIGH") && table.contains("absent"))
        // Root-only by default.
        var st = stat()
        #expect(stat(path, &st) == 0 && st.st_mode & 0o777 == 0o600)
    }

    @Test func unknownRequestsGetAnError() throws {
        let path = socketPath()
        let server = try ControlServer(path: path, board: StatusBoard(), allowedGroup: nil, logger: LogCapture().logger())
        let thread = Thread { server.serve() }
        thread.start()
        defer { server.stop() }
        let s = try UnixSocket.connect(to: path)
        try s.writeAll(Array("reboot everything\n".utf8))
        let answer = String(decoding: try s.read(limit: 4096), as: UTF8.self)
        #expect(answer.contains("unknown request"))
        // No status yet: a clear error, not an empty report.
        #expect(throws: ControlClient.Failure.self) { try ControlClient.status(socket: path) }
    }

    @Test func aMissingDaemonIsExplained() {
        do {
            _ = try ControlClient.status(socket: "/tmp/swapfair-no-such.sock")
            Issue.record("connected to nothing")
        } catch {
            #expect(error.description.contains("swapfaird is not running"))
        }
    }

    @Test func aStaleSocketFileIsReplacedButOtherFilesAreNot() throws {
        let path = socketPath()
        let first = try ControlServer(path: path, board: StatusBoard(), allowedGroup: nil, logger: LogCapture().logger())
        first.socket.shutdownBoth()  // leaves the file behind like a crashed daemon
        let second = try ControlServer(path: path, board: StatusBoard(), allowedGroup: nil, logger: LogCapture().logger())
        second.stop()
        let plain = "/tmp/swapfair-test-\(UUID().uuidString.prefix(8)).txt"
        try "precious".write(toFile: plain, atomically: false, encoding: .utf8)
        defer { unlink(plain) }
        #expect(throws: SysError.self) {
            _ = try ControlServer(path: plain, board: StatusBoard(), allowedGroup: nil, logger: LogCapture().logger())
        }
        #expect(try String(contentsOfFile: plain, encoding: .utf8) == "precious")
    }
}
