import SwapfairPolicy

/// A size as written in the configuration: bytes, or a percentage of something the host knows.
public enum SizeSpec: Sendable, Equatable, CustomStringConvertible {
    case bytes(UInt64)
    case percent(Double)

    public func resolve(against whole: UInt64) -> UInt64 {
        switch self {
        case .bytes(let b): return b
        case .percent(let p): return UInt64(Double(whole) * p / 100)
        }
    }

    public var description: String {
        switch self {
        case .bytes(let b): return Format.bytes(b)
        case .percent(let p): return "\(p)%"
        }
    }
}

/// How the daemon finds a VM's processes.
public enum VMLocation: Sendable, Equatable, CustomStringConvertible {
    /// The VM lives in `<slice>/vm-NAME.scope`, a group swapfaird creates; whoever starts the VM
    /// puts its processes there.
    case managedScope
    /// An existing cgroup, adopted as it is (path relative to the cgroup root), e.g. a libvirt scope.
    case cgroup(String)
    /// A pid file: swapfaird moves that process into `<slice>/vm-NAME.scope`.
    case pidFile(String)
    /// A systemd unit: its cgroup is adopted.
    case unit(String)

    public var description: String {
        switch self {
        case .managedScope: return "managed scope"
        case .cgroup(let p): return "cgroup \(p)"
        case .pidFile(let p): return "pid file \(p)"
        case .unit(let u): return "unit \(u)"
        }
    }
}

/// An I/O rate: operations per second or bytes per second.
public enum IORate: Sendable, Equatable, CustomStringConvertible {
    case iops(Double)
    case bytesPerSecond(UInt64)
    public var description: String {
        switch self {
        case .iops(let v): return "\(Int(v)) IOPS"
        case .bytesPerSecond(let b): return "\(Format.bytes(b))/s"
        }
    }
    var isIOPS: Bool { if case .iops = self { return true } else { return false } }
}

/// A VM's swap device: its volume and its share of the swap engine (`swap_device = { ... }`).
public struct SwapDeviceConfig: Sendable, Equatable {
    public var size: UInt64
    /// Relative share of the engine when VMs compete (1–10000).
    public var weight: UInt64 = 100
    public var reservation: IORate?
    public var limit: IORate?
    /// Users and groups (names or numbers) allowed to connect besides root.
    public var users: [String] = []
    public var groups: [String] = []
    /// Also served as a ublk block device (`/dev/ublkbN`), owned by the first of `users` and
    /// `groups`, beside the NBD export.
    public var ublk = false
}

/// One `[[vm]]` table.
public struct VMConfig: Sendable, Equatable {
    public var name: String
    public var weight: UInt64
    public var reservation: SizeSpec
    public var limit: SizeSpec?
    public var swapWeight: UInt64
    public var swapLimit: SizeSpec?
    public var ioWeight: UInt64?
    public var location: VMLocation
    public var swapDevice: SwapDeviceConfig?
    /// The guest's balloon, for reclaim shifting: the VM's QMP socket (`balloon_qmp`).
    public var balloonQMP: String?
    /// The guest's RAM (`guest_memory`): what the balloon gives back in full. Nil: the balloon's
    /// size when swapfaird first sees it with nothing taken.
    public var guestMemory: UInt64?
    /// Line of the `[[vm]]` header, for messages.
    public var line: Int
}

