import SwapfairSys
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The knobs swapfair writes.
public enum Knob: String, Sendable, CaseIterable {
    case memoryLow = "memory.low"
    case memoryHigh = "memory.high"
    case memoryMax = "memory.max"
    case memorySwapMax = "memory.swap.max"
    case ioWeight = "io.weight"

    /// The controller that provides the knob.
    public var controller: String { rawValue.hasPrefix("io.") ? "io" : "memory" }
}

/// A cgroup v2 hierarchy rooted at a directory: the real `/sys/fs/cgroup`, or a directory that a
/// test fills with files of the same shape.
public struct CgroupRoot: Sendable, Equatable {
    public let path: String

    /// `CGROUP2_SUPER_MAGIC` from `<linux/magic.h>`.
    static let cgroup2Magic = 0x6367_7270

    /// Opens a hierarchy. With `requireCgroup2FileSystem` the directory must be a mounted cgroup2
    /// file system (the daemon's case); without it any directory with `cgroup.controllers` will do.
    public static func open(_ path: String, requireCgroup2FileSystem: Bool) throws(CgroupError) -> CgroupRoot {
        guard FileAccess.isDirectory(path) else { throw .notCgroupV2(root: path, detail: "no such directory") }
        if requireCgroup2FileSystem {
            let type: Int
            do { type = try FileAccess.fileSystemType(path) } catch { throw .system(error) }
            if type != cgroup2Magic {
                let hint = FileAccess.exists(path + "/unified/cgroup.controllers")
                    ? "it is a cgroup v1 or hybrid layout; the v2 part at \(path)/unified has no memory controller"
                    : "file system type 0x\(String(type, radix: 16)), not cgroup2"
                throw .notCgroupV2(root: path, detail: hint)
            }
        }
        guard FileAccess.exists(path + "/cgroup.controllers") else {
            throw .notCgroupV2(root: path, detail: "no cgroup.controllers file")
        }
        return CgroupRoot(path: path)
    }

    public init(path: String) { self.path = path }

    /// The group at a path relative to the root ("" is the root itself).
    public func group(_ relative: String) -> Cgroup { Cgroup(root: self, relativePath: relative) }

    /// Controllers the kernel offers at the root.
    public func controllers() throws(CgroupError) -> Set<String> { try group("").controllers() }

    /// The cgroup a process is in, from `/proc/PID/cgroup` (the "0::" line), relative to the root.
    public static func cgroupOf(pid: Int32, proc: String = "/proc") throws(CgroupError) -> String {
        let text: String
        do { text = try FileAccess.read("\(proc)/\(pid)/cgroup") } catch { throw .system(error) }
        for line in text.split(separator: "\n") where line.hasPrefix("0::") {
            return NameRulesLite.trimSlashes(String(line.dropFirst(3)))
        }
        throw .malformed(file: "\(proc)/\(pid)/cgroup", line: 1, text: "no cgroup v2 (0::) line")
    }
}

enum NameRulesLite {
    static func trimSlashes(_ s: String) -> String {
        s.split(separator: "/", omittingEmptySubsequences: true).joined(separator: "/")
    }
}

/// One cgroup: typed reads of its statistics and writes of its knobs.
public struct Cgroup: Sendable, Equatable, CustomStringConvertible {
    public let root: CgroupRoot
    /// Path relative to the root, without leading or trailing "/".
    public let relativePath: String

    public init(root: CgroupRoot, relativePath: String) {
        self.root = root
        self.relativePath = NameRulesLite.trimSlashes(relativePath)
    }

    public var path: String { relativePath.isEmpty ? root.path : root.path + "/" + relativePath }
    public var description: String { relativePath.isEmpty ? "/" : relativePath }
    public var parent: Cgroup? {
        guard !relativePath.isEmpty else { return nil }
        let parts = relativePath.split(separator: "/").dropLast()
        return Cgroup(root: root, relativePath: parts.joined(separator: "/"))
    }
    public func child(_ name: String) -> Cgroup {
        Cgroup(root: root, relativePath: relativePath.isEmpty ? name : relativePath + "/" + name)
    }

    public var exists: Bool { FileAccess.isDirectory(path) }

    // MARK: reading

    /// Reads one interface file, mapping "file missing" to the right cause.
    public func read(_ file: String) throws(CgroupError) -> String {
        do {
            return try FileAccess.read(path + "/" + file)
        } catch {
            throw classify(error, file: file, controller: Self.controller(of: file))
        }
    }

    public func controllers() throws(CgroupError) -> Set<String> {
        Set(try read("cgroup.controllers").split(whereSeparator: \.isWhitespace).map(String.init))
    }

    public func subtreeControl() throws(CgroupError) -> Set<String> {
        Set(try read("cgroup.subtree_control").split(whereSeparator: \.isWhitespace).map(String.init))
    }

    public func processes() throws(CgroupError) -> [Int32] {
        try read("cgroup.procs").split(separator: "\n").compactMap { Int32($0) }
    }

    /// `populated` from `cgroup.events`: whether any process is in this group or below.
    public func isPopulated() throws(CgroupError) -> Bool {
        let events = try MemoryStat.parse(try read("cgroup.events"), file: "\(self)/cgroup.events")
        return events["populated"] != 0
    }

