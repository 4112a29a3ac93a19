import Foundation
import SwapfairPolicy

/// Reads and validates swapfair's TOML configuration. Every problem is reported with its line and
/// key; a configuration with any problem is refused whole.
public enum ConfigLoader {
    public static let defaultPath = "/etc/swapfair/swapfair.toml"

    static let hostKeys = ["memory_budget", "swap_budget", "interval", "pressure_target", "idle_tax",
                           "minimum_size", "swap_headroom", "cgroup_root", "slice", "socket", "socket_group", "activity",
                            "activity_period", "activity_slow", "activity_fast", "state_dir", "backend",
                            "nbd_dir", "swap_queue_depth", "host_swap_size", "host_swap_device", "write_elision", "elision_spare",
                            "shared_map_dir", "reclaim_shift_max", "double_paging_window", "swap_prefetch", "metrics_textfile"]
    static let vmKeys = ["name", "weight", "reservation", "limit", "swap_weight", "swap_limit", "io_weight",
                         "cgroup", "pidfile", "unit", "swap_device", "balloon_qmp", "guest_memory"]
    static let swapDeviceKeys = ["size", "weight", "reservation", "limit", "users", "groups", "ublk"]

    /// Loads a file. `facts` resolves percentages for the cross-checks (reservations within the budget).
    public static func load(path: String, facts: HostFacts) throws(ConfigError) -> SwapfairConfiguration {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            let reason = FileManager.default.fileExists(atPath: path) ? "cannot be read" : "does not exist"
            throw ConfigError(file: path, problems: [ConfigProblem(line: nil, key: nil, "the file \(reason)")])
        }
        return try parse(text, source: path, facts: facts)
    }

    public static func parse(_ text: String, source: String, facts: HostFacts) throws(ConfigError)
        -> SwapfairConfiguration
    {
        let root: TOMLTable
        do {
            root = try TOML.parse(text)
        } catch {
            throw ConfigError(file: source, problems: [
                ConfigProblem(line: error.line, key: nil, "column \(error.column): \(error.message)")
            ])
        }
        var v = Validator(facts: facts)
        let config = v.configuration(root, source: source)
        if !v.problems.isEmpty { throw ConfigError(file: source, problems: v.problems) }
        return config
    }
}

/// Walks the TOML tree, collecting problems instead of stopping at the first.
struct Validator {
    let facts: HostFacts
    var problems: [ConfigProblem] = []

    init(facts: HostFacts) { self.facts = facts }

    mutating func problem(_ line: Int?, _ key: String?, _ message: String) {
        problems.append(ConfigProblem(line: line, key: key, message))
    }

    mutating func configuration(_ root: TOMLTable, source: String) -> SwapfairConfiguration {
        var host = HostConfig()
        var vms: [VMConfig] = []
        for entry in root.entries {
            switch (entry.key, entry.value) {
            case ("host", .table(let t)): host = hostConfig(t)
            case ("host", _): problem(entry.line, "host", "must be a table: write [host]")
            case ("vm", .array(let items)):
                for (n, item) in items.enumerated() {
                    guard case .table(let t) = item else {
                        problem(entry.line, "vm", "must be tables: write one [[vm]] per VM"); continue
                    }
                    if let vm = vmConfig(t, index: n + 1, defaultsFrom: host) { vms.append(vm) }
                }
            case ("vm", .table):
                problem(entry.line, "vm", "write [[vm]] (two brackets): there is one table per VM")
            default:
                problem(entry.line, entry.key, "unknown section" + suggestion(entry.key, ["host", "vm"]))
            }
        }
        crossCheck(host, vms)
        return SwapfairConfiguration(host: host, vms: vms, source: source)
    }

    // MARK: [host]

