import SwapfairCgroup
import SwapfairConfig
import SwapfairSys

/// Finds the cgroup of a configured VM, creating swapfair's own groups where the VM is to live in
/// one (`<slice>/vm-NAME.scope`).
public struct VMLocator: Sendable {
    public let root: CgroupRoot
    public let slice: String
    public let proc: String
    public let backend: any LimitBackend

    public init(root: CgroupRoot, slice: String, proc: String = "/proc", backend: any LimitBackend = CgroupfsBackend()) {
        self.root = root
        self.slice = slice
        self.proc = proc
        self.backend = backend
    }

    public enum Outcome: Sendable, Equatable {
        /// The VM's group; `owned` when swapfaird created it (and may remove it).
        case found(Cgroup, owned: Bool)
        /// Not there (yet); the reason is logged once.
        case absent(String)
    }

    public func scope(for name: String) -> Cgroup { backend.scope(for: name, slice: slice, root: root) }

    public func locate(_ vm: VMConfig) -> Outcome {
        switch vm.location {
        case .managedScope:
            if let unit = backend.defaultUnit(for: vm.name) {
                if let g = findUnit(unit) { return .found(g, owned: false) }
                return .absent("unit \(unit) is not running (no cgroup of that name)")
            }
            let g = scope(for: vm.name)
            if !g.exists {
                do { try g.create() } catch { return .absent("cannot create \(g): \(error)") }
            }
            return .found(g, owned: true)
        case .cgroup(let path):
            let g = root.group(path)
            return g.exists ? .found(g, owned: false) : .absent("cgroup \(path) does not exist")
        case .unit(let unit):
            // Without systemd's bus, a unit's cgroup is found by its name in the tree.
            if let g = findUnit(unit) { return .found(g, owned: false) }
            return .absent("no cgroup named \(unit) under \(root.path)")
        case .pidFile(let file):
            let pid: Int32
            do {
                let text = try FileAccess.read(file)
                guard let p = Int32(text.split(whereSeparator: \.isWhitespace).first ?? ""), p > 0 else {
                    return .absent("pid file \(file) does not hold a process id")
                }
                pid = p
            } catch {
                return .absent("pid file \(file): \(error.errno.message)")
            }
            guard FileAccess.exists("\(proc)/\(pid)") else { return .absent("process \(pid) from \(file) is not running") }
            let g = scope(for: vm.name)
            if (try? CgroupRoot.cgroupOf(pid: pid, proc: proc)) == g.relativePath {
                return .found(g, owned: backend.removesEmptyScopes)
            }
            do throws(BackendError) {
                try backend.place(pid: pid, vm: vm.name, in: g)
                return .found(g, owned: backend.removesEmptyScopes)
            } catch {
                return .absent("cannot move process \(pid) into \(g): \(error)")
            }
        }
    }

    /// Like `locate`, but changes nothing: no group is created and no process is moved. A process
    /// named by a pid file is observed in whatever group it is in now.
    public func locateExisting(_ vm: VMConfig) -> Outcome {
        switch vm.location {
        case .managedScope:
            if let unit = backend.defaultUnit(for: vm.name) {
                return findUnit(unit).map { .found($0, owned: false) } ?? .absent("unit \(unit) is not running")
            }
            let g = scope(for: vm.name)
            return g.exists ? .found(g, owned: true) : .absent("\(g) does not exist")
        case .pidFile(let file):
            guard let text = try? FileAccess.read(file),
                  let pid = Int32(text.split(whereSeparator: \.isWhitespace).first ?? "") else {
                return .absent("pid file \(file) is missing or holds no process id")
            }
            guard let path = try? CgroupRoot.cgroupOf(pid: pid, proc: proc) else {
                return .absent("process \(pid) from \(file) is not running")
            }
            return .found(root.group(path), owned: false)
        case .cgroup, .unit:
            return locate(vm)
        }
    }

    /// Breadth-first search for a directory named like the unit (bounded depth: units sit in slices).
    func findUnit(_ unit: String) -> Cgroup? {
        var level = [root.group("")]
        for _ in 0..<4 {
            var next: [Cgroup] = []
            for g in level {
                guard let names = try? FileAccess.list(g.path) else { continue }
                for n in names where FileAccess.isDirectory(g.path + "/" + n) {
                    if n == unit { return g.child(n) }
                    if n.hasSuffix(".slice") || n.hasSuffix(".scope") || n.hasSuffix(".service") { next.append(g.child(n)) }
                }
            }
            level = next
        }
        return nil
    }
}