    public func memoryCurrent() throws(CgroupError) -> UInt64 { try number("memory.current") }
    public func swapCurrent() throws(CgroupError) -> UInt64 { try number("memory.swap.current") }
    public func memoryStat() throws(CgroupError) -> MemoryStat {
        try MemoryStat.parse(try read("memory.stat"), file: "\(self)/memory.stat")
    }
    public func memoryEvents() throws(CgroupError) -> MemoryEvents {
        try MemoryEvents.parse(try read("memory.events"), file: "\(self)/memory.events")
    }
    public func memoryPressure() throws(CgroupError) -> Pressure {
        try Pressure.parse(try read("memory.pressure"), file: "\(self)/memory.pressure")
    }
    public func ioStat() throws(CgroupError) -> IOStat {
        try IOStat.parse(try read("io.stat"), file: "\(self)/io.stat")
    }

    /// A limit knob's current value.
    public func limit(_ knob: Knob) throws(CgroupError) -> LimitValue {
        try LimitValue.parse(try read(knob.rawValue), file: "\(self)/\(knob.rawValue)")
    }

    /// `io.weight`'s default weight ("default 100" on the first line).
    public func ioWeight() throws(CgroupError) -> UInt64? {
        let text = try read(Knob.ioWeight.rawValue)
        for line in text.split(separator: "\n") where line.hasPrefix("default ") {
            return UInt64(line.dropFirst(8))
        }
        return nil
    }

    func number(_ file: String) throws(CgroupError) -> UInt64 {
        let t = try read(file)
        guard let v = UInt64(t.split(separator: "\n").first ?? "") else {
            throw .malformed(file: "\(self)/\(file)", line: 1, text: String(t.prefix(80)))
        }
        return v
    }

    // MARK: writing

    /// Writes a knob. Memory limits are written with O_NONBLOCK so that lowering `memory.high` below
    /// usage does not make the writer reclaim synchronously, where the kernel supports that.
    public func set(_ knob: Knob, _ value: LimitValue) throws(CgroupError) {
        let text: String
        switch knob {
        case .ioWeight: text = "default \(value)"
        default: text = value.description
        }
        try write(knob.rawValue, text, nonBlocking: knob.controller == "memory")
    }

    public func write(_ file: String, _ text: String, nonBlocking: Bool = false) throws(CgroupError) {
        do {
            try FileAccess.write(path + "/" + file, text, nonBlocking: nonBlocking)
        } catch {
            throw classify(error, file: file, controller: Self.controller(of: file))
        }
    }

    /// Creates this group (and missing parents) and enables `controllers` on the way down, so the
    /// group gets their knobs. The corresponding C function is `mkdir`.
    public func create(enabling controllers: [String] = ["memory", "io"]) throws(CgroupError) {
        if let parent, !parent.exists { try parent.create(enabling: controllers) }
        if let parent { try parent.enableForChildren(controllers) }
        do { try FileAccess.makeDirectory(path) } catch { throw classify(error, file: "", controller: nil) }
    }

    /// Adds controllers to `cgroup.subtree_control` (those not already there). A controller the
    /// group itself lacks is reported as missing rather than written.
    public func enableForChildren(_ controllers: [String]) throws(CgroupError) {
        let have = try self.controllers()
        let enabled = try subtreeControl()
        for c in controllers where !enabled.contains(c) {
            guard have.contains(c) else { throw .controllerMissing(controller: c, cgroup: description) }
            do {
                try FileAccess.write(path + "/cgroup.subtree_control", "+\(c)")
            } catch {
                if error.errno == .resourceBusy {
                    throw .busy(cgroup: description, operation: "enabling \(c) for child groups (the group has processes of its own)")
                }
                throw classify(error, file: "cgroup.subtree_control", controller: nil)
            }
        }
    }

    /// Moves a process (all its threads) into this group.
    public func move(pid: Int32) throws(CgroupError) {
        do {
            try FileAccess.write(path + "/cgroup.procs", String(pid))
        } catch {
            if error.errno == .noSuchProcess {
                throw .system(SysError("move process \(pid) into", description, .noSuchProcess))
            }
            throw classify(error, file: "cgroup.procs", controller: nil)
        }
    }

    /// Removes the (empty) group. The corresponding C function is `rmdir`.
    public func remove() throws(CgroupError) {
        do { try FileAccess.removeDirectory(path) } catch {
            if error.errno == .noSuchFileOrDirectory { throw .vanished(cgroup: description) }
            if error.errno == .resourceBusy { throw .busy(cgroup: description, operation: "removing") }
            throw .system(error)
        }
    }

    // MARK: errors

    static func controller(of file: String) -> String? {
        guard let dot = file.firstIndex(of: ".") else { return nil }
        let prefix = String(file[..<dot])
        return prefix == "cgroup" ? nil : prefix
    }

    /// ENOENT on a file of an existing group means the controller's files are not there; on a group
    /// that is gone it means the group vanished.
    func classify(_ error: SysError, file: String, controller: String?) -> CgroupError {
        switch error.errno {
        case .noSuchFileOrDirectory:
            if !exists { return .vanished(cgroup: description) }
            if let controller { return .controllerMissing(controller: controller, cgroup: description) }
            return .system(error)
        case .resourceBusy: return .busy(cgroup: description, operation: "writing \(file)")
        case .permissionDenied, .notPermitted: return .permissionDenied(path: error.path)
        default: return .system(error)
        }
    }
}
