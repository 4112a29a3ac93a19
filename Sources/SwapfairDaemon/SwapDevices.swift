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

/// Every VM's swap device: its volume, its NBD export (and ublk device, with `ublk = true`), and
/// its share of the one swap engine. Devices are added, re-shared and retired live (a reload);
/// what the engine knows a VM by (its client number) never changes while the daemon runs.
public final class SwapDevices: Sendable {
    public let engine: SwapEngine
    public let pool: BufferPool
    /// The host's own swap device (`host_swap_size`), served over ublk.
    public let hostSwap: UblkDevice?
    /// Double paging, seen from both sides: present with the host's swap device.
    public let tracker: DoublePagingTracker?
    /// Write elision over the host's swap device, when `write_elision` is on.
    public let elision: WriteElision?
    let hostSwapIDFile: String
    /// What a device added later needs of how the first ones were made.
    let context: Context
    let logger: Logger
    private let devices = Mutex(Devices())
    private let lastSample = Mutex<(time: Double, stats: [Int: ClientIOStats])>((0, [:]))

    struct Context: Sendable {
        let volumes: String
        let nbdDir: String
        let queueDepth: Int
        let observer: (@Sendable (String, UInt64, UnsafeRawBufferPointer) -> Void)?
        let sharing: ElisionSharing?
        let health: Health?
    }

    /// The devices being served, by VM name.
    struct Devices {
        var servers: [String: ExportServer] = [:]
        var blockDevices: [String: UblkDevice] = [:]
        var clients: [String: Int] = [:]
        var shares: [String: IOShare] = [:]
        var nextClient = 0
        /// Removed VMs whose exports still have clients: served until the last one goes.
        var retiring: [String: ExportServer] = [:]
    }

    public enum Failure: Error, CustomStringConvertible {
        case volume(String, Volume.Failure)
        case export(String, SysError)
        case engine(SysError)
        case unknownUser(String, String)
        case hostSwap(String)
        case blockDevice(String, String)
        public var description: String {
            switch self {
            case .volume(let vm, let e): return "VM \(vm): \(e)"
            case .export(let vm, let e): return "VM \(vm): cannot serve its swap device: \(e)"
            case .engine(let e): return "cannot start the swap engine: \(e)"
            case .unknownUser(let vm, let u): return "VM \(vm): swap_device allows \"\(u)\", which is not a user or group here"
            case .hostSwap(let why): return "cannot serve the host's swap device (host_swap_size or host_swap_device): \(why)"
            case .blockDevice(let vm, let why): return "VM \(vm): cannot serve its swap volume as a ublk block device (ublk = true): \(why)"
            }
        }
    }

    /// The NBD exports being served, by VM name.
    public var servers: [String: ExportServer] { devices.withLock { $0.servers } }
    /// The VMs' ublk block devices (`ublk = true`).
    public var blockDevices: [String: UblkDevice] { devices.withLock { $0.blockDevices } }

