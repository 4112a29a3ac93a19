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

/// Runs the control loop every interval until SIGTERM or SIGINT, serving the control socket
/// meanwhile. Stopping leaves every setting as it is; a restart resumes from them.
public final class Daemon: Sendable {
    let stopFlag = Mutex<Bool>(false)
    let wake = DispatchSemaphore(value: 0)

    public init() {}

    public var stopRequested: Bool { stopFlag.withLock { $0 } }

    public func requestStop() {
        stopFlag.withLock { $0 = true }
        wake.signal()
    }

    /// Installs SIGTERM/SIGINT handlers that stop the loop. Keep the returned sources alive.
    public func handleSignals(logger: Logger) -> [any DispatchSourceSignal] {
        [SIGTERM, SIGINT].map { sig in
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler { [self] in
                logger.notice("stopping on signal \(sig == SIGTERM ? "SIGTERM" : "SIGINT"); settings are left as they are")
                requestStop()
            }
            source.resume()
            return source
        }
    }

    /// Sleeps up to `seconds`, returning early when a stop is requested.
    public func sleep(_ seconds: Double) {
        _ = wake.wait(timeout: .now() + .nanoseconds(Int(seconds * 1e9)))
    }

    /// The loop itself. `maxTicks` bounds it (tests, `--ticks`).
    public func run(_ loop: ControlLoop, interval: Double, maxTicks: UInt64? = nil,
                    afterTick: (ControlLoop) -> Void = { _ in }) {
        var next = monotonicSeconds()
        while !stopRequested {
            loop.tick(now: monotonicSeconds(), clock: monotonicSeconds)
            afterTick(loop)
            if let maxTicks, loop.ticks >= maxTicks { break }
            next += interval
            let now = monotonicSeconds()
            if next < now { next = now }  // a slow tick shifts the schedule instead of bunching ticks
            _ = wake.wait(timeout: .now() + .nanoseconds(Int((next - now) * 1e9)))
        }
    }
}
