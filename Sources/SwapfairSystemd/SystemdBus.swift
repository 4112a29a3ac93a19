import CSystemd
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A unit property as `SetUnitProperties` and `StartTransientUnit` take it: `(sv)`.
public struct UnitProperty: Sendable, Equatable {
    public enum Value: Sendable, Equatable {
        case uint64(UInt64)
        case string(String)
        case bool(Bool)
        case uint32Array([UInt32])
    }

    public var name: String
    public var value: Value

    public init(_ name: String, _ value: Value) {
        self.name = name
        self.value = value
    }
}

/// A connection to systemd's manager (org.freedesktop.systemd1) over sd-bus.
///
/// sd-bus objects are not thread-safe: every call holds `lock`. systemd itself handles one request
/// at a time, so serialising here costs nothing the manager would not impose anyway.
public final class SystemdBus: @unchecked Sendable {
    private let lock = Mutex<Void>(())
    private let bus: OpaquePointer
    /// How the connection was made: "system bus" or systemd's private socket.
    public let route: String
    /// systemd's version string, read when connecting.
    public private(set) var version = ""
    /// Bound on one call; a manager busy for longer is reported as a failure, not waited on.
    public let callTimeoutMicroseconds: UInt64 = 10_000_000

    static let destination = "org.freedesktop.systemd1"
    static let managerPath = "/org/freedesktop/systemd1"
    static let managerInterface = "org.freedesktop.systemd1.Manager"