    /// Opens every configured volume (creating it sparse if missing) and starts its export.
    public init(configuration c: SwapfairConfiguration, logger: Logger, doublePagingEvents: String? = nil,
                health: Health? = nil) throws(Failure) {
        let configured = c.vms.filter { $0.swapDevice != nil }
        self.logger = logger
        // Buffers for every request in flight, and for reads whose data is still being sent.
        // (A host swap device alone needs none: its queue has buffers of its own.) Sized for the
        // VMs' devices even when none is configured yet, so that a reload can add one.
        pool = BufferPool(count: c.host.swapQueueDepth * 2, bufferSize: 1 << 20)
        do { engine = try SwapEngine(queueDepth: c.host.swapQueueDepth, pool: pool) } catch { throw .engine(error) }
        let volumes = c.host.stateDir + "/volumes"
        do {
            try FileAccess.makeDirectories(c.host.stateDir, mode: 0o700)
            try FileAccess.makeDirectory(volumes, mode: 0o700)
        } catch { throw .export("*", error) }
        if let vm = configured.first(where: { $0.swapDevice?.ublk == true }), let why = UblkDevice.unavailableReason() {
            throw .blockDevice(vm.name, why)
        }
        let tracker = c.host.hostSwapSize == nil && c.host.hostSwapDevice == nil ? nil : DoublePagingTracker(window: c.host.doublePagingWindow)
        let eventLog = doublePagingEvents.flatMap { DoublePagingEventLog(path: $0) }
        if let doublePagingEvents, eventLog == nil {
            logger.warning("cannot write the double-paging event log", metadata: ["path": "\(doublePagingEvents)"])
        }
        let hostVolume = try Self.hostSwapVolume(c)
        let elision = try Self.writeElision(c, hostVolume: hostVolume, guests: configured.map { ($0.name, $0.swapDevice?.size ?? 0) },
                                            logger: logger)
        let sharing = elision.flatMap { e in tracker.map { ElisionSharing(elision: e.elision, tracker: $0, log: eventLog) } }
        // With elision the sharing tells the tracker of each guest write (one digest for both).
        let observer = sharing != nil ? nil : tracker.map { Self.guestWrites(into: $0, log: eventLog) }
        context = Context(volumes: volumes, nbdDir: c.host.nbdDir, queueDepth: c.host.swapQueueDepth, observer: observer,
                          sharing: sharing, health: health)
        self.tracker = tracker
        hostSwapIDFile = Self.hostSwapIDFile(c)
        self.elision = elision?.elision
        hostSwap = try hostVolume.flatMap { v throws(Failure) in
            try Self.hostSwapDevice(c, volume: v, tracker: tracker, elision: elision, logger: logger)
        }
        do {
            var pending: [(VMConfig, ExportServer, EngineTarget?, (uid: UInt32, gid: UInt32), Bool)] = []
            for vm in configured { pending.append(try prepare(vm)) }
            engine.start()
            // After the engine: a ublk device takes I/O (the kernel's partition scan) as it starts.
            for p in pending { try serve(p) }
        } catch {
            for s in servers.values { s.stop() }
            for d in blockDevices.values { d.detach() }
            engine.stop()
            if let hostSwap {
                do { try hostSwap.stop() } catch let stopError {
                    logger.error("cannot stop the host swap device after a failed start", metadata: ["error": "\(stopError)"])
                }
            }
            throw error
        }
        do {
            try Self.removeStaleBlockDevices(in: volumes, links: c.host.nbdDir, keeping: Set(blockDevices.keys), logger: logger)
        } catch {
            logger.warning("cannot look for the ublk devices of VMs no longer configured", metadata: ["error": "\(error)"])
        }
    }

    /// A VM's volume opened, its export made (not yet accepting) and its engine share set.
    private func prepare(_ vm: VMConfig) throws(Failure)
        -> (VMConfig, ExportServer, EngineTarget?, (uid: UInt32, gid: UInt32), Bool)
    {
        guard let d = vm.swapDevice else { throw .export(vm.name, SysError("configure", "swap_device", .invalidArgument)) }
        let volume: Volume
        do { volume = try Volume(path: "\(context.volumes)/\(vm.name).img", size: d.size) } catch { throw .volume(vm.name, error) }
        var access = ExportAccess()
        var uids: [UInt32] = [], gids: [UInt32] = []
        for u in d.users {
            guard let uid = UInt32(u) ?? getpwnam(u).map({ $0.pointee.pw_uid }) else { throw .unknownUser(vm.name, u) }
            access.uids.insert(uid)
            uids.append(uid)
        }
        for g in d.groups {
            guard let gid = UInt32(g) ?? getgrnam(g).map({ $0.pointee.gr_gid }) else { throw .unknownUser(vm.name, g) }
            access.gids.insert(gid)
            gids.append(gid)
        }
        let share = Self.share(d)
        let index = devices.withLock { s in
            if let existing = s.clients[vm.name] { return existing }
            defer { s.nextClient += 1 }
            return s.nextClient
        }
        let rotational = BlockDeviceFacts.isRotational(fd: volume.fd)
        let server: ExportServer
        do {
            server = try ExportServer(name: vm.name, socketPath: "\(context.nbdDir)/\(vm.name).sock", volume: volume,
                                      client: index, engine: engine, pool: pool, access: access, logger: logger,
                                      writeObserver: context.observer, sharing: context.sharing, rotational: rotational,
                                      health: context.health)
        } catch { throw .export(vm.name, error) }
        engine.setShare(client: index, share)
        devices.withLock { s in
            s.clients[vm.name] = index
            s.shares[vm.name] = share
        }
        let target = d.ublk ? EngineTarget(name: vm.name, volume: volume, client: index, engine: engine,
                                           writeObserver: context.observer, sharing: context.sharing) : nil
        logger.notice("swap device ready", metadata: [
            "vm": "\(vm.name)", "socket": "\(server.socketPath)", "volume": "\(volume.path)",
            "size": "\(d.size)", "direct_io": "\(volume.direct)", "rotational": "\(rotational)",
            "share": "\(Self.describe(share))",
        ])
        return (vm, server, target, (uids.first ?? 0, gids.first ?? 0), rotational)
    }

