import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A failed system call on a path, with what was being done: "write /sys/fs/cgroup/x/memory.high: Device or resource busy".
public struct SysError: Error, Sendable, Equatable, CustomStringConvertible {
    public var operation: String
    public var path: String
    public var errno: Errno

    public init(_ operation: String, _ path: String, _ errno: Errno) {
        self.operation = operation
        self.path = path
        self.errno = errno
    }

    public var description: String { "\(operation) \(path): \(errno.message)" }
}

extension Errno {
    /// The errno of an error thrown by swift-system (which throws untyped); EIO for anything else.
    public init(_ error: any Error) { self = (error as? Errno) ?? .ioError }

    /// The C library's text for this error (`strerror`).
    public var message: String { String(cString: strerror(rawValue)) }
}
