import SwapfairSys
import SystemPackage

/// A failed call to systemd, with the D-Bus error name when the manager answered with one.
public struct SystemdError: Error, Sendable, CustomStringConvertible {
    /// What was being done, e.g. "SetUnitProperties vm-a.scope".
    public let operation: String
    /// The negative errno of the sd-bus call.
    public let code: Int32
    /// e.g. "org.freedesktop.systemd1.NoSuchUnit".
    public let name: String?
    public let message: String?

    public init(operation: String, code: Int32, name: String? = nil, message: String? = nil) {
        self.operation = operation
        self.code = code
        self.name = name
        self.message = message
    }

    /// The unit is not loaded: for a VM this means it stopped.
    public var isNoSuchUnit: Bool { name == "org.freedesktop.systemd1.NoSuchUnit" }
    public var isUnitExists: Bool { name == "org.freedesktop.systemd1.UnitExists" }

    public var description: String {
        if let name, let message { return "\(operation): \(message) (\(name))" }
        if let message { return "\(operation): \(message)" }
        return "\(operation): \(Errno(rawValue: -code).message)"
    }
}

