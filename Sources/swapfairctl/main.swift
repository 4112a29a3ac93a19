import ArgumentParser
import Foundation
import Logging
import SwapfairCgroup
import SwapfairConfig
import SwapfairDaemon
import SwapfairPolicy
import SwapfairQMP
import SwapfairSimulation

struct SwapfairCtl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "swapfairctl",
        abstract: "Inspect and check swapfair.",
        subcommands: [Status.self, Metrics.self, Reload.self, CheckConfig.self, Plan.self, Simulate.self, Balloon.self])
}

/// Prints a message and exits with status 1.
func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("swapfairctl: \(message)\n".utf8))
    Foundation.exit(1)
}

func hostFacts() -> HostFacts {
    do { return try HostFactsReader.read() } catch { fail("cannot read /proc/meminfo: \(error)") }
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show each VM's entitlement, limits, use and pressure.")

    @Option(name: .long, help: "Control socket of the running daemon.")
    var socket: String = HostConfig().socket

    @Flag(name: .long, help: "Print the report as JSON.")
    var json = false

    @Flag(name: .long, help: "Show the table again every second, like top (Ctrl-C ends it).")
    var watch = false

    func run() throws {
        guard watch else {
            let report: StatusReport
            do { report = try ControlClient.status(socket: socket) } catch { fail(error.description) }
            print(json ? report.json() : StatusTable.render(report), terminator: json ? "\n" : "")
            return
        }
        // The screen is cleared once; then each frame goes over the last (home, and clear the rest
        // of each line and of the screen), so the table does not flicker.
        print("\u{1B}[2J", terminator: "")
        while true {
            let frame: String
            do {
                let report = try ControlClient.status(socket: socket)
                frame = json ? report.json() + "\n" : StatusTable.render(report)
            } catch {
                frame = "swapfairctl: \(error.description); trying again every second\n"
            }
            print("\u{1B}[H" + frame.replacingOccurrences(of: "\n", with: "\u{1B}[K\n") + "\u{1B}[J", terminator: "")
            fflush(nil)  // every stream: stdout itself is not safe to name under strict concurrency
            usleep(1_000_000)
        }
    }
}

struct Metrics: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the running daemon's metrics in Prometheus's text format.")

    @Option(name: .long, help: "Control socket of the running daemon.")
    var socket: String = HostConfig().socket

    func run() throws {
        do { print(try ControlClient.metrics(socket: socket), terminator: "") } catch { fail(error.description) }
    }
}

struct Reload: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Ask the running daemon to read its configuration again; print what changed or why it was refused.",
        discussion: "Exit status: 0 when the file was applied (or said nothing new), 1 when it was refused, "
            + "2 when the daemon cannot be reached.")

    @Option(name: .long, help: "Control socket of the running daemon.")
    var socket: String = HostConfig().socket

    @Flag(name: .long, help: "Print the outcome as JSON.")
    var json = false

    func run() throws {
        let report: ReloadReport
        do { report = try ControlClient.reload(socket: socket) } catch {
            FileHandle.standardError.write(Data("swapfairctl: \(error.description)\n".utf8))
            Foundation.exit(2)
        }
        print(json ? report.json() : report.text)
        if report.outcome == .refused { Foundation.exit(1) }
    }
}

struct Balloon: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Set a QEMU guest's balloon target through its QMP socket, or show it.",
        discussion: "The guest gives memory back to the host through its balloon driver (virtio-balloon) "
            + "instead of the host swapping it: prints the RAM the guest has, before and after.")

    @Option(name: .long, help: "The VM's QMP socket (QEMU: -qmp unix:PATH,server=on,wait=off).")
    var qmp: String

    @Argument(help: "RAM to leave the guest (e.g. 768M); omit to show it.")
    var target: String?

    @Option(name: .long, help: "Seconds to wait for the guest to reach the target (0: do not wait).")
    var wait: Double = 10

    func run() throws {
        // A QEMU that goes away mid-exchange must end this with a message, not with SIGPIPE.
        signal(SIGPIPE, SIG_IGN)
        let bytes: UInt64?
        if let target {
            guard case .bytes(let b)? = try? SizeParser.parse(target), b > 0 else {
                fail("\(target) is not a size such as 768M or 2G")
            }
            bytes = b
        } else {
            bytes = nil
        }
        do {
            let client = try QMPClient(path: qmp)
            let before = try client.balloonActual()
            guard let bytes else {
                print("guest RAM \(Format.bytes(before))")
                return
            }
            try client.setBalloonTarget(bytes: bytes)
            var actual = before
            let deadline = Date().addingTimeInterval(wait)
            while actual != bytes && Date() < deadline {
                Thread.sleep(forTimeInterval: 0.2)
                actual = try client.balloonActual()
            }
            print("guest RAM \(Format.bytes(before)) → \(Format.bytes(actual)) (target \(Format.bytes(bytes))"
                  + (actual == bytes ? ")" : "; not reached after \(Int(wait)) s)"))
        } catch { fail(error.description) }
    }
}