    mutating func hostConfig(_ t: TOMLTable) -> HostConfig {
        var h = HostConfig()
        for e in t.entries {
            let key = "host.\(e.key)"
            switch e.key {
            case "memory_budget": if let s = size(e, key) { h.memoryBudget = s }
            case "swap_budget": if let s = size(e, key) { h.swapBudget = s }
            case "minimum_size": if let s = size(e, key) { h.minimumSize = s }
            case "swap_headroom": if let s = size(e, key) { h.swapHeadroom = s }
            case "interval":
                if let d = duration(e, key) {
                    if d < 0.05 || d > 600 { problem(e.line, key, "must be between 50ms and 10m, got \(d)s") }
                    else { h.interval = d }
                }
            case "pressure_target":
                if let f = fraction(e, key) {
                    if f <= 0 || f >= 1 { problem(e.line, key, "must be above 0% and below 100%") }
                    else { h.pressureTarget = f }
                }
            case "idle_tax":
                if let f = fraction(e, key) {
                    if f < 0 || f > 0.99 { problem(e.line, key, "must be from 0 to 0.99 (0% to 99%); ESX's default is 0.75") }
                    else { h.idleTax = f }
                }
            case "cgroup_root":
                if let s = string(e, key) {
                    if !s.hasPrefix("/") { problem(e.line, key, "must be an absolute path") } else { h.cgroupRoot = s }
                }
            case "slice":
                if let s = string(e, key) {
                    if let why = NameRules.sliceProblem(s) { problem(e.line, key, why) } else { h.slice = s }
                }
            case "socket":
                if let s = string(e, key) {
                    if !s.hasPrefix("/") { problem(e.line, key, "must be an absolute path") } else { h.socket = s }
                }
            case "socket_group": if let s = string(e, key) { h.socketGroup = s }
            case "state_dir", "nbd_dir":
                if let s = string(e, key) {
                    if !s.hasPrefix("/") { problem(e.line, key, "must be an absolute path") }
                    else if e.key == "state_dir" { h.stateDir = s } else { h.nbdDir = s }
                }
            case "swap_queue_depth": if let d = integer(e, key, in: 1...4096) { h.swapQueueDepth = Int(d) }
            case "host_swap_device":
                if let s = string(e, key) {
                    if !s.hasPrefix("/") { problem(e.line, key, "must be an absolute path to a block device") }
                    else if h.hostSwapSize != nil { problem(e.line, key, "give one of host_swap_size and host_swap_device") }
                    else { h.hostSwapDevice = s }
                }
            case "write_elision":
                if case .boolean(let b) = e.value { h.writeElision = b } else { problem(e.line, key, "must be true or false, got \(e.value.kindName)") }
            case "elision_spare":
                if let s = size(e, key) {
                    if case .percent = s { problem(e.line, key, "must be a size such as \"256M\", not a percentage") }
                    else { let b = s.resolve(against: 0); if b % 4096 != 0 { problem(e.line, key, "must be a multiple of 4K") } else { h.elisionSpare = b } }
                }
            case "shared_map_dir":
                if let s = string(e, key) {
                    if !s.hasPrefix("/") { problem(e.line, key, "must be an absolute path") } else { h.sharedMapDir = s }
                }
            case "metrics_textfile":
                if let s = string(e, key) {
                    if !s.hasPrefix("/") || s.hasSuffix("/") { problem(e.line, key, "must be an absolute path to a file") }
                    else { h.metricsTextfile = s }
                }
            case "reclaim_shift_max":
                if let s = size(e, key) {
                    if case .percent(let p) = s, p > 0, p <= 50 { h.reclaimShiftMax = p / 100 }
                    else { problem(e.line, key, "must be a percentage of the guest's RAM, more than 0% and at most 50%, such as \"25%\"") }
                }
            case "double_paging_window":
                if let d = duration(e, key) {
                    if d < 0.01 || d > 60 { problem(e.line, key, "must be between 10ms and 60s, got \(d)s") }
                    else { h.doublePagingWindow = d }
                }
            case "swap_prefetch":
                // A rate: how much swapped memory a second may be read back ahead of faults.
                if let s = size(e, key) {
                    if case .percent = s { problem(e.line, key, "must be a size per second such as \"128M\" (or 0 for none), not a percentage") }
                    else { h.swapPrefetch = s.resolve(against: 0) }
                }
            case "host_swap_size":
                if let s = size(e, key) {
                    let b = s.resolve(against: 0)
                    if case .percent = s { problem(e.line, key, "must be a size such as \"2G\", not a percentage") }
                    else if b < 1 << 20 || b % 4096 != 0 { problem(e.line, key, "must be at least 1M and a multiple of 4K") }
                    else if h.hostSwapDevice != nil { problem(e.line, key, "give one of host_swap_size and host_swap_device") }
                    else { h.hostSwapSize = b }
                }
            case "backend":
                if let s = string(e, key) {
                    if let b = BackendSetting(rawValue: s) { h.backend = b } else {
                        problem(e.line, key, "must be one of " + BackendSetting.allCases.map { "\"\($0.rawValue)\"" }
                            .joined(separator: ", ") + didYouMean(s, BackendSetting.allCases.map(\.rawValue)))
                    }
                }
            case "activity":
                if let s = string(e, key) {
                    if let a = ActivitySource(rawValue: s) { h.activity = a } else {
                        problem(e.line, key, "must be one of " + ActivitySource.allCases.map { "\"\($0.rawValue)\"" }
                            .joined(separator: ", ") + didYouMean(s, ActivitySource.allCases.map(\.rawValue)))
                    }
                }
            case "activity_period", "activity_slow", "activity_fast":
                if let d = duration(e, key) {
                    if d < 0.5 || d > 3600 { problem(e.line, key, "must be between 500ms and 1h, got \(d)s") }
                    else if e.key == "activity_period" { h.activityPeriod = d }
                    else if e.key == "activity_slow" { h.activitySlow = d }
                    else { h.activityFast = d }
                }
            default: problem(e.line, key, "unknown key" + suggestion(e.key, ConfigLoader.hostKeys))
            }
        }
        if h.writeElision && h.hostSwapDevice == nil && h.hostSwapSize == nil {
            problem(t.line, "host.write_elision", "needs the host's swap device served by swapfaird (host_swap_device)")
        }
        if case .bytes(0) = h.memoryBudget { problem(t.line, "host.memory_budget", "must be more than 0") }
        if case .percent(0) = h.memoryBudget { problem(t.line, "host.memory_budget", "must be more than 0%") }
        let budget = h.memoryBudget.resolve(against: facts.memoryTotal)
        if budget > facts.memoryTotal {
            problem(t.line, "host.memory_budget",
                    "\(Format.bytes(budget)) is more than this host's RAM (\(Format.bytes(facts.memoryTotal)))")
        }
        return h
    }

