import Foundation
import Testing
import SwapfairTestSupport
@testable import SwapfairCgroup

@Suite struct CgroupTreeTests {
    @Test func readsAGroupsFigures() throws {
        let tree = try FakeCgroupTree()
        var g = FakeCgroupTree.Group(current: 512 << 20)
        g.swap = 64 << 20
        g.pressureTotal = 777
        try tree.add("machine.slice/vm1.scope", g)
        let root = try CgroupRoot.open(tree.path, requireCgroup2FileSystem: false)
        let vm = root.group("machine.slice/vm1.scope")
        #expect(try vm.memoryCurrent() == 512 << 20)
        #expect(try vm.swapCurrent() == 64 << 20)
        #expect(try vm.memoryPressure().some.total == 777)
        #expect(try vm.limit(.memoryHigh) == .max)
        #expect(try vm.ioWeight() == 100)
        #expect(try vm.isPopulated())
        #expect(try vm.processes() == [4242])
        #expect(try vm.memoryEvents().high == 0)
    }

    @Test func writesKnobsInTheKernelsFormat() throws {
        let tree = try FakeCgroupTree()
        try tree.add("s/vm", FakeCgroupTree.Group(current: 1))
        let vm = CgroupRoot(path: tree.path).group("s/vm")
        try vm.set(.memoryHigh, .bytes(1 << 30))
        try vm.set(.memorySwapMax, .max)
        try vm.set(.ioWeight, .bytes(300))
        #expect(try tree.read("s/vm", "memory.high") == "1073741824")
        #expect(try tree.read("s/vm", "memory.swap.max") == "max")
        #expect(try tree.read("s/vm", "io.weight") == "default 300")
    }

    @Test func aDirectoryWithoutCgroupFilesIsNotCgroupV2() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("notcg-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(throws: CgroupError.notCgroupV2(root: dir, detail: "no cgroup.controllers file")) {
            try CgroupRoot.open(dir, requireCgroup2FileSystem: false)
        }
        #expect(throws: CgroupError.self) { try CgroupRoot.open(dir + "/missing", requireCgroup2FileSystem: false) }
    }

    @Test func aTmpDirectoryIsNotACgroup2FileSystem() throws {
        let tree = try FakeCgroupTree()
        #expect(throws: CgroupError.self) { try CgroupRoot.open(tree.path, requireCgroup2FileSystem: true) }
    }

    @Test func aMissingKnobFileMeansTheControllerIsMissing() throws {
        let tree = try FakeCgroupTree()
        try FileManager.default.createDirectory(atPath: tree.path + "/bare", withIntermediateDirectories: true)
        let g = CgroupRoot(path: tree.path).group("bare")
        #expect(throws: CgroupError.controllerMissing(controller: "memory", cgroup: "bare")) { try g.memoryCurrent() }
        #expect(throws: CgroupError.controllerMissing(controller: "io", cgroup: "bare")) { try g.ioStat() }
    }

    @Test func aRemovedGroupIsReportedAsVanished() throws {
        let tree = try FakeCgroupTree()
        try tree.add("s/gone", FakeCgroupTree.Group(current: 1))
        let g = CgroupRoot(path: tree.path).group("s/gone")
        let files = CgroupStatFiles(g)
        #expect(try files.number(.memoryCurrent) == 1)
        try tree.remove("s/gone")
        #expect(throws: CgroupError.vanished(cgroup: "s/gone")) { try g.memoryCurrent() }
        #expect(throws: CgroupError.vanished(cgroup: "s/gone")) { try g.set(.memoryHigh, .max) }
        // An already open file of a removed group: on a fake tree the data stays readable, so
        // opening a fresh one is what must fail.
        let fresh = CgroupStatFiles(g)
        #expect(throws: CgroupError.vanished(cgroup: "s/gone")) { try fresh.read(.memoryStat) }
    }

    @Test func malformedFilesAreNamedWithTheirGroup() throws {
        let tree = try FakeCgroupTree()
        try tree.add("s/bad", FakeCgroupTree.Group(current: 1))
        try tree.write("s/bad", "memory.current", "lots\n")
        try tree.write("s/bad", "memory.stat", "anon 1\nbroken line here\n")
        let g = CgroupRoot(path: tree.path).group("s/bad")
        #expect(throws: CgroupError.malformed(file: "s/bad/memory.current", line: 1, text: "lots\n")) { try g.memoryCurrent() }
        #expect(throws: CgroupError.malformed(file: "s/bad/memory.stat", line: 2, text: "broken line here")) {
            try g.memoryStat()
        }
    }

    @Test func createEnablesControllersOnTheWayDown() throws {
        let tree = try FakeCgroupTree()
        let g = CgroupRoot(path: tree.path).group("swapfair.slice/vm-a.scope")
        // A fake parent has no kernel to fill in cgroup.controllers; give the new slice one after mkdir.
        try g.parent!.create()
        try tree.write("swapfair.slice", "cgroup.controllers", "io memory")
        try tree.write("swapfair.slice", "cgroup.subtree_control", "")
        try g.create()
        #expect(g.exists)
        let rootControl = try tree.read("", "cgroup.subtree_control")
        #expect(rootControl.contains("memory") || rootControl.contains("io"))
        #expect(try tree.read("swapfair.slice", "cgroup.subtree_control").hasPrefix("+"))
    }

    @Test func enablingAControllerTheGroupLacksIsAClearError() throws {
        let tree = try FakeCgroupTree(controllers: "cpu pids")
        let g = CgroupRoot(path: tree.path).group("x")
        #expect(throws: CgroupError.controllerMissing(controller: "memory", cgroup: "/")) { try g.create() }
    }

    @Test func theCgroupOfAProcessComesFromProc() throws {
        let fakeProc = try FakeCgroupTree()
        try FileManager.default.createDirectory(atPath: fakeProc.path + "/77", withIntermediateDirectories: true)
        try "0::/machine.slice/vm-x.scope\n".write(toFile: fakeProc.path + "/77/cgroup", atomically: false, encoding: .utf8)
        #expect(try CgroupRoot.cgroupOf(pid: 77, proc: fakeProc.path) == "machine.slice/vm-x.scope")
        try "12:memory:/foo\n".write(toFile: fakeProc.path + "/77/cgroup", atomically: false, encoding: .utf8)
        #expect(throws: CgroupError.self) { try CgroupRoot.cgroupOf(pid: 77, proc: fakeProc.path) }
    }

    @Test func errorsReadWell() {
        let e = CgroupError.notCgroupV2(root: "/sys/fs/cgroup", detail: "file system type 0x1021994, not cgroup2")
        #expect(e.description.contains("not a cgroup v2 hierarchy"))
        #expect(CgroupError.controllerMissing(controller: "memory", cgroup: "a/b").description.contains("memory controller"))
    }
}
