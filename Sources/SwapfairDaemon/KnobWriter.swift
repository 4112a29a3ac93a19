import Dispatch
import Foundation
import Synchronization
import SwapfairCgroup

/// Writes a VM's knobs through the backend with a time bound on the control loop. Lowering
/// `memory.high` or `memory.max` below a group's usage can make the writer reclaim synchronously
/// (on kernels that ignore O_NONBLOCK, and in systemd, which writes the file itself); such a write,
/// and every call to another process, runs on a thread of its own. The loop waits for it at most
/// `bound`, and the group gets no new writes until it has finished. Other writes run inline.
public final class KnobWriter: Sendable {
    public let bound: Duration
    public let backend: any LimitBackend
    private let pending = Mutex<Set<String>>([])

    public init(backend: any LimitBackend = CgroupfsBackend(), bound: Duration = .milliseconds(250)) {
        self.backend = backend
        self.bound = bound
    }

    public enum Result: Sendable {
        case written
        case failed(BackendError)
        /// Still running after the bound; it completes in the background.
        case slow
        /// An earlier slow write to this group has not finished.
        case skipped
    }

    public func isPending(_ group: Cgroup) -> Bool { pending.withLock { $0.contains(group.path) } }

    /// `mayReclaim`: the changes lower a memory limit (and so may reclaim in the writer).
    public func set(_ group: Cgroup, _ changes: [KnobChange], mayReclaim: Bool) -> Result {
        let key = group.path
        let backend = self.backend
        guard mayReclaim || backend.writesMayBlock else {
            if isPending(group) { return .skipped }
            do throws(BackendError) { try backend.write(changes, to: group) } catch { return .failed(error) }
            return .written
        }
        let busy = pending.withLock { set in
            if set.contains(key) { return true }
            set.insert(key)
            return false
        }
        if busy { return .skipped }
        let job = Job()
        // A dedicated thread, not a dispatch queue: a write stuck in reclaim must not take a
        // worker from a pool the rest of the process relies on.
        let thread = Thread {
            let r: Result
            do throws(BackendError) { try backend.write(changes, to: group); r = .written } catch { r = .failed(error) }
            job.result.withLock { $0 = r }
            self.pending.withLock { _ = $0.remove(key) }
            job.done.signal()
        }
        thread.stackSize = 256 << 10
        thread.start()
        let ns = bound.components.seconds * 1_000_000_000 + bound.components.attoseconds / 1_000_000_000
        if job.done.wait(timeout: .now() + .nanoseconds(Int(ns))) == .timedOut { return .slow }
        return job.result.withLock { $0 }
    }

    private final class Job: Sendable {
        let result = Mutex<Result>(.slow)
        let done = DispatchSemaphore(value: 0)
    }
}
