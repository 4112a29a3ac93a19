/// What a reload changes: the difference between the configuration in force and a new, valid
/// one, split into what can take effect live and what cannot (which keeps its old value, named by
/// its key). Pure: the daemon applies `effective` and reports the lines.
public struct ConfigChange: Sendable, Equatable {
    /// The configuration to put in force: the new one, with every refused key at its old value.
    public var effective: SwapfairConfiguration
    /// VMs the new file adds, removes, and changes (with the keys that changed).
    public var added: [String] = []
    public var removed: [String] = []
    public var changed: [(vm: String, keys: [String])] = []
    /// `[host]` keys applied live.
    public var hostKeys: [String] = []
    /// Keys that cannot change while the daemon runs, each with why; their old values stay.
    public var refused: [String] = []

    public var isEmpty: Bool { added.isEmpty && removed.isEmpty && changed.isEmpty && hostKeys.isEmpty && refused.isEmpty }

    /// One line a change, as the reload's log and `swapfairctl reload` show them.
    public var lines: [String] {
        added.map { "vm \($0): added" } + removed.map { "vm \($0): removed" }
            + changed.map { "vm \($0.vm): \($0.keys.joined(separator: ", ")) changed" }
            + hostKeys.map { "host.\($0) changed" }
    }

    public static func == (a: ConfigChange, b: ConfigChange) -> Bool {
        a.effective == b.effective && a.added == b.added && a.removed == b.removed && a.hostKeys == b.hostKeys
            && a.refused == b.refused && a.changed.map(\.vm) == b.changed.map(\.vm) && a.changed.map(\.keys) == b.changed.map(\.keys)
    }

    /// A `[host]` key: its name in the file, whether the daemon can take a new value live, and how
    /// to compare and keep it.
    struct HostKey {
        let name: String
        let live: Bool
        let differs: (HostConfig, HostConfig) -> Bool
        let keepOld: (inout HostConfig, HostConfig) -> Void

        init<T: Equatable>(_ name: String, _ path: WritableKeyPath<HostConfig, T>, live: Bool) {
            self.name = name
            self.live = live
            differs = { $0[keyPath: path] != $1[keyPath: path] }
            keepOld = { new, old in new[keyPath: path] = old[keyPath: path] }
        }
    }

    /// Policy figures take effect at the next tick; what names a file, a socket, a device or how
    /// the daemon was put together at start does not.
    static var hostKeys: [HostKey] {
        [
            HostKey("memory_budget", \.memoryBudget, live: true),
            HostKey("swap_budget", \.swapBudget, live: true),
            HostKey("interval", \.interval, live: true),
            HostKey("pressure_target", \.pressureTarget, live: true),
            HostKey("idle_tax", \.idleTax, live: true),
            HostKey("minimum_size", \.minimumSize, live: true),
            HostKey("swap_headroom", \.swapHeadroom, live: true),
            HostKey("activity_slow", \.activitySlow, live: true),
            HostKey("activity_fast", \.activityFast, live: true),
            HostKey("reclaim_shift_max", \.reclaimShiftMax, live: true),
            HostKey("swap_prefetch", \.swapPrefetch, live: true),
            HostKey("metrics_textfile", \.metricsTextfile, live: true),
            HostKey("cgroup_root", \.cgroupRoot, live: false),
            HostKey("slice", \.slice, live: false),
            HostKey("socket", \.socket, live: false),
            HostKey("socket_group", \.socketGroup, live: false),
            HostKey("activity", \.activity, live: false),
            HostKey("activity_period", \.activityPeriod, live: false),
            HostKey("state_dir", \.stateDir, live: false),
            HostKey("nbd_dir", \.nbdDir, live: false),
            HostKey("swap_queue_depth", \.swapQueueDepth, live: false),
            HostKey("host_swap_size", \.hostSwapSize, live: false),
            HostKey("host_swap_device", \.hostSwapDevice, live: false),
            HostKey("write_elision", \.writeElision, live: false),
            HostKey("elision_spare", \.elisionSpare, live: false),
            HostKey("shared_map_dir", \.sharedMapDir, live: false),
            HostKey("backend", \.backend, live: false),
            HostKey("double_paging_window", \.doublePagingWindow, live: false),
        ]
    }