struct CheckConfig: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-config", abstract: "Validate a configuration file; print what it resolves to.")

    @Argument(help: "The configuration file.")
    var file: String

    func run() throws {
        let facts = hostFacts()
        let c: SwapfairConfiguration
        do { c = try ConfigLoader.load(path: file, facts: facts) } catch {
            print(error.description)
            fail("\(file): \(error.problems.count) problem(s); the daemon would refuse to start")
        }
        let (memory, swap) = c.budgets(facts)
        print("\(file): OK")
        print("memory budget \(Format.bytes(memory)) of \(Format.bytes(facts.memoryTotal)) RAM; "
              + "swap budget \(Format.bytes(swap)) of \(Format.bytes(facts.swapTotal)) swap")
        let rows = c.vms.map { vm -> [String] in
            let e = c.entitlement(vm, facts)
            return [vm.name, "\(vm.weight)", Format.bytes(e.reservation), Format.bytes(e.limit),
                    "\(vm.swapWeight)", Format.bytes(e.swapLimit), vm.ioWeight.map(String.init) ?? "-",
                    "\(vm.location)"]
        }
        print(StatusTable.table(["VM", "WEIGHT", "RESERVED", "LIMIT", "SWAP WEIGHT", "SWAP LIMIT", "IO", "WHERE"],
                                rows), terminator: "")
    }
}

struct Plan: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print what the policy would set for the VMs as they are now, changing nothing.")

    @Option(name: .long, help: "Configuration file (default as for swapfaird).")
    var config: String?

    @Option(name: .long, help: "cgroup v2 root (overrides host.cgroup_root).")
    var cgroupRoot: String?

    @Flag(name: .long, help: "Accept a cgroup root that is not a mounted cgroup2 file system.")
    var allowFakeRoot = false

    func run() throws {
        let facts = hostFacts()
        var c: SwapfairConfiguration
        do { c = try ConfigSource.load(explicit: config, facts: facts) } catch { fail("\n\(error)") }
        if let cgroupRoot { c.host.cgroupRoot = cgroupRoot }
        let root: CgroupRoot
        do { root = try CgroupRoot.open(c.host.cgroupRoot, requireCgroup2FileSystem: !allowFakeRoot) } catch {
            fail("\(error)")
        }
        var logger = Logger(label: "swapfairctl")
        logger.logLevel = .error
        let loop = ControlLoop(configuration: c, facts: facts, root: root, logger: logger, now: 0)
        let plans = loop.dryRun(now: 0)
        let found = Set(plans.map(\.name))
        print("plan for \(c.source) (memory budget \(Format.bytes(loop.planner.host.memoryBudget)), "
              + "swap budget \(Format.bytes(loop.planner.host.swapBudget))); nothing is written")
        print(PlanTable.render(plans), terminator: "")
        for vm in c.vms where !found.contains(vm.name) { print("\(vm.name): not running (\(vm.location))") }
    }
}

struct Simulate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the policy on the embedded default against modelled VMs (no cgroups needed).")

    @Option(name: .long, help: "Ticks to simulate.")
    var ticks = 60

    func run() throws {
        let facts = HostFacts(memoryTotal: 8 << 30, swapTotal: 8 << 30)
        let c: SwapfairConfiguration
        do { c = try ConfigLoader.parse(DefaultConfig.text, source: DefaultConfig.source, facts: facts) } catch {
            fail("\(error)")
        }
        let budget = c.budgets(facts).memory
        // small-a idles after tick 20, small-b is steady, large wants more than the host has.
        let shapes: [(@Sendable (Int) -> UInt64, @Sendable (Int) -> Double)] = [
            ({ _ in budget / 3 }, { t in t < 20 ? 1 : 0.05 }),
            ({ _ in budget / 4 }, { _ in 1 }),
            ({ _ in budget }, { _ in 1 }),
        ]
        var host = SimulatedHost(planner: Planner(c.hostPolicy(facts)), vms: c.vms.enumerated().map { i, vm in
            SimulatedVM(c.entitlement(vm, facts), workingSet: shapes[i % 3].0, activity: shapes[i % 3].1)
        })
        print("modelled host: \(Format.bytes(facts.memoryTotal)) RAM, budget \(Format.bytes(budget)); "
              + "small-a goes idle at tick 20 (a model, not a measurement)")
        var last: [VMPlan] = []
        for t in 0..<ticks {
            last = host.step()
            if t % 10 == 9 || t == ticks - 1 {
                print("\ntick \(t + 1):")
                print(PlanTable.render(last), terminator: "")
            }
        }
    }
}

enum PlanTable {
    static func render(_ plans: [VMPlan]) -> String {
        StatusTable.table(
            ["VM", "DEMAND", "ACTIVE", "UNTAXED", "ENTITLED", "MEMORY.HIGH", "MEMORY.LOW", "SWAP.MAX", "DECISION"],
            plans.map {
                [$0.name, Format.bytes($0.demand), Format.percent($0.activeFraction), Format.bytes($0.untaxedShare),
                 Format.bytes($0.entitled), Format.bytes($0.memoryHigh), Format.bytes($0.memoryLow),
                 Format.bytes($0.swapMax), $0.decision.summary]
            })
    }
}

SwapfairCtl.main()