    /// Starts what `prepare` made: the ublk device (with the engine running), then the export.
    private func serve(_ p: (VMConfig, ExportServer, EngineTarget?, (uid: UInt32, gid: UInt32), Bool)) throws(Failure) {
        let (vm, server, target, owner, rotational) = p
        if let target {
            let device = try Self.blockDevice(target, directory: context.volumes, linkDirectory: context.nbdDir, owner: owner,
                                              rotational: rotational, queueDepth: context.queueDepth, logger: logger)
            devices.withLock { $0.blockDevices[vm.name] = device }
        }
        devices.withLock { $0.servers[vm.name] = server }
        server.start()
    }

    /// A VM added by a reload: its volume, export (and ublk device) served from now on.
    public func add(_ vm: VMConfig) throws(Failure) {
        if vm.swapDevice?.ublk == true, let why = UblkDevice.unavailableReason() { throw .blockDevice(vm.name, why) }
        let p = try prepare(vm)
        do { try serve(p) } catch {
            p.1.stop()
            throw error
        }
    }

    /// A VM's new share of the engine (a reload), in force from its next request; its clients
    /// and its requests in flight are not touched.
    public func setShare(vm: String, _ d: SwapDeviceConfig) {
        let share = Self.share(d)
        guard let client = devices.withLock({ s -> Int? in
            guard let c = s.clients[vm] else { return nil }
            s.shares[vm] = share
            return c
        }) else { return }
        engine.setShare(client: client, share)
        logger.notice("swap device share changed", metadata: ["vm": "\(vm)", "share": "\(Self.describe(share))"])
    }

    /// A VM removed by a reload: its export stops accepting at once; the clients it has are served
    /// until they disconnect, then its share of the engine goes. (A ublk device is not retired
    /// live: the kernel does not tell when its last opener is gone. The reload refuses that.)
    public func retire(vm: String) {
        guard let server = devices.withLock({ s -> ExportServer? in
            guard let server = s.servers.removeValue(forKey: vm) else { return nil }
            s.retiring[vm] = server
            return server
        }) else { return }
        server.stopAccepting()
        logger.notice("swap device retired: no new clients; served until its last client disconnects",
                      metadata: ["vm": "\(vm)", "clients": "\(server.connectionCount)"])
        startThread(named: "retire-\(vm)") { [self] in
            server.waitUntilIdle()
            let client = devices.withLock { s -> Int? in
                s.retiring[vm] = nil
                s.shares[vm] = nil
                // Added again meanwhile: it keeps its client number and its share.
                return s.servers[vm] == nil ? s.clients.removeValue(forKey: vm) : nil
            }
            if let client { engine.removeClient(client) }
            logger.notice("swap device stopped: its last client disconnected", metadata: ["vm": "\(vm)"])
        }
    }

