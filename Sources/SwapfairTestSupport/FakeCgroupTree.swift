import Foundation

/// A directory shaped like a cgroup v2 hierarchy, for tests and benchmarks that must not touch the
/// real one. It proves parsing and arithmetic only: no kernel enforces anything here.
public final class FakeCgroupTree {
    public let path: String

    /// Creates a root with the usual controllers in a fresh directory under `base` (default: the
    /// temporary directory).
    public init(controllers: String = "cpuset cpu io memory hugetlb pids rdma misc", base: String? = nil) throws {
        let parent = base ?? FileManager.default.temporaryDirectory.path
        path = parent + "/swapfair-fake-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        try write("", "cgroup.controllers", controllers)
        try write("", "cgroup.subtree_control", "")
        try write("", "cgroup.procs", "1\n")
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    /// The figures a fake group reports.
    public struct Group {
        public var current: UInt64
        public var swap: UInt64 = 0
        public var active: UInt64? = nil
        public var pressureTotal: UInt64 = 0
        public var avg10: Double = 0
        public var populated = true
        public var high = "max"
        public var low = "0"
        public var max = "max"
        public var swapMax = "max"
        public var procs: [Int32] = [4242]
        public var refaults: UInt64 = 0
        public var highEvents: UInt64 = 0

        public init(current: UInt64) { self.current = current }
    }

    /// Creates (or rewrites) a group's files.
    public func add(_ relative: String, _ g: Group) throws {
        let dir = path + "/" + relative
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        // Parents get the controller files a real kernel would show.
        var parent = Self.parent(relative)
        while !parent.isEmpty {
            if !FileManager.default.fileExists(atPath: path + "/" + parent + "/cgroup.controllers") {
                try write(parent, "cgroup.controllers", "io memory pids")
                try write(parent, "cgroup.subtree_control", "io memory")
            }
            parent = Self.parent(parent)
        }
        try update(relative, g)
    }

    static func parent(_ path: String) -> String {
        path.split(separator: "/").dropLast().joined(separator: "/")
    }

    public func update(_ relative: String, _ g: Group) throws {
        let active = g.active ?? g.current * 3 / 4
        let anon = g.current * 9 / 10
        try write(relative, "cgroup.controllers", "io memory pids")
        if !FileManager.default.fileExists(atPath: path + "/" + relative + "/cgroup.subtree_control") {
            try write(relative, "cgroup.subtree_control", "")
        }
        try write(relative, "cgroup.procs", g.procs.map(String.init).joined(separator: "\n") + (g.procs.isEmpty ? "" : "\n"))
        try write(relative, "cgroup.events", "populated \(g.populated ? 1 : 0)\nfrozen 0\n")
        try write(relative, "memory.current", "\(g.current)\n")
        try write(relative, "memory.swap.current", "\(g.swap)\n")
        try write(relative, "memory.stat", """
            anon \(anon)
            file \(g.current - anon)
            kernel 1048576
            shmem 0
            active_anon \(active * 9 / 10)
            inactive_anon \(anon - active * 9 / 10)
            active_file \(active - active * 9 / 10)
            inactive_file \(g.current - anon - (active - active * 9 / 10))
            workingset_refault_anon \(g.refaults)
            workingset_refault_file 0
            pgfault 1000
            pgmajfault 3

            """)
        try write(relative, "memory.pressure", """
            some avg10=\(String(format: "%.2f", g.avg10)) avg60=0.00 avg300=0.00 total=\(g.pressureTotal)
            full avg10=0.00 avg60=0.00 avg300=0.00 total=\(g.pressureTotal / 2)

            """)
        try write(relative, "memory.events", "low 0\nhigh \(g.highEvents)\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n")
        for (file, value) in [("memory.high", g.high), ("memory.low", g.low), ("memory.max", g.max),
                              ("memory.swap.max", g.swapMax)] where !exists(relative, file) {
            try write(relative, file, value + "\n")
        }
        if !exists(relative, "io.weight") { try write(relative, "io.weight", "default 100\n") }
    }

    public func exists(_ relative: String, _ file: String) -> Bool {
        FileManager.default.fileExists(atPath: path + "/" + relative + "/" + file)
    }

    public func write(_ relative: String, _ file: String, _ text: String) throws {
        let dir = relative.isEmpty ? path : path + "/" + relative
        try text.write(toFile: dir + "/" + file, atomically: false, encoding: .utf8)
    }

    public func read(_ relative: String, _ file: String) throws -> String {
        try String(contentsOfFile: path + "/" + relative + "/" + file, encoding: .utf8)
    }

    public func remove(_ relative: String) throws {
        try FileManager.default.removeItem(atPath: path + "/" + relative)
    }
}