    // MARK: [[vm]]

    mutating func vmConfig(_ t: TOMLTable, index: Int, defaultsFrom host: HostConfig) -> VMConfig? {
        let before = problems.count
        var label = "vm[\(index)]"
        var name: String?
        if let e = t["name"] {
            if let s = string(e, "\(label).name") {
                if let why = NameRules.vmNameProblem(s) { problem(e.line, "\(label).name", why) } else { name = s }
                label = "vm[\(index)] \"\(s)\""
            }
        } else {
            problem(t.line, label, "missing key \"name\"")
        }
        var weight: UInt64 = 100, swapWeight: UInt64?, ioWeight: UInt64?
        var reservation = SizeSpec.bytes(0)
        var limit: SizeSpec?, swapLimit: SizeSpec?
        var locations: [(VMLocation, Int)] = []
        var swapDevice: SwapDeviceConfig?
        var balloonQMP: String?, guestMemory: UInt64?
        for e in t.entries {
            let key = "\(label).\(e.key)"
            switch e.key {
            case "name": break
            case "weight": if let w = integer(e, key, in: 1...10_000) { weight = w }
            case "swap_weight": if let w = integer(e, key, in: 1...10_000) { swapWeight = w }
            case "io_weight": if let w = integer(e, key, in: 1...10_000) { ioWeight = w }
            case "reservation": if let s = size(e, key) { reservation = s }
            case "limit": if let s = size(e, key) { limit = s }
            case "swap_limit": if let s = size(e, key) { swapLimit = s }
            case "cgroup":
                if let s = string(e, key) {
                    if let why = NameRules.cgroupPathProblem(s) { problem(e.line, key, why) }
                    else { locations.append((.cgroup(NameRules.normalizedCgroupPath(s)), e.line)) }
                }
            case "pidfile":
                if let s = string(e, key) {
                    if !s.hasPrefix("/") { problem(e.line, key, "must be an absolute path") }
                    else { locations.append((.pidFile(s), e.line)) }
                }
            case "unit":
                if let s = string(e, key) {
                    if let why = NameRules.unitProblem(s) { problem(e.line, key, why) }
                    else { locations.append((.unit(s), e.line)) }
                }
            case "swap_device": swapDevice = swapDeviceConfig(e, key)
            case "balloon_qmp":
                if let s = string(e, key) {
                    if !s.hasPrefix("/") { problem(e.line, key, "must be an absolute path to the VM's QMP socket") }
                    else { balloonQMP = s }
                }
            case "guest_memory":
                if let s = size(e, key) {
                    let b = s.resolve(against: 0)
                    if case .percent = s { problem(e.line, key, "must be a size such as \"4G\", not a percentage") }
                    else if b < 16 << 20 || b % 4096 != 0 { problem(e.line, key, "must be at least 16M and a multiple of 4K") }
                    else { guestMemory = b }
                }
            default: problem(e.line, key, "unknown key" + suggestion(e.key, ConfigLoader.vmKeys))
            }
        }
        if locations.count > 1 {
            problem(locations[1].1, label, "give at most one of cgroup, pidfile and unit")
        }
        let (memory, swap) = (host.memoryBudget.resolve(against: facts.memoryTotal),
                              host.swapBudget.resolve(against: facts.swapTotal))
        let r = reservation.resolve(against: memory)
        if let limit {
            let l = limit.resolve(against: memory)
            if l == 0 { problem(t["limit"]?.line ?? t.line, "\(label).limit", "must be more than 0") }
            if r > l {
                problem(t["reservation"]?.line ?? t.line, "\(label).reservation",
                        "\(Format.bytes(r)) is more than the VM's limit (\(Format.bytes(l)))")
            }
        }
        if let swapLimit, swapLimit.resolve(against: swap) > swap {
            problem(t["swap_limit"]?.line ?? t.line, "\(label).swap_limit", "is more than the swap budget")
        }
        if guestMemory != nil && balloonQMP == nil {
            problem(t["guest_memory"]?.line ?? t.line, "\(label).guest_memory", "is for reclaim shifting: give balloon_qmp too")
        }
        if balloonQMP != nil {
            // Shifting acts on the double paging the tracker sees: the guest's swap-outs through
            // its export (and the host's swap, checked once [host] is read).
            if swapDevice == nil {
                problem(t["balloon_qmp"]?.line ?? t.line, "\(label).balloon_qmp",
                        "reclaim shifting needs the VM's swap_device (its guest swap-outs show the double paging)")
            }
        }
        guard let name, problems.count == before else { return nil }
        return VMConfig(name: name, weight: weight, reservation: reservation, limit: limit,
                        swapWeight: swapWeight ?? weight, swapLimit: swapLimit, ioWeight: ioWeight,
                        location: locations.first?.0 ?? .managedScope, swapDevice: swapDevice,
                        balloonQMP: balloonQMP, guestMemory: guestMemory, line: t.line)
    }

