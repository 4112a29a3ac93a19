import Foundation
import Logging
import SwapfairCgroup
import SwapfairSys
import Synchronization

/// Samples the VMs' active fractions with MGLRU on a thread of its own, so that a slow page-table
/// walk (tens of milliseconds per GiB of small pages) never delays the control loop. The loop
/// tells it which groups to watch and picks up the latest fractions each tick.
public final class ActivityMonitor: Sendable {
    let period: Double
    let logger: Logger
    private let targets = Mutex<[String]>([])
    private let latest = Mutex<[String: Double]>([:])
    private let stopped = Mutex<Bool>(false)
    private let wake = DispatchSemaphore(value: 0)
    private let sampler: Sampler

    /// The sampler is only touched by the monitor's thread.
    private final class Sampler: @unchecked Sendable {
        let inner: LRUGenSampler
        init(_ inner: LRUGenSampler) { self.inner = inner }
    }

    public init(sampler: LRUGenSampler = LRUGenSampler(), period: Double, logger: Logger) {
        self.sampler = Sampler(sampler)
        self.period = period
        self.logger = logger
    }

    public func watch(_ groups: [String]) { targets.withLock { $0 = groups } }

    public func fraction(of group: String) -> Double? { latest.withLock { $0[group] } }

    public func start() {
        startThread(named: "activity") { [self] in run() }
    }

    public func stop() {
        stopped.withLock { $0 = true }
        wake.signal()
    }

    func run() {
        var failures = 0
        var stuckGroups: Set<String> = []
        while !stopped.withLock({ $0 }) {
            let groups = targets.withLock { $0 }
            if !groups.isEmpty {
                do {
                    let fractions = try sampler.inner.sample(groups)
                    if logger.logLevel <= .debug {
                        for line in sampler.inner.lastDetails { logger.debug("MGLRU sample: \(line)") }
                    }
                    // A VM whose aging keeps doing nothing keeps its last fraction; say so, once
                    // per spell, so that a stale fraction can be told from a measured one.
                    let stuck = Set(sampler.inner.lastStuck)
                    for group in stuck where !stuckGroups.contains(group) {
                        logger.notice("MGLRU aging made no progress; the active fraction is not updated while this lasts",
                                      metadata: ["cgroup": "\(group)"])
                    }
                    for group in stuckGroups.subtracting(stuck) where fractions[group] != nil {
                        logger.notice("MGLRU aging works again", metadata: ["cgroup": "\(group)"])
                    }
                    stuckGroups = stuck.union(stuckGroups.filter { fractions[$0] == nil && groups.contains($0) })
                    latest.withLock { current in
                        current = current.filter { groups.contains($0.key) }
                        current.merge(fractions) { $1 }
                    }
                    failures = 0
                } catch {
                    failures += 1
                    if failures == 1 {
                        logger.warning("MGLRU sampling failed; active fractions are stale until it works again",
                                       metadata: ["error": "\(error)"])
                    }
                }
            }
            _ = wake.wait(timeout: .now() + .milliseconds(Int(period * 1000)))
        }
    }
}
