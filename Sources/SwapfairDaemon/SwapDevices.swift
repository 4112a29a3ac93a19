import CSwapfairShim
import Foundation
import Logging
import Synchronization
import SwapfairConfig
import SwapfairExport
import SwapfairIO
import SwapfairSys
import SwapfairTracking
import SwapfairUblk
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Every VM's swap device: its volume, its NBD export, and its share of the one swap engine.
public final class SwapDevices: Sendable {
    public let engine: SwapEngine
    public let pool: BufferPool
    public let servers: [String: ExportServer]
    /// The host's own swap device (`host_swap_size`), served over ublk.
    public let hostSwap: UblkDevice?
    /// Double paging, seen from both sides: present with the host's swap device.
    public let tracker: DoublePagingTracker?
    let hostSwapIDFile: String
    let clients: [String: Int]
    let shares: [String: IOShare]
    private let lastSample = Mutex<(time: Double, stats: [Int: ClientIOStats])>((0, [:]))

    public enum Failure: Error, CustomStringConvertible {
        case volume(String, Volume.Failure)
        case export(String, SysError)
        case engine(SysError)
        case unknownUser(String, String)
        case hostSwap(String)
        public var description: String {
            switch self {
            case .volume(let vm, let e): return "VM \(vm): \(e)"
            case .export(let vm, let e): return "VM \(vm): cannot serve its swap device: \(e)"
            case .engine(let e): return "cannot start the swap engine: \(e)"
            case .unknownUser(let vm, let u): return "VM \(vm): swap_device allows \"\(u)\", which is not a user or group here"
            case .hostSwap(let why): return "cannot serve the host's swap device (host_swap_size or host_swap_device): \(why)"
            }
        }
    }

    /// Opens every configured volume (creating it sparse if missing) and starts its export.
    public init(configuration c: SwapfairConfiguration, logger: Logger, doublePagingEvents: String? = nil) throws(Failure) {
        let devices = c.vms.enumerated().compactMap { i, vm in vm.swapDevice.map { (i, vm, $0) } }
        // Buffers for every request in flight, and for reads whose data is still being sent.
        pool = BufferPool(count: c.host.swapQueueDepth * 2, bufferSize: 1 << 20)
        do { engine = try SwapEngine(queueDepth: c.host.swapQueueDepth, pool: pool) } catch { throw .engine(error) }
        let volumes = c.host.stateDir + "/volumes"
        do {
            try FileAccess.makeDirectories(c.host.stateDir, mode: 0o700)
            try FileAccess.makeDirectory(volumes, mode: 0o700)
        } catch { throw .export("*", error) }
        var servers: [String: ExportServer] = [:], clients: [String: Int] = [:], shares: [String: IOShare] = [:]
        let tracker = c.host.hostSwapSize == nil && c.host.hostSwapDevice == nil ? nil : DoublePagingTracker()
        let eventLog = doublePagingEvents.flatMap { DoublePagingEventLog(path: $0) }
        if let doublePagingEvents, eventLog == nil {
            logger.warning("cannot write the double-paging event log", metadata: ["path": "\(doublePagingEvents)"])
        }
        let observer = tracker.map { Self.guestWrites(into: $0, log: eventLog) }
        for (index, vm, d) in devices {
            let volume: Volume
            do { volume = try Volume(path: "\(volumes)/\(vm.name).img", size: d.size) } catch { throw .volume(vm.name, error) }
            var access = ExportAccess()
            for u in d.users {
                guard let uid = UInt32(u) ?? getpwnam(u).map({ $0.pointee.pw_uid }) else { throw .unknownUser(vm.name, u) }
                access.uids.insert(uid)
            }
            for g in d.groups {
                guard let gid = UInt32(g) ?? getgrnam(g).map({ $0.pointee.gr_gid }) else { throw .unknownUser(vm.name, g) }
                access.gids.insert(gid)
            }
            let share = Self.share(d)
            engine.setShare(client: index, share)
            do {
                let server = try ExportServer(name: vm.name, socketPath: "\(c.host.nbdDir)/\(vm.name).sock", volume: volume,
                                              client: index, engine: engine, pool: pool, access: access, logger: logger,
                                              writeObserver: observer)
                servers[vm.name] = server
            } catch { throw .export(vm.name, error) }
            clients[vm.name] = index
            shares[vm.name] = share
            logger.notice("swap device ready", metadata: [
                "vm": "\(vm.name)", "socket": "\(c.host.nbdDir)/\(vm.name).sock", "volume": "\(volume.path)",
                "size": "\(d.size)", "direct_io": "\(volume.direct)", "share": "\(Self.describe(share))",
            ])
        }
        self.servers = servers
        self.clients = clients
        self.shares = shares
        self.tracker = tracker
        hostSwapIDFile = Self.hostSwapIDFile(c)
        hostSwap = try Self.hostSwapDevice(c, tracker: tracker, logger: logger)
        engine.start()
        for s in servers.values { s.start() }
    }

