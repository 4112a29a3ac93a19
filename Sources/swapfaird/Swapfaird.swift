import ArgumentParser
import Foundation
import Logging
import SwapfairCgroup
import SwapfairConfig
import SwapfairDaemon
import SwapfairPolicy
import ServiceLifecycle
import SwapfairSys

#if canImport(Glibc)
import Glibc
#endif

@main
struct Swapfaird: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "swapfaird",
        abstract: "Divides a host's RAM and swap between VMs by weight, reservation and limit, "
            + "driven by memory pressure (cgroup v2).")

    @Option(name: .long, help: "Configuration file (default: \(ConfigLoader.defaultPath) if it exists, else the embedded default).")
    var config: String?

    @Option(name: .long, help: "cgroup v2 root (overrides host.cgroup_root).")
    var cgroupRoot: String?

    @Option(name: .long, help: "Control socket path (overrides host.socket).")
    var socket: String?

    @Option(name: .long, help: "Stop after this many ticks.")
    var ticks: UInt64?

    @Option(name: .long, help: "Log level: debug, info, notice, warning, error.")
    var logLevel: String = "info"

    @Flag(name: .long, help: "Accept a cgroup root that is not a mounted cgroup2 file system (tests, fake trees).")
    var allowFakeRoot = false

    @Option(name: .long, help: "Append each detected double-paging event (time, VM, block) to this file (benchmarks).")
    var doublePagingEvents: String?

    @Flag(name: .long, help: "Serve the VMs' swap devices only; no memory control (hosts without cgroup v2).")
    var swapOnly = false

    func run() async throws {
        Self.runWithoutStackCache()
        // Before anything can write to a socket: a peer that leaves must never end the process.
        Daemon.ignoreStraySignals()
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { _ in LineLogHandler(level: level) }
        let logger = Logger(label: "swapfaird")

        let facts: HostFacts
        do { facts = try HostFactsReader.read() } catch { fail("cannot read the host's memory size: \(error)") }
        var configuration: SwapfairConfiguration
        do { configuration = try ConfigSource.load(explicit: config, facts: facts) } catch {
            fail("the configuration is invalid; not starting:\n\(error)")
        }
        let overrides: @Sendable (inout SwapfairConfiguration) -> Void = { [cgroupRoot, socket] c in
            if let cgroupRoot { c.host.cgroupRoot = cgroupRoot }
            if let socket { c.host.socket = socket }
        }
        overrides(&configuration)
        let health = Health()
        let notifier = ServiceNotifier(environment: ProcessInfo.processInfo.environment)
        // Before the devices: starting them can take a while (a ublk take-over waits for the
        // kernel), and a stop asked for meanwhile must be heard, not ignored.
        let daemon = Daemon()
        let signals = daemon.handleSignals(logger: logger)

        var devices: SwapDevices?
        if configuration.vms.contains(where: { $0.swapDevice != nil }) || configuration.host.hostSwapSize != nil
            || configuration.host.hostSwapDevice != nil {
            if !allowFakeRoot { SwapServerProtection.apply(logger: logger) }
            do {
                devices = try SwapDevices(configuration: configuration, logger: logger, doublePagingEvents: doublePagingEvents,
                                          health: health)
            } catch {
                fail("\(error)")
            }
        }
        if swapOnly {
            let reloader = Reloader(explicitPath: config, facts: facts, current: configuration, devices: devices, logger: logger,
                                    health: health, overrides: overrides)
            try await runSwapOnly(configuration, reloader: reloader, daemon: daemon, health: health, notifier: notifier,
                                  startupSignals: signals, logger: logger)
            return
        }

        let root: CgroupRoot
        do {
            root = try CgroupRoot.open(configuration.host.cgroupRoot, requireCgroup2FileSystem: !allowFakeRoot)
            let controllers = try root.controllers()
            guard controllers.contains("memory") else {
                throw CgroupError.controllerMissing(controller: "memory", cgroup: configuration.host.cgroupRoot)
            }
        } catch {
            fail("\(error)")
        }

        let choice: BackendChoice.Outcome
        do {
            choice = try BackendChoice.choose(configuration.host.backend, cgroupRoot: root.path, isFakeRoot: allowFakeRoot)
        } catch {
            fail("\(error)")
        }
        let budgets = configuration.budgets(facts)
        logger.notice("limits are set through \(choice.backend.name): \(choice.reason)")
        logger.notice("starting", metadata: [
            "config": "\(configuration.source)", "backend": "\(choice.backend.name)", "root": "\(root.path)",
            "vms": "\(configuration.vms.count)", "memory_budget": "\(budgets.memory)", "swap_budget": "\(budgets.swap)",
        ])
        let board = StatusBoard()
        var monitor: ActivityMonitor?
        switch configuration.host.activity {
        case _ where allowFakeRoot:
            // A test tree has no memory cgroups for MGLRU to walk.
            logger.notice("active fractions from the LRU lists of memory.stat (fake cgroup root)")
        case .lru:
            logger.notice("active fractions from the LRU lists of memory.stat (activity = \"lru\")")
        case .auto, .lruGen:
            if let why = LRUGenFile.unavailableReason() {
                if configuration.host.activity == .lruGen { fail("activity = \"lru_gen\" but \(why)") }
                logger.notice("active fractions from the LRU lists of memory.stat: \(why)")
            } else {
                monitor = ActivityMonitor(period: configuration.host.activityPeriod, logger: logger)
                logger.notice("active fractions from MGLRU page-table sampling every \(configuration.host.activityPeriod)s")
            }
        }
        monitor?.start()
        let loop = ControlLoop(configuration: configuration, facts: facts, root: root, logger: logger,
                               writer: KnobWriter(backend: choice.backend), board: board,
                               activity: monitor, now: monotonicSeconds())
        loop.swapDevices = devices
        loop.tracker = devices?.tracker
        loop.health = health
        let reloader = Reloader(explicitPath: config, facts: facts, current: configuration, devices: devices, logger: logger,
                                health: health, overrides: overrides, apply: { change in
            loop.reconfigure(change, now: monotonicSeconds())
        })

        let metrics = MetricsExporter()
        let server = controlServer(configuration, board: board, daemon: daemon, health: health, metrics: metrics,
                                   logger: logger)
        // systemd: READY once the VMs are placed and the first plan is applied; STATUS and a
        // watchdog ping from every tick, so a loop that stops making progress gets restarted.
        if let w = notifier.watchdogSeconds, w < configuration.host.interval * 2 {
            logger.warning("WatchdogSec is shorter than two control intervals; the service may be restarted needlessly",
                           metadata: ["watchdog_s": "\(w)", "interval_s": "\(configuration.host.interval)"])
        }
        let owned = HandedOver((loop: loop, reloader: reloader, monitor: monitor))
        let maxTicks = ticks
        let control = LoopService(daemon: daemon, loop: {
            let (loop, reloader, _) = owned.value
            daemon.run(loop, interval: loop.configuration.host.interval, maxTicks: maxTicks, reload: {
                let outcome = reloader.reload()
                loop.reloads = reloader.count
                loop.swapDevices = reloader.devices
                loop.tracker = reloader.devices?.tracker
                return outcome
            }, notifier: notifier) { loop in
                publishMetrics(metrics, board: board, textfile: loop.configuration.host.metricsTextfile, health: health,
                               logger: logger)
                let summary = "\(loop.runningVMs.count) of \(loop.configuration.vms.count) VMs managed, "
                    + "budget \(Format.bytes(loop.planner.host.memoryBudget))" + Self.problems(health)
                if loop.ticks == 1 { notifier.ready(status: summary) } else { notifier.status(summary) }
                notifier.watchdog()
            }
            notifier.stopping()
        }, finish: {
            owned.value.loop.finish()
            owned.value.monitor?.stop()
        })
        try await runServices(control: control, server: server, daemon: daemon, startupSignals: signals, logger: logger) {
            owned.value.reloader.devices?.stop(logger: logger)
        }
        logger.notice("stopped", metadata: ["ticks": "\(loop.ticks)"])
    }

    /// Runs the daemon's parts until SIGTERM or SIGINT (or the loop's end), then stops them in
    /// order: SIGHUP's reloads, the control socket, the loop, the swap devices.
    /// `startupSignals`: the handlers that heard SIGTERM and SIGINT while the parts were set up,
    /// kept until the group hears them (see `Daemon.handOverSignals`).
    func runServices(control: LoopService, server: ControlServer?, daemon: Daemon, startupSignals: [any DispatchSourceSignal],
                     logger: Logger, stopDevices: @escaping @Sendable () -> Void) async throws {
        defer { withExtendedLifetime(startupSignals) {} }
        var services: [any Service] = [SwapDeviceService(stop: stopDevices), control]
        if let server { services.append(ControlSocketService(server)) }
        services.append(ReloadSignalService(daemon: daemon, logger: logger))
        // Balloons and the devices' drain each get 5 s; the unit's TimeoutStopSec is 20 s.
        try await ServiceGroup.daemon(services, deadline: 15, logger: logger).run()
    }

    /// The C library keeps up to 40 MiB of finished threads' stacks for new threads; with the
    /// daemon's memory locked they stay resident, and every NBD connection that ends leaves two.
    /// Its tunable is read only as the process starts, so the daemon executes itself again once
    /// with the cache off (stacks are then unmapped as their threads end). Should that fail it runs
    /// on as it is.
    static func runWithoutStackCache() {
        let tunable = "glibc.pthread.stack_cache_size"
        let current = getenv("GLIBC_TUNABLES").map { String(cString: $0) } ?? ""
        guard !current.contains(tunable) else { return }
        setenv("GLIBC_TUNABLES", (current.isEmpty ? "" : current + ":") + tunable + "=0", 1)
        execv("/proc/self/exe", CommandLine.unsafeArgv)
    }

    /// The control socket; a daemon without one still runs, and says so.
    func controlServer(_ c: SwapfairConfiguration, board: StatusBoard, daemon: Daemon, health: Health,
                       metrics: MetricsExporter, logger: Logger) -> ControlServer? {
        var group: UInt32?
        if let name = c.host.socketGroup {
            group = UInt32(name) ?? getgrnam(name).map { $0.pointee.gr_gid }
            if group == nil { logger.warning("socket_group \(name) does not exist; root only") }
        }
        do {
            return try ControlServer(path: c.host.socket, board: board, allowedGroup: group, logger: logger,
                                     reload: { daemon.reloadAndWait() }, metrics: metrics, health: health)
        } catch {
            logger.error("control socket unavailable; running without it", metadata: ["error": "\(error)"])
            health.record("control socket", "unavailable: \(error)")
            return nil
        }
    }

    /// The tick's status as metrics, and in `metrics_textfile` when one is set; a file that cannot
    /// be written is said once (in the log and the status's problems), and again when it can.
    func publishMetrics(_ metrics: MetricsExporter, board: StatusBoard, textfile: String?, health: Health, logger: Logger) {
        guard let report = board.current else { return }
        metrics.update(report)
        guard let textfile else { return }
        let part = "metrics_textfile \(textfile)"
        do {
            try metrics.write(to: textfile)
            if health.current.contains(where: { $0.hasPrefix(part) }) {
                health.clear(part)
                logger.notice("the metrics file is written again", metadata: ["file": "\(textfile)"])
            }
        } catch {
            if !health.current.contains(where: { $0.hasPrefix(part) }) {
                logger.error("cannot write the metrics file", metadata: ["file": "\(textfile)", "error": "\(error)"])
            }
            health.record(part, "cannot be written: \(error)")
        }
    }

    static func problems(_ health: Health) -> String {
        let p = health.current
        return p.isEmpty ? "" : "; PROBLEM: " + p.joined(separator: "; ")
    }

    /// Serves swap devices and the control socket, nothing else, until SIGTERM or SIGINT.
    func runSwapOnly(_ c: SwapfairConfiguration, reloader: Reloader, daemon: Daemon, health: Health,
                     notifier: ServiceNotifier, startupSignals: [any DispatchSourceSignal], logger: Logger) async throws {
        guard let first = reloader.devices else { fail("--swap-only, but no VM has a swap_device and there is no host swap device") }
        logger.notice("serving swap devices only (no memory control)", metadata: ["devices": "\(first.servers.count)"])
        let board = StatusBoard()
        let metrics = MetricsExporter()
        let server = controlServer(c, board: board, daemon: daemon, health: health, metrics: metrics, logger: logger)
        let owned = HandedOver(reloader)
        let maxTicks = ticks
        let control = LoopService(daemon: daemon, loop: {
            let reloader = owned.value
            let started = monotonicSeconds()
            var ticks: UInt64 = 0
            daemon.run(interval: { reloader.current.host.interval }, maxTicks: maxTicks, reload: { reloader.reload() },
                       notifier: notifier) {
                ticks += 1
                let devices = reloader.devices ?? first
                board.publish(StatusReport.swapOnly(reloader.current, devices: devices, now: monotonicSeconds(), started: started,
                                                    ticks: ticks, reloads: reloader.count, problems: health.current))
                publishMetrics(metrics, board: board, textfile: reloader.current.host.metricsTextfile, health: health,
                               logger: logger)
                let summary = "serving \(devices.servers.count) swap devices"
                    + (devices.hostSwap.map { " and host swap on \($0.blockDevicePath)" } ?? "") + Self.problems(health)
                if ticks == 1 { notifier.ready(status: summary) } else { notifier.status(summary) }
                notifier.watchdog()
                return ticks
            }
            notifier.stopping()
        }, finish: {})
        try await runServices(control: control, server: server, daemon: daemon, startupSignals: startupSignals,
                              logger: logger) {
            (owned.value.devices ?? first).stop(logger: logger)
        }
        logger.notice("stopped")
    }

    func fail(_ message: String) -> Never {
        FileHandle.standardError.write(Data("swapfaird: \(message)\n".utf8))
        Foundation.exit(1)
    }
}