    /// The change from `old` (in force) to `new` (valid, just read).
    public init(from old: SwapfairConfiguration, to new: SwapfairConfiguration) {
        effective = new
        for key in Self.hostKeys where key.differs(old.host, new.host) {
            if key.live {
                hostKeys.append(key.name)
            } else {
                refused.append("host.\(key.name): cannot change while the daemon runs (restart it); the old value stays")
                key.keepOld(&effective.host, old.host)
            }
        }
        let before = Dictionary(old.vms.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        let after = Set(new.vms.map(\.name))
        var vms: [VMConfig] = []
        for var vm in new.vms {
            guard let was = before[vm.name] else {
                added.append(vm.name)
                vms.append(vm)
                continue
            }
            var keys: [String] = []
            func note<T: Equatable>(_ key: String, _ path: WritableKeyPath<VMConfig, T>, live: Bool = true, why: String = "") {
                guard was[keyPath: path] != vm[keyPath: path] else { return }
                if live {
                    keys.append(key)
                } else {
                    refused.append("vm \(vm.name): \(key) cannot change while the daemon runs\(why); the old value stays")
                    vm[keyPath: path] = was[keyPath: path]
                }
            }
            note("weight", \.weight)
            note("reservation", \.reservation)
            note("limit", \.limit)
            note("swap_weight", \.swapWeight)
            note("swap_limit", \.swapLimit)
            note("io_weight", \.ioWeight)
            note("location", \.location)
            note("balloon_qmp", \.balloonQMP, live: false, why: " (its balloon's state lives with it)")
            note("guest_memory", \.guestMemory, live: false, why: " (its balloon's state lives with it)")
            switch (was.swapDevice, vm.swapDevice) {
            case (nil, nil):
                break
            case (let a?, let b?):
                var b = b
                func device<T: Equatable>(_ key: String, _ path: WritableKeyPath<SwapDeviceConfig, T>, live: Bool, why: String) {
                    guard a[keyPath: path] != b[keyPath: path] else { return }
                    if live {
                        keys.append("swap_device.\(key)")
                    } else {
                        refused.append("vm \(vm.name): swap_device.\(key) cannot change while the daemon runs (\(why)); the old value stays")
                        b[keyPath: path] = a[keyPath: path]
                    }
                }
                device("weight", \.weight, live: true, why: "")
                device("reservation", \.reservation, live: true, why: "")
                device("limit", \.limit, live: true, why: "")
                device("size", \.size, live: false, why: "its clients know the old size")
                device("users", \.users, live: false, why: "connected clients were let in by the old list")
                device("groups", \.groups, live: false, why: "connected clients were let in by the old list")
                device("ublk", \.ublk, live: false, why: "a block device's openers cannot be told to go")
                vm.swapDevice = b
            case (nil, .some):
                keys.append("swap_device (added)")
            case (.some, nil):
                keys.append("swap_device (removed)")
            }
            if !keys.isEmpty { changed.append((vm.name, keys)) }
            vms.append(vm)
        }
        for vm in old.vms where !after.contains(vm.name) {
            removed.append(vm.name)
        }
        effective.vms = vms
    }

    /// Keeps a VM the new file removes (a removal that cannot be done live): it stays in force as
    /// it was, with `why` among the refusals.
    public mutating func keep(_ vm: VMConfig, because why: String) {
        removed.removeAll { $0 == vm.name }
        refused.append("vm \(vm.name): cannot be removed while the daemon runs (\(why)); it stays")
        effective.vms.append(vm)
    }

    /// Takes back a change of a VM in force that cannot be done live (`key`, as `changed` names
    /// it), with `why` among the refusals; `keep` sets the VM's old value in `effective`.
    public mutating func refuse(vm: String, key: String, because why: String, keep: (inout VMConfig) -> Void) {
        if let i = changed.firstIndex(where: { $0.vm == vm }) {
            changed[i].keys.removeAll { $0 == key }
            if changed[i].keys.isEmpty { changed.remove(at: i) }
        }
        if let i = effective.vms.firstIndex(where: { $0.name == vm }) { keep(&effective.vms[i]) }
        refused.append("vm \(vm): \(why)")
    }

    /// Withdraws a VM the new file adds (an addition that cannot be done live).
    public mutating func withdraw(_ name: String, because why: String) {
        added.removeAll { $0 == name }
        refused.append("vm \(name): cannot be added while the daemon runs (\(why))")
        effective.vms.removeAll { $0.name == name }
    }
}