    /// What the exports tell the tracker: every guest write, page by page, and each event to the log.
    static func guestWrites(into tracker: DoublePagingTracker, log: DoublePagingEventLog?)
        -> @Sendable (String, UInt64, UnsafeRawBufferPointer) -> Void
    {
        return { vm, offset, bytes in
            let now = monotonicSeconds()
            tracker.guestSwappedOut(vm: vm, bytes, now: now) { page in
                log?.record(time: now, vm: vm, block: offset / UInt64(PageDigest.pageSize) + UInt64(page))
            }
        }
    }

    /// The host's swap device: `<state_dir>/host-swap.img` as `/dev/ublkbN`. Its queue serves
    /// requests from preallocated buffers on a thread of its own, so swap-out needs no memory.
    static func hostSwapDevice(_ c: SwapfairConfiguration, tracker: DoublePagingTracker?, logger: Logger) throws(Failure)
        -> UblkDevice?
    {
        guard c.host.hostSwapSize != nil || c.host.hostSwapDevice != nil, let tracker else { return nil }
        if let why = UblkDevice.unavailableReason() { throw .hostSwap(why) }
        let volume: Volume
        do {
            if let device = c.host.hostSwapDevice {
                volume = try Volume(device: device)
            } else {
                volume = try Volume(path: c.host.stateDir + "/host-swap.img", size: c.host.hostSwapSize ?? 0)
            }
        } catch {
            throw .hostSwap("\(error)")
        }
        let size = volume.size
        // The device's id, kept so that a daemon restarted after a crash takes the device over
        // (the kernel holds its I/O meanwhile) instead of leaving the swap on it to fail.
        let idFile = hostSwapIDFile(c)
        let previous = (try? String(contentsOfFile: idFile, encoding: .utf8)).flatMap {
            UInt32($0.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        do {
            let device = try UblkDevice(target: TrackedTarget(inner: VolumeTarget(volume: volume), tracker: tracker),
                                        queueDepth: min(c.host.swapQueueDepth, 128), recover: previous)
            try? "\(device.id)\n".write(toFile: idFile, atomically: true, encoding: .utf8)
            logger.notice(device.recovered ? "host swap device taken over from the previous daemon; its held I/O resumes"
                                           : "host swap device ready: swapon it to swap through swapfaird", metadata: [
                "device": "\(device.blockDevicePath)", "volume": "\(volume.path)", "size": "\(size)",
                "direct_io": "\(volume.direct)",
            ])
            return device
        } catch { throw .hostSwap("\(error)") }
    }

    static func hostSwapIDFile(_ c: SwapfairConfiguration) -> String { c.host.stateDir + "/host-swap.ublk-id" }

    static func share(_ d: SwapDeviceConfig) -> IOShare {
        func value(_ r: IORate?) -> Double? {
            switch r {
            case .iops(let v)?: return v
            case .bytesPerSecond(let b)?: return Double(b)
            case nil: return nil
            }
        }
        func bytes(_ r: IORate?) -> Bool { if case .bytesPerSecond? = r { return true } else { return false } }
        let unit: IOShare.Unit = bytes(d.reservation) || bytes(d.limit) ? .bytesPerSecond : .iops
        return IOShare(weight: Double(d.weight), reservation: value(d.reservation), limit: value(d.limit), unit: unit)
    }

    static func describe(_ s: IOShare) -> String {
        let u = s.unit == .iops ? " IOPS" : " B/s"
        return "weight \(Int(s.weight))" + (s.reservation.map { ", reservation \(Int($0))\(u)" } ?? "")
            + (s.limit.map { ", limit \(Int($0))\(u)" } ?? "")
    }

    public func stop(logger: Logger? = nil) {
        for s in servers.values { s.stop() }
        engine.stop()
        if let hostSwap {
            // Pages still in it would be lost with it: take it out of use first.
            if swapfair_swapoff(hostSwap.blockDevicePath) == 0 {
                logger?.notice("host swap device taken out of use (swapoff)", metadata: ["device": "\(hostSwap.blockDevicePath)"])
            } else if errno != EINVAL {
                logger?.error("swapoff of the host swap device failed; its pages are lost when it stops",
                              metadata: ["device": "\(hostSwap.blockDevicePath)", "error": "\(Errno(rawValue: errno).message)"])
            }
            do {
                try hostSwap.stop()
                unlink(hostSwapIDFile)
            } catch {
                logger?.error("cannot stop the host swap device", metadata: ["error": "\(error)"])
            }
        }
    }

    /// Per-VM figures since the previous call (rates) and in total.
    public func report(now: Double) -> [String: StatusReport.SwapDevice] {
        let stats = engine.statistics()
        let paging = tracker?.counters() ?? [:]
        let (t0, previous) = lastSample.withLock { s in
            defer { s = (now, stats) }
            return (s.time, s.stats)
        }
        let dt = max(now - t0, 1e-3)
        var out: [String: StatusReport.SwapDevice] = [:]
        for (name, client) in clients {
            let s = stats[client] ?? ClientIOStats()
            let p = previous[client] ?? ClientIOStats()
            let iops = Double((s.reads + s.writes) - (p.reads + p.writes)) / dt
            let bytes = Double((s.readBytes + s.writeBytes) - (p.readBytes + p.writeBytes)) / dt
            let share = shares[name]
            var met: Bool?
            if let r = share?.reservation {
                let achieved = share?.unit == .iops ? iops : bytes
                met = achieved >= r * 0.95 || s.queued == 0
            }
            out[name] = StatusReport.SwapDevice(
                socket: servers[name]?.socketPath ?? "", size: servers[name]?.volume.size ?? 0,
                allocated: servers[name]?.volume.allocatedBytes ?? 0, connections: servers[name]?.connectionCount ?? 0,
                reads: s.reads, writes: s.writes, readBytes: s.readBytes, writeBytes: s.writeBytes, errors: s.errors,
                queued: s.queued, inFlight: s.inFlight, iops: iops, bytesPerSecond: bytes, reservationMet: met,
                doublePagingEvents: tracker.map { _ in paging[name]?.events ?? 0 },
                redundantReadBytes: tracker.map { _ in paging[name]?.redundantReadBytes ?? 0 },
                redundantWriteBytes: tracker.map { _ in paging[name]?.redundantWriteBytes ?? 0 })
        }
        return out
    }
}

/// Keeps the daemon's own memory resident and its I/O exempt from memory-reclaim throttling: a
/// process that serves swap must not need free memory, or wait for reclaim, to make progress.
public enum SwapServerProtection {
    public static func apply(logger: Logger) {
        if mlockall(Int32(MCL_CURRENT | MCL_FUTURE)) != 0 {
            logger.warning("mlockall failed: the daemon's memory may be swapped, which can deadlock swap it serves",
                           metadata: ["error": "\(Errno(rawValue: errno).message)"])
        }
        do { try setIOFlusher() } catch {
            logger.warning("PR_SET_IO_FLUSHER failed (kernel 5.6 or later and CAP_SYS_RESOURCE are needed)",
                           metadata: ["error": "\(error)"])
        }
    }
}
