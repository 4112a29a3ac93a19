import Foundation
import SwapfairConfig
import SwapfairPolicy

/// What `swapfairctl status` shows: the daemon's view of every configured VM. Sent as JSON over
/// the control socket; the field names are the JSON keys (stable, snake_case).
public struct StatusReport: Codable, Sendable, Equatable {
    public struct Daemon: Codable, Sendable, Equatable {
        public var version: String
        public var pid: Int32
        public var config: String
        public var backend: String
        /// How active fractions are measured: "lru_gen" (MGLRU sampling) or "lru".
        public var activity: String
        public var cgroupRoot: String
        public var intervalSeconds: Double
        public var ticks: UInt64
        public var uptimeSeconds: Double
        public var memoryBudget: UInt64
        public var swapBudget: UInt64
        public var lastTickMilliseconds: Double
        /// Reloads asked for since the start (SIGHUP, `swapfairctl reload`).
        public var reloads: Int? = nil
        /// Parts that stopped for good (a listener), each with why.
        public var problems: [String]? = nil
    }

    public struct VM: Codable, Sendable, Equatable {
        public var name: String
        /// "running", or why it is not managed right now.
        public var state: String
        public var cgroup: String?
        public var weight: Double
        public var reservation: UInt64
        public var limit: UInt64?
        public var demand: UInt64?
        public var entitled: UInt64?
        public var memoryHigh: UInt64?
        public var memoryCurrent: UInt64?
        public var swapCurrent: UInt64?
        public var swapMax: UInt64?
        /// Share of the last period stalled on memory.
        public var stall: Double?
        public var pressureAvg10: Double?
        public var activeFraction: Double?
        public var highEvents: UInt64?
        public var oomKills: UInt64?
        public var lastDecision: String?
        public var swapDevice: SwapDevice?
        /// For a VM with a balloon (`balloon_qmp`).
        public var reclaimShift: ReclaimShift?
        /// Swapped memory read back ahead of its faults so far (swap-in prefetch).
        public var prefetched: UInt64? = nil
    }

    /// Reclaim shifting of one VM: what its balloon was asked to take and what it took.
    public struct ReclaimShift: Codable, Sendable, Equatable {
        public var qmp: String
        public var guestMemory: UInt64?
        /// What the balloon leaves the guest now.
        public var balloonActual: UInt64?
        /// What the balloon is asked to take.
        public var shift: UInt64
        /// How much `memory.high` is raised for it (what the balloon has taken, within the limit).
        public var raised: UInt64
        /// Why the balloon cannot be reached, while it cannot.
        public var error: String?
    }

    /// A VM's swap device: its export and its I/O.
    public struct SwapDevice: Codable, Sendable, Equatable {
        public var socket: String
        public var size: UInt64
        public var allocated: UInt64
        public var connections: Int
        public var reads: UInt64
        public var writes: UInt64
        public var readBytes: UInt64
        public var writeBytes: UInt64
        public var errors: UInt64
        public var queued: Int
        public var inFlight: Int
        /// Over the last status period.
        public var iops: Double
        public var bytesPerSecond: Double
        /// nil without a reservation.
        public var reservationMet: Bool?
        /// Double paging seen on it (with a host swap device served by swapfaird; nil otherwise):
        /// guest swap-outs of pages the host had just swapped in, and the bytes that made redundant.
        public var doublePagingEvents: UInt64?
        public var redundantReadBytes: UInt64?
        public var redundantWriteBytes: UInt64?
        /// With write elision: guest swap-out bytes recorded as references to the host's blocks
        /// instead of written, and guest swap-in bytes served from them.
        public var elidedWriteBytes: UInt64? = nil
        /// Every guest swap-out byte the tracker saw (written or elided).
        public var guestSwapOutBytes: UInt64? = nil
        public var sharedReadBytes: UInt64? = nil
        /// Its ublk block device (`ublk = true`), e.g. "/dev/ublkb1".
        public var blockDevice: String? = nil
    }

    /// The host's swap device, when swapfaird serves it (`host_swap_device` or `host_swap_size`).
    public struct HostSwap: Codable, Sendable, Equatable {
        public var device: String
        public var swapInBytes: UInt64
        public var swapOutBytes: UInt64
        /// With write elision: host swap-outs that were re-swaps of unchanged pages, recorded as
        /// references instead of written, and the slots that refer to other blocks now.
        public var elidedBytes: UInt64?
        public var references: Int?
        public var sharedBlocks: Int?
        public var spareBlocks: Int?
    }

    public var daemon: Daemon
    public var vms: [VM]
    public var hostSwap: HostSwap?

    public init(daemon: Daemon, vms: [VM], hostSwap: HostSwap? = nil) {
        self.daemon = daemon
        self.vms = vms
        self.hostSwap = hostSwap
    }

    /// The report of a daemon that serves swap devices only (`--swap-only`).
    public static func swapOnly(_ c: SwapfairConfiguration, devices: SwapDevices, now: Double, started: Double,
                                ticks: UInt64, reloads: Int = 0, problems: [String] = []) -> StatusReport {
        let figures = devices.report(now: now)
        let daemon = Daemon(version: SwapfairVersion.string, pid: currentPID(), config: c.source, backend: "none (swap only)",
                            activity: "-", cgroupRoot: "-", intervalSeconds: c.host.interval, ticks: ticks,
                            uptimeSeconds: now - started, memoryBudget: 0, swapBudget: 0, lastTickMilliseconds: 0,
                            reloads: reloads, problems: problems)
        let vms = c.vms.map { vm in
            VM(name: vm.name, state: figures[vm.name] == nil ? "no swap device" : "swap device only", cgroup: nil,
               weight: Double(vm.weight), reservation: 0, limit: nil, demand: nil, entitled: nil, memoryHigh: nil,
               memoryCurrent: nil, swapCurrent: nil, swapMax: nil, stall: nil, pressureAvg10: nil, activeFraction: nil,
               highEvents: nil, oomKills: nil, lastDecision: nil, swapDevice: figures[vm.name])
        }
        return StatusReport(daemon: daemon, vms: vms, hostSwap: devices.hostReport())
    }

    static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.keyEncodingStrategy = .convertToSnakeCase
        e.outputFormatting = [.prettyPrinted, .sortedKeys]
        return e
    }()

    public func json() -> String {
        (try? Self.encoder.encode(self)).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
    }

    public static func decode(_ data: [UInt8]) throws -> StatusReport {
        let d = JSONDecoder()
        d.keyDecodingStrategy = .convertFromSnakeCase
        return try d.decode(StatusReport.self, from: Data(data))
    }
}