    /// A VM's volume as `/dev/ublkbN`, owned by `owner` (mode 0660), so that the VM's VMM, and no
    /// other VM's, can open it, and linked as `<linkDirectory>/NAME.ublk` beside its NBD socket, a
    /// name a VM's unit can give its VMM. Made with ublk's user recovery, as the host's swap device
    /// is: a restarted daemon takes it over (its id is kept in `<volumes>/NAME.ublk-id`) and the
    /// requests the kernel held meanwhile go on, so a restart costs the guest no I/O error.
    /// `rotational`: whether the disk under the volume spins, as its NBD export says too.
    static func blockDevice(_ target: EngineTarget, directory: String, linkDirectory: String, owner: (uid: UInt32, gid: UInt32),
                            rotational: Bool, queueDepth: Int, logger: Logger) throws(Failure) -> UblkDevice {
        let idFile = "\(directory)/\(target.name).ublk-id"
        let previous = savedDeviceID(idFile, logger: logger)
        let device: UblkDevice
        do {
            device = try UblkDevice(target: target, queueDepth: min(queueDepth, 128), maxIOBytes: 512 << 10, recover: previous,
                                    threadName: "ublk-\(target.name)", rotational: rotational)
        } catch { throw .blockDevice(target.name, "\(error)") }
        recordDeviceID(device.id, in: idFile, what: "VM \(target.name)'s ublk device", logger: logger)
        let path = device.blockDevicePath
        // The node appears with the device (devtmpfs); udev may take a moment.
        var tries = 0
        while access(path, F_OK) != 0 && tries < 200 {
            usleep(10_000)
            tries += 1
        }
        if chown(path, owner.uid, owner.gid) != 0 || chmod(path, 0o660) != 0 {
            logger.warning("cannot give the VM's ublk device to its users; only root can open it",
                           metadata: ["vm": "\(target.name)", "device": "\(path)", "error": "\(Errno(rawValue: errno).message)"])
        }
        let link = "\(linkDirectory)/\(target.name).ublk"
        unlink(link)
        if symlink(path, link) != 0 {
            logger.warning("cannot link the VM's ublk device by name", metadata: [
                "vm": "\(target.name)", "link": "\(link)", "error": "\(Errno(rawValue: errno).message)"])
        }
        var metadata: Logger.Metadata = ["vm": "\(target.name)", "device": "\(path)", "link": "\(link)", "uid": "\(owner.uid)",
                                         "gid": "\(owner.gid)"]
        if device.recovered { metadata["waited"] = "\((device.recoveryWait * 10).rounded() / 10) s" }
        logger.notice(device.recovered ? "VM swap block device taken over from the previous daemon; its held I/O resumes"
                                       : "VM swap block device ready", metadata: metadata)
        return device
    }

    /// Devices left by an earlier configuration (a VM gone, or its `ublk` turned off): removed, on
    /// a thread of their own, since the kernel lets a device go only once nothing holds it open.
    static func removeStaleBlockDevices(in directory: String, links: String, keeping: Set<String>, logger: Logger)
        throws(SysError)
    {
        for f in try FileAccess.list(directory) where f.hasSuffix(".ublk-id") && !keeping.contains(String(f.dropLast(8))) {
            let path = "\(directory)/\(f)", vm = String(f.dropLast(8))
            unlink("\(links)/\(vm).ublk")
            guard let id = savedDeviceID(path, logger: logger) else { unlink(path); continue }
            startThread(named: "ublk-remove") {
                do {
                    try UblkDevice.remove(id: id)
                    logger.notice("removed the ublk device of a VM no longer served over ublk", metadata: [
                        "vm": "\(vm)", "device": "/dev/ublkb\(id)"])
                } catch {
                    logger.warning("cannot remove the ublk device of a VM no longer served over ublk", metadata: [
                        "vm": "\(vm)", "device": "/dev/ublkb\(id)", "error": "\(error)"])
                }
                unlink(path)
            }
        }
    }

    /// What the exports tell the tracker: every guest write, page by page, and each event to the log.
    static func guestWrites(into tracker: DoublePagingTracker, log: DoublePagingEventLog?)
        -> @Sendable (String, UInt64, UnsafeRawBufferPointer) -> Void
    {
        return { vm, offset, bytes in observeGuestWrite(tracker, log: log, vm: vm, offset: offset, bytes) }
    }

    /// Tells the tracker of a guest write and logs each double-paging event it finds.
    static func observeGuestWrite(_ tracker: DoublePagingTracker, log: DoublePagingEventLog?, vm: String, offset: UInt64,
                                  _ bytes: UnsafeRawBufferPointer, digests: UnsafeBufferPointer<UInt64>? = nil) {
        let now = monotonicSeconds()
        tracker.guestSwappedOut(vm: vm, bytes, digests: digests, now: now) { page in
            log?.record(time: now, vm: vm, block: offset / UInt64(PageDigest.pageSize) + UInt64(page))
        }
    }

