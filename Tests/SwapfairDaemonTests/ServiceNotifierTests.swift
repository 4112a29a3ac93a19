import Foundation
import Testing
import SwapfairSys

#if canImport(Glibc)
import Glibc
#endif

@Suite struct ServiceNotifierTests {
    /// A datagram socket standing in for systemd's notification socket.
    func listener(_ path: String) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in path.utf8.enumerated() { raw[i] = b } }
        _ = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        var tv = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        return fd
    }

    func receive(_ fd: Int32) -> String {
        var buf = [UInt8](repeating: 0, count: 4096)
        let n = recv(fd, &buf, buf.count, 0)
        return n > 0 ? String(decoding: buf[0..<n], as: UTF8.self) : ""
    }

    @Test func readinessStatusWatchdogAndStoppingReachTheServiceManager() {
        let path = "/tmp/swapfair-notify-\(UUID().uuidString.prefix(8))"
        let fd = listener(path)
        defer { close(fd); unlink(path) }
        let n = ServiceNotifier(environment: ["NOTIFY_SOCKET": path, "WATCHDOG_USEC": "15000000"])
        #expect(n.isActive && n.watchdogSeconds == 15)
        n.ready(status: "3 of 3 VMs managed")
        #expect(receive(fd) == "READY=1\nSTATUS=3 of 3 VMs managed")
        n.watchdog()
        #expect(receive(fd) == "WATCHDOG=1")
        n.stopping()
        #expect(receive(fd) == "STOPPING=1")
    }

    @Test func withoutASocketNothingIsSent() {
        let n = ServiceNotifier(environment: [:])
        #expect(!n.isActive && n.watchdogSeconds == nil)
        #expect(!n.send("READY=1"))
    }

    @Test func aWatchdogMeantForAnotherProcessIsIgnored() {
        #expect(ServiceNotifier(environment: ["WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"]).watchdogSeconds == nil)
    }
}