/// The `[host]` table.
public struct HostConfig: Sendable, Equatable {
    public var memoryBudget: SizeSpec = .percent(75)
    public var swapBudget: SizeSpec = .percent(100)
    /// Control interval in seconds.
    public var interval: Double = 1
    /// Share of time stalled that the feedback aims at (0.01 = 1%).
    public var pressureTarget: Double = 0.01
    public var idleTax: Double = 0.75
    public var minimumSize: SizeSpec = .bytes(64 << 20)
    public var swapHeadroom: SizeSpec = .bytes(64 << 20)
    public var cgroupRoot: String = "/sys/fs/cgroup"
    public var slice: String = "swapfair.slice"
    public var socket: String = "/run/swapfair/swapfaird.sock"
    /// Group (name or number) also allowed on the control socket besides root.
    public var socketGroup: String?
    /// How the active fraction is measured.
    public var activity: ActivitySource = .auto
    /// Seconds between MGLRU samples.
    public var activityPeriod: Double = 2
    /// Time constants of the slow and fast moving averages of the active fraction, in seconds.
    public var activitySlow: Double = 30
    public var activityFast: Double = 5
    /// Where swap volumes live (`<state_dir>/volumes/NAME.img`).
    public var stateDir: String = "/var/lib/swapfair"
    /// Where the NBD sockets are (`<nbd_dir>/NAME.sock`).
    public var nbdDir: String = "/run/swapfair/nbd"
    /// Requests the swap engine keeps in flight at once.
    public var swapQueueDepth: Int = 64
    /// A swap device for the host itself, served by swapfaird over ublk from
    /// `<state_dir>/host-swap.img` (`swapon` it): nil for none.
    public var hostSwapSize: UInt64?
    /// Or a block device (a partition) to serve as the host's swap device over ublk, whole: what a
    /// host should use (see the README on why a file on a journaling file system can deadlock).
    public var hostSwapDevice: String?
    /// Write elision: a guest swap-out of a page the host just read back from its swap becomes a
    /// reference to the host's block instead of a second write (needs the host's swap device).
    public var writeElision = false
    /// How much of the host swap volume is kept spare for redirects of shared blocks (the swap
    /// device is that much smaller than its volume): nil for an eighth of the volume.
    public var elisionSpare: UInt64?
    /// Where the shared-block tables live: a tmpfs, so that they survive the daemon but need no
    /// journal to change.
    public var sharedMapDir: String = "/run/swapfair/shared"
    /// How limits are set and VMs placed.
    public var backend: BackendSetting = .auto
    /// The most of a guest's RAM its balloon may take under reclaim shifting (0.25 = 25%).
    public var reclaimShiftMax: Double = 0.25
    /// How long after the host read a page back from its swap a guest swap-out of the same content
    /// still counts as double paging, in seconds (write elision matches whatever its ring holds).
    public var doublePagingWindow: Double = 10
    /// Swap-in prefetch: the most of a VM's swapped memory read back ahead of its faults per
    /// second, when it stalls below its limit (a VM waking to a working set in swap); 0 for none.
    public var swapPrefetch: UInt64 = 64 << 20
    /// Where the metrics are written each tick, whole, in Prometheus's text format (for
    /// node_exporter's textfile collector: a `.prom` file in its directory); nil for nowhere.
    public var metricsTextfile: String?

    public init() {}
}

/// How limits are set and VMs placed.
public enum BackendSetting: String, Sendable, Equatable, CaseIterable {
    /// systemd when it is the init system and answers, else cgroupfs.
    case auto
    /// Through systemd's manager (sd-bus); the daemon refuses to start without it.
    case systemd
    /// The cgroup files directly.
    case cgroupfs
}

/// Where the active fraction comes from.
public enum ActivitySource: String, Sendable, Equatable, CaseIterable {
    /// MGLRU sampling where the kernel has it, else the LRU lists.
    case auto
    /// MGLRU page-table sampling (`/sys/kernel/debug/lru_gen`); the daemon refuses to start without it.
    case lruGen = "lru_gen"
    /// The active/inactive LRU lists of `memory.stat`, raised by refaults.
    case lru
}

/// What the host has, for resolving percentages.
public struct HostFacts: Sendable, Equatable {
    public var memoryTotal: UInt64
    public var swapTotal: UInt64
    public init(memoryTotal: UInt64, swapTotal: UInt64) {
        self.memoryTotal = memoryTotal
        self.swapTotal = swapTotal
    }
}

/// A validated configuration.
public struct SwapfairConfiguration: Sendable, Equatable {
    public var host: HostConfig
    public var vms: [VMConfig]
    /// Where it came from ("/etc/swapfair/swapfair.toml", or "embedded default").
    public var source: String

    /// The memory and swap budgets for this host.
    public func budgets(_ facts: HostFacts) -> (memory: UInt64, swap: UInt64) {
        (host.memoryBudget.resolve(against: facts.memoryTotal), host.swapBudget.resolve(against: facts.swapTotal))
    }

    /// The policy's view of the host section.
    public func hostPolicy(_ facts: HostFacts) -> HostPolicy {
        let (memory, swap) = budgets(facts)
        var feedback = FeedbackParameters()
        feedback.target = host.pressureTarget
        var policy = HostPolicy(memoryBudget: memory, swapBudget: swap, idleTax: host.idleTax,
                                minimumSize: host.minimumSize.resolve(against: memory),
                                swapHeadroom: host.swapHeadroom.resolve(against: swap), feedback: feedback,
                                activity: ActivityEstimator(slowTimeConstant: host.activitySlow,
                                                            fastTimeConstant: host.activityFast))
        policy.prefetchRate = host.swapPrefetch
        return policy
    }

    /// The policy's view of one VM. Percentages of a VM's sizes are of the host's budgets.
    public func entitlement(_ vm: VMConfig, _ facts: HostFacts) -> VMEntitlement {
        let (memory, swap) = budgets(facts)
        return VMEntitlement(name: vm.name, weight: Double(vm.weight),
                             reservation: vm.reservation.resolve(against: memory),
                             limit: vm.limit?.resolve(against: memory), swapWeight: Double(vm.swapWeight),
                             swapLimit: vm.swapLimit?.resolve(against: swap), ioWeight: vm.ioWeight)
    }
}