    /// The host's swap volume (`host_swap_device`, or `<state_dir>/host-swap.img`), if configured.
    static func hostSwapVolume(_ c: SwapfairConfiguration) throws(Failure) -> Volume? {
        guard c.host.hostSwapSize != nil || c.host.hostSwapDevice != nil else { return nil }
        if let why = UblkDevice.unavailableReason() { throw .hostSwap(why) }
        do {
            if let device = c.host.hostSwapDevice { return try Volume(device: device) }
            return try Volume(path: c.host.stateDir + "/host-swap.img", size: c.host.hostSwapSize ?? 0)
        } catch {
            throw .hostSwap("\(error)")
        }
    }

    /// Write elision's tables (`<shared_map_dir>/host.map`, `vm-NAME.refs`) and state, when on.
    static func writeElision(_ c: SwapfairConfiguration, hostVolume: Volume?, guests: [(String, UInt64)], logger: Logger)
        throws(Failure) -> (elision: WriteElision, slots: Int)?
    {
        guard c.host.writeElision else {
            // Turned off while guests share blocks: the host's slots may live elsewhere and guests'
            // pages in the host's blocks; serving without the map would hand out wrong pages.
            guard hostVolume != nil else { return nil }
            let tables: [String]
            do { tables = try FileAccess.list(c.host.sharedMapDir) } catch where error.errno == .noSuchFileOrDirectory {
                tables = []
            } catch {
                throw .hostSwap("cannot tell whether \(c.host.sharedMapDir) records shared blocks: \(error)")
            }
            if BlockTable.holdsEntries(at: c.host.sharedMapDir + "/host.map")
                || tables.contains(where: { $0.hasSuffix(".refs") && BlockTable.holdsEntries(at: c.host.sharedMapDir + "/" + $0) })
            {
                throw .hostSwap("write_elision is off but \(c.host.sharedMapDir) records shared blocks from when it was on; "
                    + "turn it on again (the pages in them would be served wrong), or remove the tables once no guest and "
                    + "no host swap uses them (after a reboot they are gone anyway)")
            }
            return nil
        }
        guard let hostVolume else { throw .hostSwap("write_elision needs the host's swap device (host_swap_device)") }
        let page = UInt64(PageDigest.pageSize)
        let physical = Int(hostVolume.size / page)
        let spare = Int((c.host.elisionSpare ?? hostVolume.size / 8) / page)
        guard spare >= 1, spare < physical / 2 else {
            throw .hostSwap("elision_spare must leave at least half of the host swap volume (\(hostVolume.size) bytes) as swap")
        }
        let dir = c.host.sharedMapDir
        do { try FileAccess.makeDirectories(dir, mode: 0o700) } catch { throw .hostSwap("\(error)") }
        let map: SharedBlockMap
        do {
            let host = try BlockTable(path: dir + "/host.map", count: physical - spare)
            var tables: [String: BlockTable] = [:]
            for (name, size) in guests { tables[name] = try BlockTable(path: dir + "/vm-\(name).refs", count: Int(size / page)) }
            // The host's own references: slots it wrote again with bytes another block held.
            tables[SharedBlockMap.hostReferences] = try BlockTable(path: dir + "/host.refs", count: physical - spare)
            // Tables of VMs no longer configured still hold blocks: they count, or the host would
            // reuse blocks that such a VM, configured again, reads its pages from.
            for f in try FileAccess.list(dir) where f.hasPrefix("vm-") && f.hasSuffix(".refs") {
                let name = String(f.dropFirst(3).dropLast(5))
                guard tables[name] == nil, let count = BlockTable.entries(at: dir + "/" + f), count > 0 else { continue }
                tables[name] = try BlockTable(path: dir + "/" + f, count: count)
                logger.notice("write elision: kept the references of a VM that is no longer configured", metadata: ["vm": "\(name)"])
            }
            map = SharedBlockMap(hostMap: host, physicalBlocks: physical, guests: tables)
        } catch {
            throw .hostSwap("\(error)")
        }
        let elision = WriteElision(map: map, hostFD: hostVolume.fd)
        let s = elision.summary()
        if s.problems.isEmpty {
            logger.notice("write elision on: shared-block accounting rebuilt from its tables", metadata: [
                "tables": "\(dir)", "shared_blocks": "\(s.sharedBlocks)", "spare_blocks": "\(s.spareBlocks)",
                "promised": "\(s.promised)", "swap_slots": "\(physical - spare)",
            ])
        } else {
            logger.error("write elision: the shared-block tables disagree; existing references are served, no new ones are made",
                         metadata: ["tables": "\(dir)", "problems": "\(s.problems.joined(separator: "; "))"])
        }
        return (elision, physical - spare)
    }