    mutating func crossCheck(_ host: HostConfig, _ vms: [VMConfig]) {
        var seen: [String: Int] = [:]
        var cgroups: [String: String] = [:]
        for vm in vms {
            if let first = seen[vm.name] {
                problem(vm.line, "vm \"\(vm.name)\"", "duplicate VM name (first defined on line \(first))")
            } else {
                seen[vm.name] = vm.line
            }
            if case .cgroup(let path) = vm.location {
                if let other = cgroups[path] {
                    problem(vm.line, "vm \"\(vm.name)\".cgroup", "cgroup \(path) is already VM \"\(other)\"'s")
                }
                cgroups[path] = vm.name
            }
        }
        if host.hostSwapDevice == nil && host.hostSwapSize == nil, let vm = vms.first(where: { $0.balloonQMP != nil }) {
            problem(vm.line, "vm \"\(vm.name)\".balloon_qmp",
                    "reclaim shifting needs the host's swap served by swapfaird (host.host_swap_device)")
        }
        let budget = host.memoryBudget.resolve(against: facts.memoryTotal)
        let reserved = vms.reduce(UInt64(0)) { $0 + $1.reservation.resolve(against: budget) }
        if reserved > budget {
            problem(nil, "vm.reservation",
                    "the reservations add up to \(Format.bytes(reserved)), more than host.memory_budget "
                    + "(\(Format.bytes(budget)))")
        }
    }

