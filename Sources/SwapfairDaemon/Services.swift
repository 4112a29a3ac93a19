import Logging
import ServiceLifecycle
import SwapfairSys
import UnixSignals

/// The daemon's parts as services of one `ServiceGroup`, which starts them in order and, on
/// SIGTERM or SIGINT, shuts them down in reverse order: the reload signal, the control socket, the
/// control loop (its balloons give their guests back their RAM), then the swap devices (no new
/// clients, requests in flight answered, the engine stopped). Each part's work stays on threads of
/// its own, as serving swap must never wait for a shared pool; a service only starts and stops it.

/// Runs `body` on a thread of its own and waits for it to end without holding a pool thread.
func onThread(named name: String, stackSize: Int = defaultThreadStack, _ body: @escaping @Sendable () -> Void) async {
    await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
        startThread(named: name, stackSize: stackSize) {
            body()
            done.resume()
        }
    }
}

/// A value that is handed to the one thread that uses it from then on (the control loop, the
/// reloader): never touched from two threads at once.
public struct HandedOver<Value>: @unchecked Sendable {
    public let value: Value
    public init(_ value: Value) { self.value = value }
}

/// The control loop (or, with `--swap-only`, the devices' status loop): runs until the group
/// shuts down, then finishes what it must before the devices stop (`finish`).
public struct LoopService: Service, CustomStringConvertible {
    let daemon: Daemon
    let loop: @Sendable () -> Void
    let finish: @Sendable () -> Void
    public let description = "control loop"

    public init(daemon: Daemon, loop: @escaping @Sendable () -> Void, finish: @escaping @Sendable () -> Void) {
        self.daemon = daemon
        self.loop = loop
        self.finish = finish
    }

    public func run() async {
        // The group runs and hears SIGTERM and SIGINT itself now.
        daemon.handOverSignals()
        await withGracefulShutdownHandler {
            await onThread(named: "control-loop", stackSize: 1 << 20) { loop() }
        } onGracefulShutdown: {
            daemon.requestStop()
        }
        await onThread(named: "finish", stackSize: 256 << 10) { finish() }
    }
}

/// The control socket's accept loop; shutting down stops new clients.
public struct ControlSocketService: Service, CustomStringConvertible {
    let server: ControlServer
    public let description = "control socket"

    public init(_ server: ControlServer) { self.server = server }

    public func run() async {
        await withGracefulShutdownHandler {
            await onThread(named: "control-socket", stackSize: 512 << 10) { server.serve() }
        } onGracefulShutdown: {
            server.stop()
        }
    }
}

/// SIGHUP asks for a reload, which the loop runs between its ticks.
public struct ReloadSignalService: Service, CustomStringConvertible {
    let daemon: Daemon
    let logger: Logger
    public let description = "reload on SIGHUP"

    public init(daemon: Daemon, logger: Logger) {
        self.daemon = daemon
        self.logger = logger
    }

    public func run() async {
        for await _ in await UnixSignalsSequence(trapping: .sighup).cancelOnGracefulShutdown() {
            logger.notice("reload asked for (SIGHUP)")
            daemon.requestReload { _ in }
        }
    }
}

/// The swap devices live until everything in front of them has stopped; then they stop in order.
public struct SwapDeviceService: Service, CustomStringConvertible {
    let stop: @Sendable () -> Void
    public let description = "swap devices"

    public init(stop: @escaping @Sendable () -> Void) { self.stop = stop }

    public func run() async {
        // Cancellation (a part that failed) stops the devices as a graceful shutdown does.
        do { try await gracefulShutdown() } catch {}
        await onThread(named: "devices-stop", stackSize: 256 << 10) { stop() }
    }
}

extension ServiceGroup {
    /// The daemon's group: `services` in start order, shut down in reverse on SIGTERM or SIGINT,
    /// within `deadline` seconds (well inside the unit's `TimeoutStopSec`). A service that returns
    /// by itself (a loop bounded by `--ticks`) shuts the group down the same way.
    public static func daemon(_ services: [any Service], deadline: Double, logger: Logger) -> ServiceGroup {
        var c = ServiceGroupConfiguration(
            services: services.map {
                .init(service: $0, successTerminationBehavior: .gracefullyShutdownGroup,
                      failureTerminationBehavior: .gracefullyShutdownGroup)
            },
            gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        c.maximumGracefulShutdownDuration = .milliseconds(Int(deadline * 1000))
        c.maximumCancellationDuration = .seconds(2)
        return ServiceGroup(configuration: c)
    }
}
