import CSwapfairShim
import Foundation
import Synchronization

/// Starts a thread under a name the kernel shows (`top -H`, `ps -L`, `/proc/PID/task/TID/comm`),
/// so that an operator can tell the engine from the NBD readers. Foundation's `Thread.name` names
/// only the object here. Linux keeps the first 15 bytes.
/// `stackSize`: bytes of stack. The C library's default (8 MiB) is far more than any thread here
/// needs, and a daemon that locks its memory holds all of it resident for every thread (every
/// NBD connection has two).
public func startThread(named name: String, stackSize: Int = defaultThreadStack, _ body: @escaping @Sendable () -> Void) {
    let thread = Thread {
        nameCurrentThread(name)
        let locked = ThreadStacks.locked.load(ordering: .relaxed)
        // A serving thread's stack must stay resident (it may be what swap-in waits for); a stack
        // reused from the C library's cache lost its lock when its last thread ended.
        if locked { _ = swapfair_lock_own_stack() }
        body()
        // Under mlockall the C library cannot give a cached stack's pages back: unlocked, it can.
        if locked { _ = swapfair_unlock_own_stack() }
    }
    thread.name = name
    thread.stackSize = stackSize
    thread.start()
}

/// Names the calling thread for the kernel, which keeps the first 15 bytes of `name`. A name is
/// a help to the operator, so a failure to set one is ignored.
public func nameCurrentThread(_ name: String) {
    _ = swapfair_set_thread_name(name)
}

/// Whether threads lock their stacks (set once the process has locked its memory).
public enum ThreadStacks {
    public static let locked = Atomic<Bool>(false)
}

/// The stack of a thread started with `startThread` unless it says otherwise.
public let defaultThreadStack = 1 << 20
