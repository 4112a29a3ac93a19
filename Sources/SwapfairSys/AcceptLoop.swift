import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// What an accept loop tells its owner (who logs it): a listener never stops without a word.
public enum AcceptEvent: Sendable {
    /// A passing shortage (descriptors, buffers, memory) or an aborted connection: accept is tried
    /// again after `retryIn` seconds.
    case transient(SysError, retryIn: Double)
    /// The first accept that succeeded after transient failures.
    case recovered(failures: Int)
    /// An error that retrying cannot cure: the loop has ended.
    case fatal(SysError)
}

extension Errno {
    /// Errors of `accept` that pass: too many open descriptors (process or system), no buffer
    /// space or memory for now, a connection reset before it was taken, a signal, a protocol error
    /// on the new socket (accept(2) says to treat those like EAGAIN). Retried with backoff.
    public var isTransientAcceptError: Bool {
        switch self {
        case .tooManyOpenFiles, .tooManyOpenFilesInSystem, .noBufferSpace, .noMemory, .connectionAbort, .interrupted,
             .resourceTemporarilyUnavailable, .protocolError:
            return true
        default:
            return false
        }
    }
}

/// Accepts connections until `isStopped` or a fatal error, handing each to `handle`. Transient
/// errors are retried with a backoff from 10 ms doubling to 1 s, so that a host out of descriptors
/// is not spun on; every failure is reported through `report`.
public func acceptConnections(on listener: UnixSocket, isStopped: () -> Bool, report: (AcceptEvent) -> Void,
                              handle: (UnixSocket) -> Void) {
    var failures = 0
    var backoff = 0.01
    while !isStopped() {
        do {
            let client = try listener.accept()
            if failures > 0 { report(.recovered(failures: failures)) }
            failures = 0
            backoff = 0.01
            handle(client)
        } catch {
            if isStopped() { return }
            guard error.errno.isTransientAcceptError else {
                report(.fatal(error))
                return
            }
            failures += 1
            report(.transient(error, retryIn: backoff))
            usleep(useconds_t(backoff * 1e6))
            backoff = min(backoff * 2, 1)
        }
    }
}