    /// `swap_device = { size = "4G", weight = 200, reservation = "500 iops", limit = "40M/s", users = ["qemu"], ublk = true }`.
    mutating func swapDeviceConfig(_ e: TOMLEntry, _ key: String) -> SwapDeviceConfig? {
        guard case .table(let t) = e.value else {
            problem(e.line, key, "must be a table such as { size = \"4G\" }")
            return nil
        }
        var volumeSize: UInt64?
        var d = SwapDeviceConfig(size: 0)
        for f in t.entries {
            let k = "\(key).\(f.key)"
            switch f.key {
            case "size":
                if let s = size(f, k) {
                    let b = s.resolve(against: 0)
                    if case .percent = s { problem(f.line, k, "must be a size such as \"4G\", not a percentage") }
                    else if b < 1 << 20 || b % 4096 != 0 { problem(f.line, k, "must be at least 1M and a multiple of 4K") }
                    else { volumeSize = b }
                }
            case "weight": if let w = integer(f, k, in: 1...10_000) { d.weight = w }
            case "reservation": d.reservation = rate(f, k)
            case "limit": d.limit = rate(f, k)
            case "users", "groups":
                guard case .array(let items) = f.value else { problem(f.line, k, "must be a list such as [\"qemu\"]"); continue }
                let names = items.compactMap { v -> String? in
                    switch v {
                    case .string(let s): return s
                    case .integer(let i) where i >= 0: return String(i)
                    default: problem(f.line, k, "must hold names or numbers"); return nil
                    }
                }
                if f.key == "users" { d.users = names } else { d.groups = names }
            case "ublk":
                if case .boolean(let b) = f.value { d.ublk = b } else { problem(f.line, k, "must be true or false, got \(f.value.kindName)") }
            default: problem(f.line, k, "unknown key" + suggestion(f.key, ConfigLoader.swapDeviceKeys))
            }
        }
        guard let volumeSize else {
            if t["size"] == nil { problem(e.line, key, "missing key \"size\"") }
            return nil
        }
        d.size = volumeSize
        if let r = d.reservation, let l = d.limit {
            if r.isIOPS != l.isIOPS { problem(e.line, key, "reservation and limit must both be IOPS or both bytes/s") }
            else if case .iops(let a) = r, case .iops(let b) = l, a > b { problem(e.line, key, "reservation is above the limit") }
            else if case .bytesPerSecond(let a) = r, case .bytesPerSecond(let b) = l, a > b {
                problem(e.line, key, "reservation is above the limit")
            }
        }
        return d
    }

    /// "500 iops", "500iops" or "40M/s".
    mutating func rate(_ e: TOMLEntry, _ key: String) -> IORate? {
        guard case .string(let raw) = e.value else {
            problem(e.line, key, "must be a rate such as \"500 iops\" or \"40M/s\"")
            return nil
        }
        let s = raw.trimmingWhitespace().lowercased()
        if s.hasSuffix("iops"), let v = Double(s.dropLast(4).trimmingWhitespace()), v > 0 { return .iops(v) }
        if s.hasSuffix("/s"), let size = try? SizeParser.parse(String(s.dropLast(2))), case .bytes(let b) = size, b > 0 {
            return .bytesPerSecond(b)
        }
        problem(e.line, key, "\"\(raw)\" is not a rate; write e.g. \"500 iops\" or \"40M/s\"")
        return nil
    }

