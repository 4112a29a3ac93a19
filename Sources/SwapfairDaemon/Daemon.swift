import Dispatch
import Foundation
import Logging
import SwapfairCgroup
import SwapfairConfig
import SwapfairSys
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Runs a loop every interval until SIGTERM or SIGINT, and reloads between its ticks on SIGHUP or
/// a `reload` on the control socket. Nothing a peer or an operator sends ends it otherwise:
/// SIGPIPE is ignored (a write to a peer that left is an error, not death) and so are SIGUSR1 and
/// SIGUSR2. Stopping leaves every setting as it is; a restart resumes from them.
public final class Daemon: Sendable {
    let stopFlag = Mutex<Bool>(false)
    /// Set once the service group hears SIGTERM and SIGINT itself.
    let signalsHandedOver = Mutex<Bool>(false)
    let wake = DispatchSemaphore(value: 0)
    private let reloads = Mutex<[@Sendable (ReloadReport) -> Void]>([])

    public init() {}

    public var stopRequested: Bool { stopFlag.withLock { $0 } }

    public func requestStop() {
        stopFlag.withLock { $0 = true }
        wake.signal()
    }

    /// Asks for a reload at the loop's next chance; `done` gets its outcome (on the loop's thread).
    public func requestReload(_ done: @escaping @Sendable (ReloadReport) -> Void) {
        reloads.withLock { $0.append(done) }
        wake.signal()
    }

    /// Asks for a reload and waits for its outcome (the control socket's `reload`).
    public func reloadAndWait(timeout: Double = 60) -> ReloadReport {
        let outcome = Mutex<ReloadReport?>(nil)
        let done = DispatchSemaphore(value: 0)
        requestReload { r in
            outcome.withLock { $0 = r }
            done.signal()
        }
        guard done.wait(timeout: .now() + timeout) == .success, let r = outcome.withLock({ $0 }) else {
            return ReloadReport(outcome: .refused, errors: ["the daemon did not get to the reload within \(Int(timeout)) s"])
        }
        return r
    }

    /// Signals that must never end the process, ignored before anything else runs. SIGHUP is
    /// ignored only until the reload service traps it (`ReloadSignalService`).
    public static func ignoreStraySignals() {
        for sig in [SIGPIPE, SIGUSR1, SIGUSR2, SIGHUP] { signal(sig, SIG_IGN) }
    }

    /// SIGTERM/SIGINT stop the loop, from the start on (starting the devices can take a while, and
    /// a stop asked for meanwhile must be heard). Keep the returned sources alive.
    public func handleSignals(logger: Logger, notifier: ServiceNotifier? = nil) -> [any DispatchSourceSignal] {
        Self.ignoreStraySignals()
        let sources: [any DispatchSourceSignal] = [SIGTERM, SIGINT].map { sig in
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler { [self] in
                logger.notice("stopping on signal \(sig == SIGTERM ? "SIGTERM" : "SIGINT"); settings are left as they are")
                // Once the service group has the signals it shuts the parts down in its order;
                // stopping the loop here too would end a part out of turn.
                if !signalsHandedOver.withLock({ $0 }) { requestStop() }
            }
            source.resume()
            return source
        }
        return sources
    }

    /// From now on SIGTERM and SIGINT are the service group's to act on (it is running and has
    /// installed its own handlers); a stop asked for before is kept.
    public func handOverSignals() { signalsHandedOver.withLock { $0 = true } }

    /// Sleeps up to `seconds`, returning early when a stop is requested.
    public func sleep(_ seconds: Double) {
        _ = wake.wait(timeout: .now() + .nanoseconds(Int(seconds * 1e9)))
    }

    /// The loop: `tick` every `interval()` seconds, reloads between ticks, until a stop (or
    /// `maxTicks` ticks: tests, `--ticks`). `tick` returns the tick count so far.
    public func run(interval: () -> Double, maxTicks: UInt64? = nil, reload: () -> ReloadReport,
                    notifier: ServiceNotifier? = nil, tick: () -> UInt64) {
        var next = monotonicSeconds()
        while !stopRequested {
            let ticks = tick()
            if let maxTicks, ticks >= maxTicks { break }
            next += interval()
            while !stopRequested {
                serveReloads(reload, notifier: notifier)
                let now = monotonicSeconds()
                if next < now { next = now }  // a slow tick shifts the schedule instead of bunching ticks
                if wake.wait(timeout: .now() + .nanoseconds(Int((next - now) * 1e9))) == .timedOut { break }
            }
        }
    }

    /// The control loop's own form of `run`.
    public func run(_ loop: ControlLoop, interval: Double, maxTicks: UInt64? = nil, reload: (() -> ReloadReport)? = nil,
                    notifier: ServiceNotifier? = nil, afterTick: (ControlLoop) -> Void = { _ in }) {
        run(interval: { reload == nil ? interval : loop.configuration.host.interval }, maxTicks: maxTicks,
            reload: reload ?? { ReloadReport(outcome: .refused, errors: ["this loop cannot reload"]) }, notifier: notifier) {
            loop.tick(now: monotonicSeconds(), clock: monotonicSeconds)
            afterTick(loop)
            return loop.ticks
        }
    }

    /// Runs every reload asked for since the last call (one reading of the file serves them all)
    /// and tells systemd: RELOADING=1 while it runs, READY=1 after.
    func serveReloads(_ reload: () -> ReloadReport, notifier: ServiceNotifier?) {
        let waiting = reloads.withLock { r in
            defer { r.removeAll() }
            return r
        }
        guard !waiting.isEmpty else { return }
        notifier?.reloading()
        let outcome = reload()
        notifier?.send("READY=1\nSTATUS=" + (outcome.outcome == .refused ? "reload refused: the configuration in force stays"
                                                                         : "reloaded: \(outcome.changes.count) changes"))
        for done in waiting { done(outcome) }
    }
}