    /// The host's swap device: its volume as `/dev/ublkbN`. Its queue serves requests from
    /// preallocated buffers on a thread of its own, so swap-out needs no memory.
    static func hostSwapDevice(_ c: SwapfairConfiguration, volume: Volume, tracker: DoublePagingTracker?,
                               elision: (elision: WriteElision, slots: Int)?, logger: Logger) throws(Failure) -> UblkDevice?
    {
        guard let tracker else { return nil }
        let size = volume.size
        // The device's id, kept so that a daemon restarted after a crash takes the device over
        // (the kernel holds its I/O meanwhile) instead of leaving the swap on it to fail.
        let idFile = hostSwapIDFile(c)
        let previous = savedDeviceID(idFile, logger: logger)
        do {
            let maxIO = 512 << 10
            let target: any UblkTarget = if let elision {
                ElidingTarget(inner: VolumeTarget(volume: volume), tracker: tracker, elision: elision.elision,
                              slots: elision.slots, maxIOBytes: maxIO)
            } else {
                TrackedTarget(inner: VolumeTarget(volume: volume), tracker: tracker)
            }
            // As rotational as the disk under the volume: the kernel reads swap back by slot
            // clusters from a spinning disk and along each address space from the others, and the
            // host should swap through swapfaird as it would to that disk.
            let rotational = BlockDeviceFacts.isRotational(fd: volume.fd)
            let device = try UblkDevice(target: target, queueDepth: min(c.host.swapQueueDepth, 128), maxIOBytes: maxIO,
                                        recover: previous, rotational: rotational)
            recordDeviceID(device.id, in: idFile, what: "the host's swap device", logger: logger)
            var metadata: Logger.Metadata = [
                "device": "\(device.blockDevicePath)", "volume": "\(volume.path)", "size": "\(size)",
                "direct_io": "\(volume.direct)", "rotational": "\(rotational)",
            ]
            if device.recovered { metadata["waited"] = "\((device.recoveryWait * 10).rounded() / 10) s" }
            logger.notice(device.recovered ? "host swap device taken over from the previous daemon; its held I/O resumes"
                                           : "host swap device ready: swapon it to swap through swapfaird", metadata: metadata)
            return device
        } catch { throw .hostSwap("\(error)") }
    }

    static func hostSwapIDFile(_ c: SwapfairConfiguration) -> String { c.host.stateDir + "/host-swap.ublk-id" }

    /// The ublk device id a previous daemon kept in `path`, if any. One that cannot be read is
    /// said: without it the device is made anew instead of taken over.
    static func savedDeviceID(_ path: String, logger: Logger) -> UInt32? {
        let text: String?
        do { text = try FileAccess.readIfPresent(path) } catch {
            logger.error("cannot read the id of the ublk device a previous daemon served; a new device is made",
                         metadata: ["file": "\(path)", "error": "\(error)"])
            return nil
        }
        guard let text else { return nil }
        guard let id = UInt32(text.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            logger.error("the kept ublk device id is not a number; a new device is made", metadata: ["file": "\(path)"])
            return nil
        }
        return id
    }

    /// Keeps a device's id for the next daemon, which takes the device over with it (the kernel
    /// holds its I/O meanwhile). Without it a restart would leave the device's users with errors:
    /// said at error level, since the device serves on all the same.
    static func recordDeviceID(_ id: UInt32, in path: String, what: String, logger: Logger) {
        do { try FileAccess.replace(path, with: "\(id)\n") } catch {
            logger.error("cannot record \(what)'s id: a restarted daemon could not take the device over", metadata: [
                "file": "\(path)", "error": "\(error)"])
        }
    }

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

    /// How long a stop waits for the requests in flight to be answered.
    public static let drainSeconds = 5.0
    var drainSeconds: Double { Self.drainSeconds }