    // MARK: value readers

    mutating func string(_ e: TOMLEntry, _ key: String) -> String? {
        if case .string(let s) = e.value { return s }
        problem(e.line, key, "must be a string, got \(e.value.kindName)")
        return nil
    }

    mutating func integer(_ e: TOMLEntry, _ key: String, in range: ClosedRange<UInt64>) -> UInt64? {
        guard case .integer(let i) = e.value else {
            problem(e.line, key, "must be a whole number from \(range.lowerBound) to \(range.upperBound), got \(e.value.kindName)")
            return nil
        }
        guard i >= 0, range.contains(UInt64(i)) else {
            problem(e.line, key, "must be from \(range.lowerBound) to \(range.upperBound), got \(i)")
            return nil
        }
        return UInt64(i)
    }

    mutating func size(_ e: TOMLEntry, _ key: String) -> SizeSpec? {
        switch e.value {
        case .integer(let i) where i >= 0: return .bytes(UInt64(i))
        case .integer(let i): problem(e.line, key, "must not be negative, got \(i)")
        case .string(let s):
            do { return try SizeParser.parse(s) } catch { problem(e.line, key, error.description) }
        default: problem(e.line, key, "must be a size such as \"512M\", \"4G\" or \"25%\", got \(e.value.kindName)")
        }
        return nil
    }

    mutating func duration(_ e: TOMLEntry, _ key: String) -> Double? {
        switch e.value {
        case .integer(let i) where i > 0: return Double(i)
        case .float(let f) where f > 0: return f
        case .string(let s): if let d = DurationParser.parse(s) { return d }
        default: break
        }
        problem(e.line, key, "must be a duration such as \"1s\" or \"500ms\"")
        return nil
    }

    /// A fraction written as 0.01 or as "1%".
    mutating func fraction(_ e: TOMLEntry, _ key: String) -> Double? {
        switch e.value {
        case .float(let f): return f
        case .integer(let i) where i == 0 || i == 1: return Double(i)
        case .string(let s) where s.hasSuffix("%"):
            if let p = Double(s.dropLast().trimmingWhitespace()) { return p / 100 }
        default: break
        }
        problem(e.line, key, "must be a fraction such as 0.75 or a percentage such as \"75%\"")
        return nil
    }

    func didYouMean(_ word: String, _ known: [String]) -> String {
        let hint = suggestion(word, known)
        return hint.hasPrefix(" (") ? hint : ""
    }

    func suggestion(_ key: String, _ known: [String]) -> String {
        let best = known.map { ($0, editDistance($0, key)) }.min { $0.1 < $1.1 }
        if let best, best.1 <= max(2, key.count / 3) { return " (did you mean \"\(best.0)\"?)" }
        return "; known keys: " + known.joined(separator: ", ")
    }
}

/// Levenshtein distance, for "did you mean" hints.
func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a), b = Array(b)
    if a.isEmpty || b.isEmpty { return max(a.count, b.count) }
    var row = Array(0...b.count)
    for i in 1...a.count {
        var prev = row[0]
        row[0] = i
        for j in 1...b.count {
            let cur = row[j]
            row[j] = min(row[j] + 1, row[j - 1] + 1, prev + (a[i - 1] == b[j - 1] ? 0 : 1))
            prev = cur
        }
    }
    return row[b.count]
}

extension TOMLValue {
    var kindName: String {
        switch self {
        case .string(let s): return "the string \"\(s)\""
        case .integer(let i): return "the integer \(i)"
        case .float(let f): return "the number \(f)"
        case .boolean(let b): return "\(b)"
        case .array: return "an array"
        case .table: return "a table"
        }
    }
}