    /// Whether systemd is the init system (the test `sd_booted()` makes).
    public static func isBooted(runDirectory: String = "/run/systemd/system") -> Bool {
        var st = stat()
        return lstat(runDirectory, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    private init(bus: OpaquePointer, route: String) {
        self.bus = bus
        self.route = route
    }

    deinit { sd_bus_flush_close_unref(bus) }

    /// Connects to the system bus, or, where no D-Bus daemon runs, to systemd's private socket
    /// (root only), and checks that the manager answers.
    public static func connect() throws(SystemdError) -> SystemdBus {
        guard isBooted() else {
            throw SystemdError(operation: "connect to systemd", code: -ENOENT, name: nil,
                               message: "systemd is not the init system (/run/systemd/system is missing)")
        }
        var handle: OpaquePointer?
        var route = "system bus"
        var r = sd_bus_open_system(&handle)
        if r < 0 {
            handle = nil
            route = "/run/systemd/private"
            r = sd_bus_new(&handle)
            if r >= 0, let h = handle {
                r = sd_bus_set_address(h, "unix:path=/run/systemd/private")
                if r >= 0 { r = sd_bus_start(h) }
                if r < 0 { sd_bus_flush_close_unref(h) }
            }
        }
        guard r >= 0, let h = handle else { throw SystemdError(operation: "connect to systemd", code: r) }
        let bus = SystemdBus(bus: h, route: route)
        bus.version = try bus.managerStringProperty("Version")
        return bus
    }

    // MARK: manager calls

    /// `SetUnitProperties(s name, b runtime, a(sv) properties)`; `runtime`: lost at reboot, kept
    /// across `daemon-reload` and unit restarts.
    public func setUnitProperties(_ unit: String, runtime: Bool, _ properties: [UnitProperty]) throws(SystemdError) {
        try call("SetUnitProperties", what: "SetUnitProperties \(unit)") { w in
            w.string(unit)
            w.bool(runtime)
            w.properties(properties)
        }
    }

    /// `StartTransientUnit(s name, s mode, a(sv) properties, a(sa(sv)) aux) -> o job`.
    @discardableResult
    public func startTransientUnit(_ unit: String, mode: String = "fail", _ properties: [UnitProperty]) throws(SystemdError) -> String {
        var job = ""
        try call("StartTransientUnit", what: "StartTransientUnit \(unit)", build: { w in
            w.string(unit)
            w.string(mode)
            w.properties(properties)
            w.open("a", "(sa(sv))")
            w.close()
        }, read: { m in
            var p: UnsafePointer<CChar>?
            let r = sd_bus_message_read_basic(m, UInt8(ascii: "o").cchar, &p)
            if r >= 0, let p { job = String(cString: p) }
            return r
        })
        return job
    }

    /// `AttachProcessesToUnit(s unit, s subcgroup, au pids)`: moves processes into a running unit.
    public func attachProcesses(_ pids: [UInt32], to unit: String) throws(SystemdError) {
        try call("AttachProcessesToUnit", what: "AttachProcessesToUnit \(unit)") { w in
            w.string(unit)
            w.string("")
            w.open("a", "u")
            for p in pids { w.uint32(p) }
            w.close()
        }
    }

    /// A string property of the manager object (e.g. "Version").
    public func managerStringProperty(_ name: String) throws(SystemdError) -> String {
        var value = ""
        try call("Get", path: Self.managerPath, interface: "org.freedesktop.DBus.Properties",
                 what: "read systemd's \(name)", build: { w in
            w.string(Self.managerInterface)
            w.string(name)
        }, read: { m in
            var r = sd_bus_message_enter_container(m, UInt8(ascii: "v").cchar, "s")
            guard r >= 0 else { return r }
            var p: UnsafePointer<CChar>?
            r = sd_bus_message_read_basic(m, UInt8(ascii: "s").cchar, &p)
            if r >= 0, let p { value = String(cString: p) }
            return r
        })
        return value
    }

    // MARK: plumbing

    private func call(_ member: String, path: String = SystemdBus.managerPath,
                      interface: String = SystemdBus.managerInterface, what: String,
                      build: (inout MessageWriter) -> Void,
                      read: ((OpaquePointer) -> Int32)? = nil) throws(SystemdError) {
        let timeout = callTimeoutMicroseconds
        let outcome: SystemdError? = lock.withLock { _ in
            var message: OpaquePointer?
            var r = sd_bus_message_new_method_call(bus, &message, Self.destination, path, interface, member)
            guard r >= 0, let m = message else { return SystemdError(operation: what, code: r) }
            defer { sd_bus_message_unref(m) }
            var writer = MessageWriter(message: m)
            build(&writer)
            guard writer.status >= 0 else { return SystemdError(operation: what, code: writer.status) }
            var error = sd_bus_error()
            defer { sd_bus_error_free(&error) }
            var reply: OpaquePointer?
            r = sd_bus_call(bus, m, timeout, &error, &reply)
            defer { if let reply { sd_bus_message_unref(reply) } }
            if r < 0 {
                return SystemdError(operation: what, code: r, name: error.name.map { String(cString: $0) },
                                    message: error.message.map { String(cString: $0) })
            }
            if let read, let reply {
                r = read(reply)
                if r < 0 { return SystemdError(operation: what + " (reading the reply)", code: r) }
            }
            return nil
        }
        if let outcome { throw outcome }
    }
}

/// Appends D-Bus values to a message; the first failure is kept in `status`.
struct MessageWriter {
    let message: OpaquePointer
    var status: Int32 = 0

    private mutating func check(_ r: Int32) { if status >= 0, r < 0 { status = r } }

    mutating func string(_ s: String) {
        check(s.withCString { sd_bus_message_append_basic(message, UInt8(ascii: "s").cchar, $0) })
    }

    mutating func bool(_ b: Bool) {
        let v: Int32 = b ? 1 : 0  // D-Bus booleans are 32-bit
        check(withUnsafePointer(to: v) { sd_bus_message_append_basic(message, UInt8(ascii: "b").cchar, $0) })
    }

    mutating func uint64(_ v: UInt64) {
        check(withUnsafePointer(to: v) { sd_bus_message_append_basic(message, UInt8(ascii: "t").cchar, $0) })
    }

    mutating func uint32(_ v: UInt32) {
        check(withUnsafePointer(to: v) { sd_bus_message_append_basic(message, UInt8(ascii: "u").cchar, $0) })
    }

    mutating func open(_ type: Unicode.Scalar, _ contents: String) {
        check(contents.withCString { sd_bus_message_open_container(message, UInt8(ascii: type).cchar, $0) })
    }

    mutating func close() { check(sd_bus_message_close_container(message)) }

    /// `a(sv)`.
    mutating func properties(_ list: [UnitProperty]) {
        open("a", "(sv)")
        for p in list {
            open("r", "sv")
            string(p.name)
            switch p.value {
            case .uint64(let v): open("v", "t"); uint64(v); close()
            case .string(let s): open("v", "s"); string(s); close()
            case .bool(let b): open("v", "b"); bool(b); close()
            case .uint32Array(let a):
                open("v", "au")
                open("a", "u")
                for x in a { uint32(x) }
                close()
                close()
            }
            close()
        }
        close()
    }
}

extension UInt8 {
    var cchar: CChar { CChar(bitPattern: self) }
}
