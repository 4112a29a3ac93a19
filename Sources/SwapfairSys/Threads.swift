import CSwapfairShim
import Foundation

/// Starts a thread under a name the kernel shows (`top -H`, `ps -L`, `/proc/PID/task/TID/comm`),
/// so that an operator can tell the engine from the NBD readers. Foundation's `Thread.name` names
/// only the object here. Linux keeps the first 15 bytes.
/// `stackSize`: bytes of stack. The C library's default (8 MiB) is far more than any thread here
/// needs, and a daemon that locks its memory holds all of it resident for every thread (every
/// NBD connection has two).
public func startThread(named name: String, stackSize: Int = defaultThreadStack, _ body: @escaping @Sendable () -> Void) {
    let thread = Thread {
        nameCurrentThread(name)
        body()
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

/// The stack of a thread started with `startThread` unless it says otherwise.
public let defaultThreadStack = 1 << 20