    public func stop(logger: Logger? = nil) {
        let current = devices.withLock { $0 }
        for s in current.servers.values { s.stop() }
        for s in current.retiring.values { s.stop() }
        // The VMs' ublk devices stay for the next daemon, which takes them over: their requests wait
        // in the kernel meanwhile, as after a crash. Those the engine has are answered first.
        for d in current.blockDevices.values { d.detach() }
        // Every connection answers what the engine holds for it before it lets go; a disk that
        // does not answer within the deadline is left to the process's exit.
        let deadline = monotonicSeconds() + drainSeconds
        for (name, s) in current.servers.merging(current.retiring, uniquingKeysWith: { a, _ in a })
            where !s.waitUntilIdle(deadline: deadline) {
            logger?.warning("a swap device's requests were still in flight at the stop's deadline", metadata: [
                "vm": "\(name)", "deadline_s": "\(drainSeconds)"])
        }
        engine.stop()
        if let elision {
            let s = elision.summary(check: true)
            logger?.notice("write elision: shared-block accounting at stop", metadata: [
                "consistent": "\(s.consistent)", "shared_blocks": "\(s.sharedBlocks)", "spare_blocks": "\(s.spareBlocks)",
                "redirects": "\(s.redirects)", "host_elided_bytes": "\(s.hostElidedBytes)",
                "host_references": "\(s.hostReferences)",
                "elided_bytes": "\(elision.counters().values.reduce(0) { $0 + $1.elidedBytes })",
            ])
        }
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
        let elided = elision?.counters() ?? [:]
        let (t0, previous) = lastSample.withLock { s in
            defer { s = (now, stats) }
            return (s.time, s.stats)
        }
        let dt = max(now - t0, 1e-3)
        var out: [String: StatusReport.SwapDevice] = [:]
        let current = devices.withLock { $0 }
        let servers = current.servers.merging(current.retiring) { a, _ in a }
        let shares = current.shares, blockDevices = current.blockDevices
        for (name, client) in current.clients {
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
            var device = StatusReport.SwapDevice(
                socket: servers[name]?.socketPath ?? "", size: servers[name]?.volume.size ?? 0,
                allocated: servers[name]?.volume.allocatedBytes ?? 0, connections: servers[name]?.connectionCount ?? 0,
                reads: s.reads, writes: s.writes, readBytes: s.readBytes, writeBytes: s.writeBytes, errors: s.errors,
                queued: s.queued, inFlight: s.inFlight, iops: iops, bytesPerSecond: bytes, reservationMet: met,
                doublePagingEvents: tracker.map { _ in paging[name]?.events ?? 0 },
                redundantReadBytes: tracker.map { _ in paging[name]?.redundantReadBytes ?? 0 },
                redundantWriteBytes: tracker.map { _ in paging[name]?.redundantWriteBytes ?? 0 })
            if tracker != nil { device.guestSwapOutBytes = paging[name]?.guestSwapOutBytes ?? 0 }
            device.blockDevice = blockDevices[name]?.blockDevicePath
            if elision != nil {
                device.elidedWriteBytes = elided[name]?.elidedBytes ?? 0
                device.sharedReadBytes = elided[name]?.sharedReadBytes ?? 0
            }
            out[name] = device
        }
        return out
    }
}

extension SwapDevices {
    /// What the host's swap device has seen, if swapfaird serves it.
    public func hostReport() -> StatusReport.HostSwap? {
        guard let hostSwap, let tracker else { return nil }
        let (swapIn, swapOut) = tracker.hostBytes()
        var r = StatusReport.HostSwap(device: hostSwap.blockDevicePath, swapInBytes: swapIn, swapOutBytes: swapOut)
        if let elision {
            let s = elision.summary()
            r.elidedBytes = s.hostElidedBytes
            r.references = s.hostReferences
            r.sharedBlocks = s.sharedBlocks
            r.spareBlocks = s.spareBlocks
        }
        return r
    }
}

/// Keeps the daemon's own memory resident and its I/O exempt from memory-reclaim throttling: a
/// process that serves swap must not need free memory, or wait for reclaim, to make progress.
public enum SwapServerProtection {
    public static func apply(logger: Logger) {
        // Freed heap pages stay resident under mlockall: see the shim for how malloc is kept lean.
        _ = swapfair_malloc_for_locked_memory()
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
