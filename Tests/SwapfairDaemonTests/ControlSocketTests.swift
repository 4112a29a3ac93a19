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

    /// The host swap section survives the JSON a client reads, and the table shows it.
    @Test func theHostSwapSectionTravelsAndRenders() throws {
        var report = StatusReport(daemon: StatusReport.Daemon(
            version: "t", pid: 1, config: "c", backend: "none", activity: "-", cgroupRoot: "-", intervalSeconds: 1, ticks: 1,
            uptimeSeconds: 1, memoryBudget: 0, swapBudget: 0, lastTickMilliseconds: 0), vms: [])
        #expect(try StatusReport.decode(Array(report.json().utf8)).hostSwap == nil)
        #expect(!StatusTable.render(report).contains("host swap"))
        report.hostSwap = StatusReport.HostSwap(device: "/dev/ublkb0", swapInBytes: 3 * MiB, swapOutBytes: 5 * MiB,
                                                elidedBytes: 8192, references: 2, sharedBlocks: 7, spareBlocks: 100)
        let json = report.json()
        #expect(json.contains("\"swap_in_bytes\"") && json.contains("\"elided_bytes\""))
        #expect(try StatusReport.decode(Array(json.utf8)) == report)
        let table = StatusTable.render(report)
        #expect(table.contains("host swap on /dev/ublkb0: swapped in 3 MiB, out 5 MiB"), "\(table)")
        #expect(table.contains("re-swapped as references 8 KiB, slots referring elsewhere 2"), "\(table)")
    }

    /// What swap-in prefetch read back travels in the JSON and shows under the table.
    @Test func prefetchedMemoryTravelsAndRenders() throws {
        let vm = StatusReport.VM(name: "victim", state: "running", cgroup: "lab.slice/victim", weight: 100, reservation: 0,
                                 limit: nil, demand: 100 * MiB, entitled: 100 * MiB, memoryHigh: 120 * MiB,
                                 memoryCurrent: 110 * MiB, swapCurrent: 20 * MiB, swapMax: nil, stall: 0.3,
                                 pressureAvg10: nil, activeFraction: 1, highEvents: 0, oomKills: 0, lastDecision: nil,
                                 swapDevice: nil, reclaimShift: nil, prefetched: 96 * MiB)
        var quiet = vm
        quiet.name = "quiet"
        quiet.prefetched = 0
        let report = StatusReport(daemon: StatusReport.Daemon(
            version: "t", pid: 1, config: "c", backend: "none", activity: "-", cgroupRoot: "-", intervalSeconds: 1, ticks: 1,
            uptimeSeconds: 1, memoryBudget: 0, swapBudget: 0, lastTickMilliseconds: 0), vms: [vm, quiet])
        let json = report.json()
        #expect(json.contains("\"prefetched\""), "\(json)")
        #expect(try StatusReport.decode(Array(json.utf8)) == report)
        let table = StatusTable.render(report)
        #expect(table.contains("swap-in prefetch (read back ahead of faults after waking): victim 96 MiB\n"), "\(table)")
        #expect(!table.contains("quiet 0"))
    }

    /// A VM's ublk block device travels in the JSON and is named under the swap devices' table.
    @Test func aSwapDevicesBlockDeviceTravelsAndRenders() throws {
        func vm(_ name: String, block: String?) -> StatusReport.VM {
            var d = StatusReport.SwapDevice(socket: "/run/swapfair/nbd/\(name).sock", size: GiB, allocated: 0, connections: 0,
                                            reads: 0, writes: 0, readBytes: 0, writeBytes: 0, errors: 0, queued: 0, inFlight: 0,
                                            iops: 0, bytesPerSecond: 0, reservationMet: nil, doublePagingEvents: nil,
                                            redundantReadBytes: nil, redundantWriteBytes: nil)
            d.blockDevice = block
            return StatusReport.VM(name: name, state: "running", cgroup: "-", weight: 100, reservation: 0, limit: nil,
                                   demand: 0, entitled: 0, memoryHigh: nil, memoryCurrent: 0, swapCurrent: 0, swapMax: nil,
                                   stall: 0, pressureAvg10: nil, activeFraction: nil, highEvents: 0, oomKills: 0,
                                   lastDecision: nil, swapDevice: d, reclaimShift: nil, prefetched: nil)
        }
        let report = StatusReport(daemon: StatusReport.Daemon(
            version: "t", pid: 1, config: "c", backend: "none", activity: "-", cgroupRoot: "-", intervalSeconds: 1, ticks: 1,
            uptimeSeconds: 1, memoryBudget: 0, swapBudget: 0, lastTickMilliseconds: 0),
            vms: [vm("web", block: "/dev/ublkb3"), vm("db", block: nil)])
        let json = report.json()
        #expect(json.contains("\"block_device\"") && json.contains("ublkb3"), "\(json)")
        #expect(try StatusReport.decode(Array(json.utf8)) == report)
        let table = StatusTable.render(report)
        #expect(table.contains("also as ublk block devices: web /dev/ublkb3\n"), "\(table)")
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

    func serving(reload: (@Sendable () -> ReloadReport)? = nil) throws -> (ControlServer, String, StatusBoard) {
        let path = socketPath()
        let board = StatusBoard()
        board.publish(StatusReport(daemon: StatusReport.Daemon(
            version: "t", pid: 1, config: "c", backend: "none", activity: "-", cgroupRoot: "-", intervalSeconds: 1, ticks: 1,
            uptimeSeconds: 1, memoryBudget: 0, swapBudget: 0, lastTickMilliseconds: 0), vms: []))
        let server = try ControlServer(path: path, board: board, allowedGroup: nil, logger: LogCapture().logger(), reload: reload)
        startThread(named: "test-control") { server.serve() }
        return (server, path, board)
    }

    /// Clients that connect and say nothing, or send a byte now and then, hold nobody else up;
    /// each is answered (and let go) within the deadline.
    @Test func silentAndSlowClientsDelayNoOther() throws {
        let (server, path, _) = try serving()
        defer { server.stop() }
        var silent: [UnixSocket] = []
        for _ in 0..<8 { silent.append(try UnixSocket.connect(to: path)) }
        let slow = try UnixSocket.connect(to: path)
        try slow.writeAll(Array("st".utf8))
        let began = monotonicSeconds()
        _ = try ControlClient.status(socket: path)
        #expect(monotonicSeconds() - began < 0.5)
        // The silent ones are told why and closed once their time is up.
        silent[0].setTimeout(seconds: 5)
        let answer = String(decoding: try silent[0].read(limit: 4096), as: UTF8.self)
        #expect(answer.contains("no request line within"), "\(answer)")
        #expect(eventually(3) { server.activeClients == 0 })
    }

    /// Past `maxClients` at once a client is told the daemon is busy instead of waiting.
    @Test func clientsBeyondTheBoundAreToldTheDaemonIsBusy() throws {
        let (server, path, _) = try serving()
        defer { server.stop() }
        var held: [UnixSocket] = []
        for _ in 0..<ControlServer.maxClients { held.append(try UnixSocket.connect(to: path)) }
        #expect(eventually(2) { server.activeClients == ControlServer.maxClients })
        do {
            _ = try ControlClient.status(socket: path)
            Issue.record("a client beyond the bound was served")
        } catch {
            #expect(error.description.contains("busy"), "\(error)")
        }
        held.removeAll()
        #expect(eventually(4) { (try? ControlClient.status(socket: path)) != nil })
    }

    @Test func garbageAndOverlongRequestsGetAnErrorAndTheServerGoesOn() throws {
        let (server, path, _) = try serving()
        defer { server.stop() }
        let long = try UnixSocket.connect(to: path)
        long.setTimeout(seconds: 5)
        // A megabyte with no newline: answered after the limit, the rest never read.
        try? long.writeAll([UInt8](repeating: 0x41, count: 64 << 10))
        let answer = String(decoding: try long.read(limit: 4096), as: UTF8.self)
        #expect(answer.contains("longer than"), "\(answer)")
        let garbage = try UnixSocket.connect(to: path)
        try garbage.writeAll([0xff, 0x00, 0x22, 0x5c, 0x0a])
        let reply = try garbage.read(limit: 4096)
        #expect(String(decoding: reply, as: UTF8.self).contains("unknown request"))
        // The reply is still JSON, whatever the request held.
        #expect((try? JSONSerialization.jsonObject(with: Data(reply))) != nil)
        _ = try ControlClient.status(socket: path)
    }

    @Test func reloadTravelsOverTheSocket() throws {
        let (server, path, _) = try serving(reload: { ReloadReport(outcome: .applied, changes: ["vm x: added"], source: "f") })
        defer { server.stop() }
        let report = try ControlClient.reload(socket: path)
        #expect(report == ReloadReport(outcome: .applied, changes: ["vm x: added"], source: "f"))
        #expect(report.text.contains("changed: vm x: added"))
        let (other, otherPath, _) = try serving()
        defer { other.stop() }
        #expect(throws: ControlClient.Failure.self) { _ = try ControlClient.reload(socket: otherPath) }
    }
}
