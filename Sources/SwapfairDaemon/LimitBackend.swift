import SwapfairCgroup
import SwapfairConfig
import SwapfairSys
import SwapfairSystemd

#if canImport(Glibc)
import Glibc
#endif

/// One knob to set.
public struct KnobChange: Sendable, Equatable {
    public var knob: Knob
    public var value: LimitValue

    public init(_ knob: Knob, _ value: LimitValue) {
        self.knob = knob
        self.value = value
    }
}

public enum BackendError: Error, Sendable, CustomStringConvertible {
    case cgroup(CgroupError)
    case systemd(SystemdError)

    /// The VM's group or unit is gone.
    public var isVanished: Bool {
        switch self {
        case .cgroup(.vanished): true
        case .systemd(let e): e.isNoSuchUnit
        default: false
        }
    }

    public var description: String {
        switch self {
        case .cgroup(let e): "\(e)"
        case .systemd(let e): "\(e)"
        }
    }
}

/// Where settings go and how processes are placed: the cgroup files themselves, or systemd, which
/// owns the tree on a systemd host and would undo writes made behind its back.
public protocol LimitBackend: Sendable {
    /// "cgroupfs" or "systemd".
    var name: String { get }
    /// Whether a write is a call to another process that may be slow (so it is never made inline).
    var writesMayBlock: Bool { get }
    /// Applies the changes to a VM's group, in order.
    func write(_ changes: [KnobChange], to group: Cgroup) throws(BackendError)
    /// Puts a running process into `scope` (a pid-file VM).
    func place(pid: Int32, vm: String, in scope: Cgroup) throws(BackendError)
    /// Whether swapfaird removes a pid-file VM's scope when its process is gone (systemd removes
    /// its own scopes).
    var removesEmptyScopes: Bool { get }
    /// The group `vm-NAME.scope` in the slice, where pid-file VMs are placed.
    func scope(for vm: String, slice: String, root: CgroupRoot) -> Cgroup
    /// The unit a VM with no location of its own runs as; nil: swapfaird creates its scope group
    /// and whoever starts the VM puts it there.
    func defaultUnit(for vm: String) -> String?
}

/// Writes the cgroup files directly (no systemd, or a tree delegated to swapfair).
public struct CgroupfsBackend: LimitBackend {
    public init() {}
    public var name: String { "cgroupfs" }
    public var writesMayBlock: Bool { false }

    public func write(_ changes: [KnobChange], to group: Cgroup) throws(BackendError) {
        for c in changes {
            do throws(CgroupError) { try group.set(c.knob, c.value) } catch { throw .cgroup(error) }
        }
    }

    public var removesEmptyScopes: Bool { true }

    public func place(pid: Int32, vm: String, in scope: Cgroup) throws(BackendError) {
        do throws(CgroupError) {
            if !scope.exists { try scope.create() }
            try scope.move(pid: pid)
        } catch { throw .cgroup(error) }
    }

    public func scope(for vm: String, slice: String, root: CgroupRoot) -> Cgroup {
        root.group("\(slice)/vm-\(vm).scope")
    }

    public func defaultUnit(for vm: String) -> String? { nil }
}

/// Sets limits with `SetUnitProperties` (runtime) so that `systemctl show`, `daemon-reload` and
/// unit restarts agree with swapfair, and places processes with `StartTransientUnit` scopes in the
/// slice. Groups that are not units (inside a delegated subtree) are written directly.
public struct SystemdBackend: LimitBackend {
    public let bus: SystemdBus
    /// How long `place` waits for systemd to have moved the process.
    public var placementTimeout: Double = 5

    public init(bus: SystemdBus) { self.bus = bus }
    public var name: String { "systemd" }
    public var writesMayBlock: Bool { true }

    static func property(_ c: KnobChange) -> UnitProperty {
        // systemd's "infinity" is UInt64.max for every one of these.
        let v = c.value.bytes ?? .max
        switch c.knob {
        case .memoryLow: return UnitProperty("MemoryLow", .uint64(v))
        case .memoryHigh: return UnitProperty("MemoryHigh", .uint64(v))
        case .memoryMax: return UnitProperty("MemoryMax", .uint64(v))
        case .memorySwapMax: return UnitProperty("MemorySwapMax", .uint64(v))
        case .ioWeight: return UnitProperty("IOWeight", .uint64(v))
        }
    }

