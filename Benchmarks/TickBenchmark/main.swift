import Foundation
import Logging
import SwapfairCgroup
import SwapfairConfig
import SwapfairDaemon
import SwapfairPolicy
import SwapfairTestSupport

// The cost of one control tick, observe + plan (and the whole tick with its writes), for 10, 100
// and 1,000 VMs on a fake cgroup tree. The tree is ordinary files, so this measures swapfair's own
// work (system calls, parsing, arithmetic), not the kernel's cost of producing memory.stat.

func seconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// CPU time of the whole process (every thread), for the parallel reads' true cost.
func cpuSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

func percentile(_ xs: [Double], _ p: Double) -> Double {
    let s = xs.sorted()
    return s[min(s.count - 1, Int(Double(s.count - 1) * p))]
}

let counts = CommandLine.arguments.dropFirst().compactMap { Int($0) }
let sizes = counts.isEmpty ? [10, 100, 1000] : counts
let facts = HostFacts(memoryTotal: 1 << 40, swapTotal: 1 << 40)
var logger = Logger(label: "bench")
logger.logLevel = .critical

print("swapfair tick benchmark: fake cgroup tree on tmpfs, \(ProcessInfo.processInfo.activeProcessorCount) CPUs")
print("goal: observe + plan under 5 ms for 1,000 VMs")
print("above \(ControlLoop.parallelReadThreshold) VMs the groups are read on every CPU; CPU ms counts all threads\n")
var rows: [[String]] = []
for n in sizes {
    // tmpfs, like cgroupfs an in-memory file system, so disk file system costs do not count.
    let tree = try FakeCgroupTree(base: FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : nil)
    var text = "[host]\nmemory_budget = \"50%\"\nswap_budget = \"50%\"\n"
    for i in 0..<n {
        var g = FakeCgroupTree.Group(current: UInt64(256 + i % 512) << 20)
        g.pressureTotal = UInt64(i * 1000)
        try tree.add("machine.slice/vm\(i).scope", g)
        text += "[[vm]]\nname = \"vm\(i)\"\nweight = \(100 + i % 300)\ncgroup = \"machine.slice/vm\(i).scope\"\n"
    }
    let config = try ConfigLoader.parse(text, source: "bench", facts: facts)
    let loop = ControlLoop(configuration: config, facts: facts, root: CgroupRoot(path: tree.path), logger: logger, now: 0)
    loop.tick(now: 0)  // adopt every group and open its files
    let iterations = n >= 1000 ? 60 : 200
    var observePlan: [Double] = []
    var observePlanCPU: [Double] = []
    var planOnly: [Double] = []
    var full: [Double] = []
    for k in 1...iterations {
        let t0 = seconds(), c0 = cpuSeconds()
        _ = loop.dryRun(now: Double(k))
        observePlan.append(seconds() - t0)
        observePlanCPU.append(cpuSeconds() - c0)
        let t1 = seconds()
        loop.tick(now: Double(k) + 0.5)
        full.append(seconds() - t1)
    }
    // The policy alone, on the observations of the last tick.
    let inputs = (0..<n).map { i in
        VMInput(config.entitlement(config.vms[i], facts),
                VMObservation(time: 1, memoryCurrent: UInt64(256 + i % 512) << 20, activeBytes: 1 << 28))
    }
    let planner = Planner(config.hostPolicy(facts))
    for _ in 0..<iterations {
        let t = seconds()
        _ = planner.plan(inputs)
        planOnly.append(seconds() - t)
    }
    func ms(_ x: Double) -> String { String(format: "%.3f", x * 1000) }
    rows.append(["\(n)", ms(percentile(observePlan, 0.5)), ms(percentile(observePlan, 0.9)),
                 String(format: "%.1f", percentile(observePlan, 0.5) * 1e6 / Double(n)),
                 ms(percentile(observePlanCPU, 0.5)),
                 ms(percentile(planOnly, 0.5)), ms(percentile(full, 0.5)), "\(iterations)"])
}
print(StatusTable.table(["VMS", "OBSERVE+PLAN p50 ms", "p90 ms", "µs/VM", "CPU ms (all threads)", "PLAN ONLY ms",
                         "FULL TICK ms", "RUNS"], rows),
      terminator: "")
if let last = rows.last, last[0] == "1000", let p50 = Double(last[1]) {
    print(p50 < 5 ? "\n1,000 VMs: \(last[1]) ms, within the 5 ms goal" : "\n1,000 VMs: \(last[1]) ms, OVER the 5 ms goal")
}
