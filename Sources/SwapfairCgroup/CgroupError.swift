import SwapfairSys
import SystemPackage

/// Why a cgroup operation failed, in terms a host operator can act on.
public enum CgroupError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The root is not a cgroup v2 (unified) hierarchy.
    case notCgroupV2(root: String, detail: String)
    /// A controller (memory, io) is not available where it is needed.
    case controllerMissing(controller: String, cgroup: String)
    /// The cgroup was removed (the VM exited, or someone removed it).
    case vanished(cgroup: String)
    /// The kernel refused with EBUSY (e.g. enabling a controller on a group with processes in it).
    case busy(cgroup: String, operation: String)
    case permissionDenied(path: String)
    /// A statistics file had a line that could not be read.
    case malformed(file: String, line: Int, text: String)
    case system(SysError)

    public var description: String {
        switch self {
        case .notCgroupV2(let root, let detail):
            return "\(root) is not a cgroup v2 hierarchy (\(detail)); swapfair needs the unified hierarchy "
                + "with the memory controller (boot with systemd.unified_cgroup_hierarchy=1 or mount cgroup2)"
        case .controllerMissing(let c, let g):
            return "the \(c) controller is not available in \(g) (not in its parent's cgroup.subtree_control)"
        case .vanished(let g): return "cgroup \(g) no longer exists"
        case .busy(let g, let op): return "\(op) on cgroup \(g) was refused: device or resource busy"
        case .permissionDenied(let p): return "permission denied on \(p) (swapfaird must run as root)"
        case .malformed(let f, let line, let text): return "\(f) line \(line) is malformed: \"\(text)\""
        case .system(let e): return e.description
        }
    }
}

extension CgroupError {
    /// The file is not there in this kernel or set-up (swap accounting off, PSI off), as opposed to
    /// a read that failed: the first means "not measured here", the second "not known this tick".
    public var isAbsentFile: Bool {
        switch self {
        case .controllerMissing: return true
        case .system(let e): return e.errno == .noSuchFileOrDirectory || e.errno == .notSupported
        default: return false
        }
    }
}
