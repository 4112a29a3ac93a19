import CSwapfairShim
import Foundation

/// Starts a thread under a name the kernel shows (`top -H`, `ps -L`, `/proc/PID/task/TID/comm`),
/// so that an operator can tell the engine from the NBD readers. Foundation's `Thread.name` names
/// only the object here. Linux keeps the first 15 bytes.
/// `stackSize`: bytes of stack, for threads that do little (the default is 8 MiB, which a daemon
/// that locks its memory would hold resident for each thread).
public func startThread(named name: String, stackSize: Int? = nil, _ body: @escaping @Sendable () -> Void) {
    let thread = Thread {
        nameCurrentThread(name)
        body()
    }
    thread.name = name
    if let stackSize { thread.stackSize = stackSize }
    thread.start()
}

/// Names the calling thread for the kernel, which keeps the first 15 bytes of `name`. A name is
/// a help to the operator, so a failure to set one is ignored.
public func nameCurrentThread(_ name: String) {
    _ = swapfair_set_thread_name(name)
}
