import Foundation
import Testing
import SwapfairTestSupport

/// The built executables, run as a user would run them.
@Suite struct ExecutableTests {
    var daemon: String { productsDirectory() + "/swapfaird" }
    var ctl: String { productsDirectory() + "/swapfairctl" }

    @Test func theDaemonRefusesAHostWithoutCgroupV2MemoryAndSaysWhy() throws {
        // On a machine with a usable cgroup v2 this is not the case to test.
        let controllers = (try? String(contentsOfFile: "/sys/fs/cgroup/cgroup.controllers", encoding: .utf8)) ?? ""
        try #require(!controllers.contains("memory") || ProcessInfo.processInfo.environment["LAB_GUEST"] == nil)
        if controllers.contains("memory") { return }
        let r = try run(daemon, ["--ticks", "1", "--socket", "/tmp/swapfair-x.sock"])
        #expect(r.status == 1)
        #expect(r.output.contains("cgroup v2"), "\(r.output)")
        #expect(!r.output.contains("Fatal error"))
    }

    /// A host swap device needs ublk; on a kernel without it the daemon says so and what to do.
    @Test func aHostSwapDeviceWithoutUblkIsRefusedClearly() throws {
        if FileManager.default.fileExists(atPath: "/dev/ublk-control") { return }  // the lab tests this case
        let dir = "/tmp/swapfair-ublk-\(UUID().uuidString.prefix(8))"
        let file = dir + ".toml"
        try "[host]\nstate_dir = \"\(dir)\"\nnbd_dir = \"\(dir)/nbd\"\nhost_swap_size = \"64M\"\n"
            .write(toFile: file, atomically: false, encoding: .utf8)
        defer { unlink(file); try? FileManager.default.removeItem(atPath: dir) }
        let r = try run(daemon, ["--config", file, "--swap-only", "--ticks", "1", "--socket", dir + "/ctl.sock"])
        #expect(r.status == 1)
        #expect(r.output.contains("host_swap_size") && r.output.contains("the kernel has no ublk")
                && r.output.contains("modprobe ublk_drv"), "\(r.output)")
        #expect(!r.output.contains("Fatal error"))
    }

    @Test func theDaemonRefusesABadConfigAndNamesTheProblem() throws {
        let file = "/tmp/swapfair-bad-\(UUID().uuidString.prefix(8)).toml"
        try "[[vm]]\nname = \"a\"\nweigth = 3\n".write(toFile: file, atomically: false, encoding: .utf8)
        defer { unlink(file) }
        let r = try run(daemon, ["--config", file])
        #expect(r.status == 1)
        #expect(r.output.contains("\(file):3: vm[1] \"a\".weigth: unknown key (did you mean \"weight\"?)"), "\(r.output)")
        let c = try run(ctl, ["check-config", file])
        #expect(c.status == 1)
        #expect(c.output.contains("did you mean"))
    }

    @Test func theDaemonRunsTicksOnAFakeTreeAndStopsCleanly() throws {
        let tree = try FakeCgroupTree()
        try tree.add("m/a.scope", FakeCgroupTree.Group(current: 3 * GiB))
        try tree.add("m/b.scope", FakeCgroupTree.Group(current: 3 * GiB))
        let file = "/tmp/swapfair-ok-\(UUID().uuidString.prefix(8)).toml"
        try """
            [host]
            memory_budget = "4G"
            interval = "100ms"
            [[vm]]
            name = "a"
            cgroup = "m/a.scope"
            [[vm]]
            name = "b"
            weight = 300
            cgroup = "m/b.scope"
            """.write(toFile: file, atomically: false, encoding: .utf8)
        defer { unlink(file) }
        let sock = "/tmp/swapfair-d-\(UUID().uuidString.prefix(8)).sock"
        let r = try run(daemon, ["--config", file, "--cgroup-root", tree.path, "--allow-fake-root", "--ticks", "3",
                                 "--socket", sock])
        #expect(r.status == 0, "\(r.output)")
        #expect(r.output.contains("starting") && r.output.contains("stopped ticks=3"), "\(r.output)")
        // No systemd here (nor in the plain lab): the cgroup files are written directly, and said so.
        if !FileManager.default.fileExists(atPath: "/run/systemd/system") {
            #expect(r.output.contains("limits are set through cgroupfs: systemd is not the init system"), "\(r.output)")
        }
        let a = UInt64(try tree.read("m/a.scope", "memory.high")) ?? 0
        let b = UInt64(try tree.read("m/b.scope", "memory.high")) ?? 0
        #expect(a + b <= 4 * GiB)
        #expect(b > 2 * a)
        #expect(!FileManager.default.fileExists(atPath: sock))
        // plan changes nothing and prints a table.
        let p = try run(ctl, ["plan", "--config", file, "--cgroup-root", tree.path, "--allow-fake-root"])
        #expect(p.status == 0, "\(p.output)")
        #expect(p.output.contains("ENTITLED") && p.output.contains("nothing is written"))
        #expect(UInt64(try tree.read("m/a.scope", "memory.high")) == a)
    }

    @Test func theSystemdBackendIsRefusedClearlyWhereSystemdDoesNotRun() throws {
        try #require(!FileManager.default.fileExists(atPath: "/run/systemd/system"))
        let tree = try FakeCgroupTree()
        try tree.add("m/a.scope", FakeCgroupTree.Group(current: 1 * GiB))
        let file = "/tmp/swapfair-sd-\(UUID().uuidString.prefix(8)).toml"
        try "[host]\nbackend = \"systemd\"\n[[vm]]\nname = \"a\"\ncgroup = \"m/a.scope\"\n"
            .write(toFile: file, atomically: false, encoding: .utf8)
        defer { unlink(file) }
        let r = try run(daemon, ["--config", file, "--cgroup-root", tree.path, "--allow-fake-root", "--ticks", "1",
                                 "--socket", "/tmp/swapfair-sd-\(UUID().uuidString.prefix(8)).sock"])
        #expect(r.status == 1)
        #expect(r.output.contains("systemd is not the init system"), "\(r.output)")
        // A typo in the setting is a configuration error with a suggestion.
        try "[host]\nbackend = \"systemdd\"\n".write(toFile: file, atomically: false, encoding: .utf8)
        let c = try run(ctl, ["check-config", file])
        #expect(c.status == 1)
        #expect(c.output.contains("host.backend") && c.output.contains("did you mean \"systemd\""), "\(c.output)")
    }

    @Test func sigtermStopsTheDaemonAndLeavesSettingsInPlace() throws {
        let tree = try FakeCgroupTree()
        try tree.add("m/a.scope", FakeCgroupTree.Group(current: 3 * GiB))
        let file = "/tmp/swapfair-t-\(UUID().uuidString.prefix(8)).toml"
        try "[host]\nmemory_budget = \"2G\"\ninterval = \"100ms\"\n[[vm]]\nname = \"a\"\ncgroup = \"m/a.scope\"\n"
            .write(toFile: file, atomically: false, encoding: .utf8)
        defer { unlink(file) }
        let sock = "/tmp/swapfair-s-\(UUID().uuidString.prefix(8)).sock"
        let p = Process()
        p.executableURL = URL(fileURLWithPath: daemon)
        p.arguments = ["--config", file, "--cgroup-root", tree.path, "--allow-fake-root", "--socket", sock]
        let pipe = Pipe()
        p.standardError = pipe
        try p.run()
        // Wait for the socket, then ask for status through the real client.
        var status: Run?
        for _ in 0..<100 {
            usleep(100_000)
            let r = try run(ctl, ["status", "--socket", sock])
            if r.status == 0 { status = r; break }
        }
        #expect(status?.output.contains("MEMORY.HIGH") == true, "\(status?.output ?? "no status")")
        let json = try run(ctl, ["status", "--json", "--socket", sock])
        #expect(json.output.contains("\"memory_high\""))
        let high = try tree.read("m/a.scope", "memory.high")
        p.terminate()  // SIGTERM
        p.waitUntilExit()
        #expect(p.terminationStatus == 0)
        let log = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(log.contains("SIGTERM"))
        #expect(try tree.read("m/a.scope", "memory.high") == high)
    }
}