    public func write(_ changes: [KnobChange], to group: Cgroup) throws(BackendError) {
        guard let unit = UnitNames.unit(ofCgroup: group.relativePath) else {
            try CgroupfsBackend().write(changes, to: group)
            return
        }
        // systemd writes memory.high itself, and the kernel reclaims down to the new value inside
        // that write: PID 1 would be stuck for as long as that takes. Reclaiming first, from this
        // thread (memory.reclaim is an action, not a setting systemd owns), leaves it little to do.
        // It only saves systemd work: where it fails (no memory.reclaim before 5.19, EAGAIN when
        // short) systemd's write reclaims the rest, as it would without it.
        for c in changes where c.knob == .memoryHigh || c.knob == .memoryMax {
            if let target = c.value.bytes,
               let current = try? group.read("memory.current").split(separator: "\n").first.flatMap({ UInt64($0) }),
               current > target {
                try? group.write("memory.reclaim", "\(current - target)")
            }
        }
        do throws(SystemdError) {
            try bus.setUnitProperties(unit, runtime: true, changes.map(Self.property))
        } catch {
            throw .systemd(error)
        }
    }

    public var removesEmptyScopes: Bool { false }

    public func place(pid: Int32, vm: String, in scope: Cgroup) throws(BackendError) {
        guard let unit = UnitNames.unit(ofCgroup: scope.relativePath),
              let slice = scope.relativePath.split(separator: "/").dropLast().last.map(String.init) else {
            try CgroupfsBackend().place(pid: pid, vm: vm, in: scope)
            return
        }
        do throws(SystemdError) {
            do {
                try bus.startTransientUnit(unit, [
                    UnitProperty("Description", .string("swapfair VM \(vm)")),
                    UnitProperty("Slice", .string(slice)),
                    UnitProperty("PIDs", .uint32Array([UInt32(bitPattern: pid)])),
                    UnitProperty("MemoryAccounting", .bool(true)),
                    UnitProperty("IOAccounting", .bool(true)),
                ])
            } catch where error.isUnitExists {
                try bus.attachProcesses([UInt32(bitPattern: pid)], to: unit)
            }
        } catch {
            throw .systemd(error)
        }
        // The job runs after the call returns; the process is placed once its cgroup says so.
        let deadline = monotonicSeconds() + placementTimeout
        while monotonicSeconds() < deadline {
            if (try? CgroupRoot.cgroupOf(pid: pid)) == scope.relativePath { return }
            usleep(20_000)
        }
        throw .cgroup(.vanished(cgroup: "\(scope) (systemd did not move process \(pid) within \(placementTimeout)s)"))
    }

    public func scope(for vm: String, slice: String, root: CgroupRoot) -> Cgroup {
        root.group("\(UnitNames.slicePath(slice))/vm-\(vm).scope")
    }

    /// systemd makes a unit's group when it starts; the VM template's instance is the natural home.
    public func defaultUnit(for vm: String) -> String? { "swapfair-vm@\(vm).service" }
}

/// Chooses the backend: systemd when it is the init system and answers on the bus, else cgroupfs.
public enum BackendChoice {
    public struct Outcome {
        public let backend: any LimitBackend
        /// One line for the log: which backend and why.
        public let reason: String
    }

    public static func choose(_ wanted: BackendSetting, cgroupRoot: String, isFakeRoot: Bool) throws(BackendError) -> Outcome {
        switch wanted {
        case .cgroupfs:
            return Outcome(backend: CgroupfsBackend(), reason: "backend = \"cgroupfs\" in the configuration")
        case .systemd:
            do throws(SystemdError) {
                let bus = try SystemdBus.connect()
                return Outcome(backend: SystemdBackend(bus: bus),
                               reason: "backend = \"systemd\" in the configuration (systemd \(bus.version), \(bus.route))")
            } catch { throw .systemd(error) }
        case .auto:
            guard SystemdBus.isBooted() else {
                return Outcome(backend: CgroupfsBackend(), reason: "systemd is not the init system")
            }
            if isFakeRoot { return Outcome(backend: CgroupfsBackend(), reason: "the cgroup root is a test tree") }
            if cgroupRoot != "/sys/fs/cgroup" {
                return Outcome(backend: CgroupfsBackend(), reason: "the cgroup root \(cgroupRoot) is not systemd's")
            }
            do throws(SystemdError) {
                let bus = try SystemdBus.connect()
                return Outcome(backend: SystemdBackend(bus: bus), reason: "systemd \(bus.version) is the init system (\(bus.route))")
            } catch {
                return Outcome(backend: CgroupfsBackend(), reason: "systemd is the init system but does not answer: \(error)")
            }
        }
    }
}
