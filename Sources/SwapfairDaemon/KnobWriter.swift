import Dispatch
import Foundation
import Synchronization
import SwapfairCgroup
import SwapfairSys

/// Writes a VM's knobs through the backend with a time bound on the control loop. Lowering
/// `memory.high` or `memory.max` below a group's usage can make the writer reclaim synchronously
/// (on kernels that ignore O_NONBLOCK, and in systemd, which writes the file itself); such a write,
/// and every call to another process, runs on a thread of its own. The loop waits for it at most
/// `bound`; after that the write goes on in the background, the group gets no new writes until it
/// has finished, and its outcome is handed back by `takeFinished` on a later tick.
public final class KnobWriter: Sendable {
    public let bound: Duration
    public let backend: any LimitBackend
    private let pending = Mutex<Set<String>>([])
    private let finished = Mutex<[String: Result]>([:])

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

    /// The outcome of a write that was still running when the loop stopped waiting (`.slow`), once
    /// it has finished; nil while it runs or when there was none.
    public func takeFinished(_ group: Cgroup) -> Result? {
        finished.withLock { $0.removeValue(forKey: group.path) }
    }

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
            nameCurrentThread("knob-writer")
            let r: Result
            do throws(BackendError) { try backend.write(changes, to: group); r = .written } catch { r = .failed(error) }
            let abandoned = job.state.withLock { s in
                s.result = r
                return s.abandoned
            }
            if abandoned { self.finished.withLock { $0[key] = r } }
            self.pending.withLock { _ = $0.remove(key) }
            job.done.signal()
        }
        thread.stackSize = 256 << 10
        thread.start()
        let ns = bound.components.seconds * 1_000_000_000 + bound.components.attoseconds / 1_000_000_000
        _ = job.done.wait(timeout: .now() + .nanoseconds(Int(ns)))
        return job.state.withLock { s in
            if let r = s.result { return r }
            s.abandoned = true
            return .slow
        }
    }

    private final class Job: Sendable {
        struct State {
            var result: Result?
            /// The loop stopped waiting; the outcome goes to `finished`.
            var abandoned = false
        }
        let state = Mutex(State())
        let done = DispatchSemaphore(value: 0)
    }
}
