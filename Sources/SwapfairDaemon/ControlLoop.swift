import Dispatch
import Logging
import SwapfairCgroup
import SwapfairConfig
import SwapfairPolicy
import SwapfairSys
import SwapfairTracking
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The daemon's view of one configured VM.
struct TrackedVM {
    var config: VMConfig
    var entitlement: VMEntitlement
    var group: Cgroup?
    var owned = false
    var files: CgroupStatFiles?
    var state: VMControlState?
    /// Knob values the group holds, as read on adoption and updated on every confirmed write.
    var applied: [Knob: LimitValue] = [:]
    /// Changes still being written in the background (a slow write); `applied` once confirmed.
    var inFlight: [KnobChange] = []
    /// Why the VM is not managed now (logged when it changes).
    var absence: String? = "not located yet"
    var observation: VMObservation?
    var plan: VMPlan?
    var events: FastParse.EventCounts?
    var pressureAvg10: Double?
    /// The inotify watch on its `cgroup.events`, and whether that file changed since last read.
    var eventsWatch: Int32?
    var populatedStale = true
    /// Reclaim shifting, for a VM with a balloon (`balloon_qmp`).
    var balloon: BalloonDriver?
    var shift: ReclaimShift.State?
}

/// Observe → plan → act, once per tick. Runs on one thread; publishes a status report for the
/// control socket after every tick.
public final class ControlLoop {
    public private(set) var configuration: SwapfairConfiguration
    public let facts: HostFacts
    public let root: CgroupRoot
    public private(set) var planner: Planner
    let locator: VMLocator
    let writer: KnobWriter
    let logger: Logger
    public let board: StatusBoard
    /// MGLRU sampling of active fractions, when the kernel has it; else the LRU lists are used.
    public let activity: ActivityMonitor?
    /// The VMs' swap devices, when any are configured (for the status report).
    public var swapDevices: SwapDevices?
    /// Where reclaim shifting reads each VM's double paging (the swap devices' tracker).
    public var tracker: DoublePagingTracker?
    /// Parts of the daemon that stopped for good, for the status report.
    public var health: Health?
    /// Reloads so far, for the status report.
    public var reloads = 0
    var vms: [TrackedVM]
    public private(set) var ticks: UInt64 = 0
    let startTime: Double
    var lastTickMilliseconds = 0.0
    /// Tells which groups' `cgroup.events` changed, so "populated" is read only then (and every
    /// `populatedRecheck` ticks, in case an event was missed). Nil when inotify is unavailable:
    /// then it is read every tick.
    let populatedWatcher: Inotify?
    var watchOwner: [Int32: Int] = [:]
    let populatedRecheck: UInt64 = 16
    /// Changes smaller than this (or than 1% of the value) are not written: they would change
    /// nothing the kernel does and fill the log.
    let writeThreshold: UInt64 = 1 << 20
    var shifter: ReclaimShift
    /// How long a balloon that accepted a target counts as moving towards it (see `shiftReclaim`).
    var balloonGrace = 15.0
    /// Swap-in prefetch (nil while `swap_prefetch` has been 0 since the start).
    var prefetcher: SwapPrefetcher?
    let proc: String

    public init(configuration: SwapfairConfiguration, facts: HostFacts, root: CgroupRoot, logger: Logger,
                writer: KnobWriter = KnobWriter(), board: StatusBoard = StatusBoard(), proc: String = "/proc",
                activity: ActivityMonitor? = nil, now: Double) {
        self.activity = activity
        self.configuration = configuration
        self.facts = facts
        self.root = root
        self.planner = Planner(configuration.hostPolicy(facts))
        self.locator = VMLocator(root: root, slice: configuration.host.slice, proc: proc, backend: writer.backend)
        self.writer = writer
        self.logger = logger
        do { populatedWatcher = try Inotify() } catch {
            populatedWatcher = nil
            logger.notice("inotify unavailable: each VM's cgroup.events is read every tick", metadata: ["error": "\(error)"])
        }
        self.board = board
        self.startTime = now
        var shifting = ReclaimShift.Parameters()
        shifting.maxFraction = configuration.host.reclaimShiftMax
        self.shifter = ReclaimShift(shifting)
        self.proc = proc
        self.prefetcher = configuration.host.swapPrefetch > 0 ? SwapPrefetcher(proc: proc, logger: logger) : nil
        self.vms = []
        self.vms = configuration.vms.map { track($0, now: now) }
    }

    /// A VM to manage from now on; with a balloon, resumed from the shift a crashed daemon recorded.
    func track(_ vm: VMConfig, now: Double) -> TrackedVM {
        var t = TrackedVM(config: vm, entitlement: configuration.entitlement(vm, facts))
        guard let qmp = vm.balloonQMP else { return t }
        let name = vm.name
        // After a crash the balloon is where the last daemon left it: resume from its record.
        let record: ShiftRecord?
        do { record = try ShiftRecord.load(stateDir: configuration.host.stateDir, vm: name) } catch {
            logger.error("cannot read the reclaim shift recorded before the restart; starting from none",
                         metadata: ["vm": "\(name)", "error": "\(error)"])
            record = nil
        }
        t.balloon = BalloonDriver(vm: name, path: qmp, guestMemory: vm.guestMemory ?? record?.guestMemory,
                                  lastActual: record.map { $0.guestMemory - min($0.shift, $0.guestMemory) }, logger: logger)
        if let record {
            t.shift = ReclaimShift.State(shift: record.shift, time: now)
            logger.notice("reclaim shift resumed from before the restart",
                          metadata: ["vm": "\(name)", "shift": "\(Format.bytes(record.shift))",
                                     "guest_memory": "\(Format.bytes(record.guestMemory))"])
        }
        t.balloon?.update(target: nil)
        return t
    }

    // MARK: reload

    /// Puts a reloaded configuration in force, between ticks: the policy's figures from the next
    /// plan, changed VMs keep their state (a new weight moves their share at the next tick), new
    /// VMs are located, removed ones let go (`letGo`).
    public func reconfigure(_ change: ConfigChange, now: Double) {
        let c = change.effective
        configuration = c
        planner = Planner(c.hostPolicy(facts))
        var shifting = shifter.parameters
        shifting.maxFraction = c.host.reclaimShiftMax
        shifter = ReclaimShift(shifting)
        if prefetcher == nil && c.host.swapPrefetch > 0 { prefetcher = SwapPrefetcher(proc: proc, logger: logger) }
        let removed = Set(change.removed)
        for t in vms where removed.contains(t.config.name) { letGo(t, reason: "removed from the configuration") }
        let kept = Dictionary(vms.filter { !removed.contains($0.config.name) }.map { ($0.config.name, $0) },
                              uniquingKeysWith: { a, _ in a })
        var next: [TrackedVM] = []
        for vm in c.vms {
            if var t = kept[vm.name] {
                if t.config.location != vm.location {
                    letGo(t, reason: "found elsewhere now (\(vm.location))")
                    t = track(vm, now: now)
                } else {
                    t.config = vm
                    t.entitlement = c.entitlement(vm, facts)
                }
                next.append(t)
            } else {
                next.append(track(vm, now: now))
            }
        }
        vms = next
        watchOwner = [:]
        for i in vms.indices { if let wd = vms[i].eventsWatch { watchOwner[wd] = i } }
    }

    /// Stops managing a VM for good and leaves its group as it would be without swapfair: no soft
    /// limit (`memory.high` max), no protection (`memory.low` 0), no swap cap (`memory.swap.max`
    /// max), so that a VM nobody manages is not throttled by a figure nobody updates. Its
    /// `memory.max` (the configured hard limit) stays. A balloon that took memory gives it back.
    func letGo(_ t: TrackedVM, reason: String) {
        let name = t.config.name
        if let b = t.balloon, (t.shift?.shift ?? 0) > 0 {
            if b.deflate(timeout: 5) {
                logger.notice("reclaim shift undone: the balloon gives the guest all its RAM back", metadata: ["vm": "\(name)"])
            } else {
                logger.warning("cannot undo the reclaim shift of a VM let go", metadata: [
                    "vm": "\(name)", "error": "\(b.state.error ?? "no answer in 5 s")"])
            }
            ShiftRecord.remove(stateDir: configuration.host.stateDir, vm: name)
        }
        if let g = t.group {
            let release: [KnobChange] = [KnobChange(.memoryHigh, .max), KnobChange(.memoryLow, .bytes(0)),
                                         KnobChange(.memorySwapMax, .max)]
            // A slow write still running would make this one be skipped: it goes first.
            let deadline = monotonicSeconds() + 5
            while writer.isPending(g) && monotonicSeconds() < deadline { usleep(10_000) }
            _ = writer.takeFinished(g)
            switch writer.set(g, release, mayReclaim: false) {
            case .skipped:
                logger.error("VM let go, but a write to its group is still running; its limits stay", metadata: [
                    "vm": "\(name)", "cgroup": "\(g)", "reason": "\(reason)"])
            case .written, .slow:
                logger.notice("VM let go: its group keeps no limit of swapfair's but memory.max", metadata: [
                    "vm": "\(name)", "cgroup": "\(g)", "reason": "\(reason)"])
            case .failed(let error):
                logger.error("VM let go, but its limits could not be lifted", metadata: [
                    "vm": "\(name)", "cgroup": "\(g)", "reason": "\(reason)", "error": "\(error)"])
            }
            if let wd = t.eventsWatch {
                populatedWatcher?.unwatch(wd)
                watchOwner[wd] = nil
            }
            t.files?.close()
        } else {
            logger.notice("VM let go", metadata: ["vm": "\(name)", "reason": "\(reason)"])
        }
    }

    /// Names of the VMs under control now.
    public var runningVMs: [String] { vms.filter { $0.group != nil && $0.observation != nil }.map(\.config.name) }

    /// One control period. `now` is monotonic seconds; `clock` measures the tick's own cost.
    @discardableResult
    public func tick(now: Double, clock: () -> Double = { 0 }) -> [VMPlan] {
        let began = clock()
        ticks += 1
        notePopulatedChanges()
        var inputs: [VMInput] = []
        var indices: [Int] = []
        for i in vms.indices { locate(i) }
        for (i, reading) in readGroups() {
            if let o = observe(i, now: now, reading) {
                inputs.append(VMInput(vms[i].entitlement, o, state: vms[i].state, reclaimShift: shiftReclaim(i, now: now)))
                indices.append(i)
            }
        }
        activity?.watch(indices.compactMap { vms[$0].group?.relativePath })
        let running = Set(indices)
        let absent = vms.indices.filter { !running.contains($0) }.map { vms[$0].entitlement }
        let plans = planner.plan(inputs, absent: absent)
        for (k, plan) in plans.enumerated() {
            apply(indices[k], plan)
        }
        lastTickMilliseconds = (clock() - began) * 1000
        board.publish(report(now: now))
        return plans
    }

    /// Observe and plan without writing anything (`swapfairctl plan`).
    public func dryRun(now: Double) -> [VMPlan] {
        notePopulatedChanges()
        var inputs: [VMInput] = []
        for i in vms.indices {
            if vms[i].group == nil, case .found(let g, let owned) = locator.locateExisting(vms[i].config) {
                attach(i, g, owned: owned)
            }
        }
        for (i, reading) in readGroups() {
            if let o = observe(i, now: now, reading) {
                inputs.append(VMInput(vms[i].entitlement, o, state: vms[i].state))
            }
        }
        return planner.plan(inputs)
    }

    /// Clean stop: balloons give their guests all their RAM back (the raised limits stay, so the
    /// guests grow back into them); a crash leaves both, and the restarted daemon resumes.
    public func finish(deadline seconds: Double = 5) {
        prefetcher?.stop()
        // A record exists exactly while the shift is above 0 (loaded at start, kept in step).
        let shifted = vms.indices.filter { vms[$0].balloon != nil && (vms[$0].shift?.shift ?? 0) > 0 }
        // Every balloon is asked at once, then all are waited for under one deadline.
        for i in shifted { vms[i].balloon?.deflateStart() }
        let deadline = monotonicSeconds() + seconds
        var waiting = Set(shifted)
        while !waiting.isEmpty && monotonicSeconds() < deadline {
            for i in waiting where vms[i].balloon?.deflateDone() ?? true { waiting.remove(i) }
            if !waiting.isEmpty { usleep(20_000) }
        }
        for i in shifted {
            let name = vms[i].config.name
            if waiting.contains(i) {
                logger.warning("cannot undo the reclaim shift at stop; the next start resumes it",
                               metadata: ["vm": "\(name)", "error": "\(vms[i].balloon?.state.error ?? "no answer in \(seconds) s")"])
            } else {
                ShiftRecord.remove(stateDir: configuration.host.stateDir, vm: name)
                logger.notice("reclaim shift undone at stop: the balloon gives the guest all its RAM back", metadata: ["vm": "\(name)"])
            }
        }
    }

    // MARK: reclaim shifting

    /// One tick of reclaim shifting for a running VM with a balloon: the policy reads the tracker's
    /// double-paging counters, the balloon is asked for the new target, and the return is what the
    /// balloon has taken so far (the raise of `memory.high`: never more than the guest gave up).
    func shiftReclaim(_ i: Int, now: Double) -> UInt64 {
        guard let balloon = vms[i].balloon else { return 0 }
        let name = vms[i].config.name
        let known = balloon.state
        guard let full = known.guestMemory,
              let counters = tracker.map({ $0.counters()[name] ?? DoublePagingCounters() }) else {
            balloon.update(target: nil)
            return 0
        }
        var previous = vms[i].shift
        if let p = previous, p.shift > 0, known.answered, known.sentAt == 0, let a = known.actual, a >= full {
            // Resumed from a record, but the balloon has given the guest all its RAM (a new VMM,
            // or someone deflated it): there is no shift in force to undo.
            logger.notice("the guest has all its RAM: the shift recorded before the restart is forgotten",
                          metadata: ["vm": "\(name)", "shift": "\(Format.bytes(p.shift))"])
            previous = ReclaimShift.State(shift: 0, redundantReadTotal: p.redundantReadTotal,
                                          guestSwapOutTotal: p.guestSwapOutTotal, time: p.time)
            ShiftRecord.remove(stateDir: configuration.host.stateDir, vm: name)
        }
        let taken = known.actual.map { full > $0 ? full - $0 : 0 } ?? 0
        let (s, decision) = shifter.step(previous, redundantReadTotal: counters.redundantReadBytes,
                                         guestSwapOutTotal: counters.guestSwapOutBytes, now: now, guestMemory: full,
                                         taken: taken)
        vms[i].shift = s
        let before = previous?.shift ?? 0
        if s.shift != before {
            logger.notice("reclaim shift \(Format.bytes(before)) → \(Format.bytes(s.shift))",
                          metadata: ["vm": "\(name)", "why": "\(decision.summary)",
                                     "balloon_target": "\(Format.bytes(full - s.shift))"])
            do {
                if s.shift == 0 { ShiftRecord.remove(stateDir: configuration.host.stateDir, vm: name) }
                else { try ShiftRecord(guestMemory: full, shift: s.shift).save(stateDir: configuration.host.stateDir, vm: name) }
            } catch {
                logger.warning("cannot record the reclaim shift; a restart would not know it", metadata: ["vm": "\(name)", "error": "\(error)"])
            }
        }
        // Nothing is asked of a balloon swapfair has not moved (an operator may have set it).
        balloon.update(target: s.shift > 0 || before > 0 ? full - s.shift : nil)
        // The raise: what the balloon has taken; while it is still inflating towards a target it
        // accepted lately, all of that target at once. A guest emptying frames the host keeps
        // swapping must read each one back from host swap first, so waiting for the balloon would
        // make the guest pay twice for the move (in the lab a 12 MiB move took 9 s that way). A
        // balloon that accepts and does not move (no driver in the guest) gets only what it took
        // after `balloonGrace` seconds. Going down, the raise follows the balloon as it lets go.
        let accepted = known.sent.map { full > $0 ? full - $0 : 0 } ?? 0
        let moving = known.error == nil && monotonicSeconds() - known.sentAt < balloonGrace
        return min(max(taken, moving ? accepted : 0), max(before, s.shift))
    }

    // MARK: locate

    func locate(_ i: Int) {
        guard vms[i].group == nil else { return }
        let name = vms[i].config.name
        switch locator.locate(vms[i].config) {
        case .found(let g, let owned):
            attach(i, g, owned: owned)
            vms[i].state = nil
            vms[i].applied = readKnobs(g)
            vms[i].absence = "located, no processes yet"
            logger.info("VM found: managing its cgroup", metadata: [
                "vm": "\(name)", "cgroup": "\(g)", "how": "\(vms[i].config.location)",
                "memory.high": "\(vms[i].applied[.memoryHigh].map { "\($0)" } ?? "?")",
            ])
        case .absent(let why):
            if vms[i].absence != why {
                logger.notice("VM not running", metadata: ["vm": "\(name)", "reason": "\(why)"])
                vms[i].absence = why
            }
        }
    }

    /// Makes `g` the VM's group: its statistics files and the watch on its cgroup.events.
    func attach(_ i: Int, _ g: Cgroup, owned: Bool) {
        vms[i].group = g
        vms[i].owned = owned
        vms[i].files = CgroupStatFiles(g)
        watchPopulated(i)
    }

    func watchPopulated(_ i: Int) {
        unwatchPopulated(i)
        vms[i].populatedStale = true
        // Without a watch the group's cgroup.events is read every tick instead (`readGroups`).
        guard let w = populatedWatcher, let g = vms[i].group,
              let wd = try? w.watchModifications(g.path + "/" + StatFile.events.name) else { return }
        vms[i].eventsWatch = wd
        watchOwner[wd] = i
    }

    func unwatchPopulated(_ i: Int) {
        guard let wd = vms[i].eventsWatch else { return }
        populatedWatcher?.unwatch(wd)
        watchOwner[wd] = nil
        vms[i].eventsWatch = nil
    }

    func notePopulatedChanges() {
        guard let w = populatedWatcher, !watchOwner.isEmpty else { return }
        let (fired, overflowed) = w.drain()
        if overflowed {
            for i in vms.indices { vms[i].populatedStale = true }
            return
        }
        for wd in fired { if let i = watchOwner[wd] { vms[i].populatedStale = true } }
    }

    /// The limits a group holds. One that cannot be read is left out: unknown, it is written anew
    /// with the first plan rather than taken for a value.
    func readKnobs(_ g: Cgroup) -> [Knob: LimitValue] {
        var found: [Knob: LimitValue] = [:]
        for knob in [Knob.memoryLow, .memoryHigh, .memoryMax, .memorySwapMax] {
            if let v = try? g.limit(knob) { found[knob] = v }
        }
        if let w = try? g.ioWeight() { found[.ioWeight] = .bytes(w) }
        return found
    }

    // MARK: observe

    /// What one tick reads of one VM's group. Reading touches nothing but that VM's own files, so
    /// on a large host the groups are read in parallel and the results folded in one by one.
    struct Reading {
        var populated: UInt64?
        var stat = FastParse.MemorySummary()
        var current: UInt64 = 0
        var swap: UInt64 = 0
        var pressure: (total: UInt64, avg10: Double)?
        var events: FastParse.EventCounts?
        var failure: CgroupError?
    }

    struct ReadJob {
        let group: Cgroup
        let files: CgroupStatFiles
        let checkExists: Bool
        let readPopulated: Bool
        let readEvents: Bool
    }

    /// The parallel read's view of the jobs and results. Worker c touches only the slots
    /// c·chunk..<(c+1)·chunk, and each job's open files belong to that job alone, so no two
    /// threads touch the same memory; the buffers outlive `concurrentPerform`, which returns
    /// only when every worker has finished.
    struct DisjointSlices: @unchecked Sendable {
        let jobs: UnsafeBufferPointer<ReadJob>
        let out: UnsafeMutableBufferPointer<Reading>
    }

    /// Below this many groups one thread reads them all; above it the reads are spread over the
    /// CPUs in chunks (thread hand-off costs more than a few groups' reads).
    public static let parallelReadThreshold = 128

    /// Reads every located VM's group; returns (VM index, reading) in VM order.
    func readGroups() -> [(Int, Reading)] {
        var indices: [Int] = []
        var jobs: [ReadJob] = []
        for i in vms.indices {
            guard let g = vms[i].group, let files = vms[i].files else { continue }
            // The kernel answers ENODEV on the open files of a removed group; files on other file
            // systems (a test tree) stay readable, so the directory itself is checked now and then,
            // and whenever inotify reports its cgroup.events changed (a removal ends the watch).
            let watched = vms[i].eventsWatch != nil
            let recheck = ticks % populatedRecheck == 0
            let checkExists = watched ? vms[i].populatedStale || recheck : ticks % 4 == 0
            // A VM not running now (dropped for an empty group) is checked every tick until it runs.
            let readPopulated = !watched || vms[i].populatedStale || vms[i].observation == nil || recheck
            // Cleared before the read: a change during it raises a new event.
            if readPopulated { vms[i].populatedStale = false }
            // Event counts are for the status report only; every few ticks is enough.
            let readEvents = ticks % 5 == 1 || vms[i].events == nil
            indices.append(i)
            jobs.append(ReadJob(group: g, files: files, checkExists: checkExists, readPopulated: readPopulated,
                                readEvents: readEvents))
        }
        var readings = [Reading](repeating: Reading(), count: jobs.count)
        let chunk = 64
        if jobs.count < Self.parallelReadThreshold {
            for k in jobs.indices { readings[k] = Self.read(jobs[k]) }
        } else {
            jobs.withUnsafeBufferPointer { input in
                readings.withUnsafeMutableBufferPointer { output in
                    let slices = DisjointSlices(jobs: input, out: output)
                    DispatchQueue.concurrentPerform(iterations: (input.count + chunk - 1) / chunk) { c in
                        for k in (c * chunk)..<min(slices.jobs.count, (c + 1) * chunk) {
                            slices.out[k] = Self.read(slices.jobs[k])
                        }
                    }
                }
            }
        }
        return Array(zip(indices, readings))
    }

    static func read(_ job: ReadJob) -> Reading {
        var r = Reading()
        let g = job.group, files = job.files
        do throws(CgroupError) {
            if job.checkExists, !g.exists { throw .vanished(cgroup: g.description) }
            if job.readPopulated {
                r.populated = try files.withBytes(.events) { b throws(CgroupError) in
                    try FastParse.keyed(b, "populated", file: "\(g)/cgroup.events")
                }
                if r.populated == 0 { return r }
            }
            r.stat = try files.withBytes(.memoryStat) { b throws(CgroupError) in
                try FastParse.memoryStat(b, file: "\(g)/memory.stat")
            }
            r.current = try files.number(.memoryCurrent)
            // Without swap accounting (no memory.swap.current) a group has no swap to count; a
            // read that fails is not known, not zero: the swap floor must not drop under what the
            // VM holds, so the whole reading fails and the loop holds what it last knew.
            do { r.swap = try files.number(.swapCurrent) } catch where error.isAbsentFile { r.swap = 0 }
            // PSI may be off (psi=0, no memory.pressure): then the feedback holds and the rest
            // still works. A failed read of a file that is there fails the reading likewise.
            do {
                r.pressure = try files.withBytes(.memoryPressure) { b throws(CgroupError) in
                    try FastParse.pressureSome(b, file: "\(g)/memory.pressure")
                }
            } catch where error.isAbsentFile {
                r.pressure = nil
            }
            if job.readEvents {
                // For the status report only: a failed read leaves the last counts shown.
                r.events = try? files.withBytes(.memoryEvents) { b throws(CgroupError) in
                    try FastParse.memoryEvents(b, file: "\(g)/memory.events")
                }
            }
        } catch {
            r.failure = error
        }
        return r
    }

    /// Folds one VM's reading into its state: drops it when its group emptied or vanished.
    func observe(_ i: Int, now: Double, _ r: Reading) -> VMObservation? {
        guard let g = vms[i].group else { return nil }
        let name = vms[i].config.name
        switch r.failure {
        case .vanished?:
            drop(i, reason: "its cgroup \(g) vanished", removeGroup: false, forget: true)
            return nil
        case let error?:
            // Not known is not zero: the plan is made from what was last known (its time too, so
            // no stall or activity is inferred), which keeps the VM's share and limits as they are.
            // A VM never observed yet is left out of this tick.
            guard let last = vms[i].observation else {
                logger.warning("cannot observe VM; skipped this tick", metadata: ["vm": "\(name)", "error": "\(error)"])
                return nil
            }
            logger.warning("cannot observe VM; holding what was last known", metadata: ["vm": "\(name)", "error": "\(error)"])
            return last
        case nil:
            break
        }
        if r.populated == 0 {
            // A pid-file VM's scope is swapfair's own and goes with the process; an adopted or
            // managed group stays and is watched until processes are placed in it again.
            let pidFile = if case .pidFile = vms[i].config.location { true } else { false }
            drop(i, reason: "no processes in \(g)", removeGroup: pidFile, forget: pidFile)
            return nil
        }
        if let e = r.events { vms[i].events = e }
        vms[i].pressureAvg10 = r.pressure?.avg10
        let o = VMObservation(
            time: now, memoryCurrent: r.current, swapCurrent: r.swap,
            memoryHigh: baseHigh(i), swapMax: vms[i].applied[.memorySwapMax]?.bytes,
            pressureSomeTotal: r.pressure?.total ?? 0,
            activeBytes: r.stat.activeBytes, inactiveBytes: r.stat.inactiveBytes,
            refaultedTotal: r.stat.refaults * WeightedDivision.page,
            sampledActiveFraction: activity?.fraction(of: g.relativePath))
        vms[i].observation = o
        if vms[i].absence != nil {
            logger.notice("VM running", metadata: ["vm": "\(name)", "cgroup": "\(g)"])
            vms[i].absence = nil
        }
        return o
    }

    /// The VM's `memory.high` in force without the reclaim-shifting raise in it: the planner steps
    /// its own limit, and the raise is added afresh each tick. (After a restart, the raise is the
    /// resumed shift's, which the last daemon wrote.)
    func baseHigh(_ i: Int) -> UInt64? {
        guard let high = vms[i].applied[.memoryHigh]?.bytes else { return nil }
        let raised = vms[i].plan?.reclaimShift ?? vms[i].shift?.shift ?? 0
        return high - min(raised, high)
    }

    /// Stops managing a VM for now. `forget`: the group is gone (or was ours and is removed), so the
    /// VM must be located again; otherwise the group is kept and watched until processes return.
    func drop(_ i: Int, reason: String, removeGroup: Bool, forget: Bool) {
        let name = vms[i].config.name
        if removeGroup, vms[i].owned, let g = vms[i].group {
            do { try g.remove() } catch {
                logger.warning("cannot remove group", metadata: ["vm": "\(name)", "error": "\(error)"])
            }
        }
        if forget || removeGroup {
            unwatchPopulated(i)
            vms[i].files?.close()
            vms[i].files = nil
            vms[i].group = nil
        }
        if !vms[i].inFlight.isEmpty, let g = vms[i].group {
            vms[i].inFlight = []
            _ = writer.takeFinished(g)
        }
        let wasRunning = vms[i].observation != nil
        if vms[i].shift != nil {
            // A VMM that stopped took its balloon with it; the next one starts with all its RAM.
            vms[i].shift = nil
            ShiftRecord.remove(stateDir: configuration.host.stateDir, vm: name)
        }
        vms[i].state = nil
        vms[i].observation = nil
        vms[i].plan = nil
        if vms[i].absence != reason {
            if wasRunning {
                logger.notice("VM dropped", metadata: ["vm": "\(name)", "reason": "\(reason)"])
            } else {
                logger.notice("VM not running", metadata: ["vm": "\(name)", "reason": "\(reason)"])
            }
            vms[i].absence = reason
        }
    }

    // MARK: act

    func apply(_ i: Int, _ plan: VMPlan) {
        guard let g = vms[i].group else { return }
        vms[i].state = plan.state
        vms[i].plan = plan
        write(i, g, plan)
        if vms[i].group != nil { prefetch(i, g, plan) }
    }

    func write(_ i: Int, _ g: Cgroup, _ plan: VMPlan) {
        let name = vms[i].config.name
        var wanted: [(Knob, LimitValue)] = [
            (.memoryLow, .bytes(plan.memoryLow)),
            (.memoryHigh, .bytes(plan.memoryHigh)),
            (.memorySwapMax, .bytes(plan.swapMax)),
        ]
        if let limit = plan.memoryMax { wanted.append((.memoryMax, .bytes(limit))) }
        if let io = plan.ioWeight { wanted.append((.ioWeight, .bytes(io))) }
        settle(i, g)
        if writer.isPending(g) { return }
        let changes = wanted.filter { needsWrite($0.0, vms[i].applied[$0.0], $0.1) }.map { KnobChange($0.0, $0.1) }
        guard !changes.isEmpty else { return }
        let lowers = changes.contains { c in
            (c.knob == .memoryHigh || c.knob == .memoryMax) && (c.value.bytes ?? .max) < (vms[i].applied[c.knob]?.bytes ?? .max)
        }
        let result = writer.set(g, changes, mayReclaim: lowers)
        switch result {
        case .written, .slow:
            for c in changes {
                logger.info("\(c.knob.rawValue) \(show(c.knob, vms[i].applied[c.knob])) → \(show(c.knob, c.value))",
                            metadata: ["vm": "\(name)", "why": "\(reason(c.knob, plan))"])
            }
            if case .slow = result {
                // Recorded once it has finished (see `settle`): the status shows what is in force.
                vms[i].inFlight = changes
                logger.notice("the write is still running after \(writer.bound) (reclaim or a busy \(writer.backend.name)); continuing",
                              metadata: ["vm": "\(name)"])
            } else {
                for c in changes { vms[i].applied[c.knob] = c.value }
            }
        case .skipped:
            break
        case .failed(let error) where error.isVanished:
            drop(i, reason: "its cgroup \(g) vanished", removeGroup: false, forget: true)
        case .failed(let error):
            logger.error("cannot set \(changes.map(\.knob.rawValue).joined(separator: ", "))",
                         metadata: ["vm": "\(name)", "error": "\(error)"])
        }
    }

    /// Swap-in prefetch once the limit it was planned under is in force (a read-back above the
    /// limit in force would only be reclaimed again).
    func prefetch(_ i: Int, _ g: Cgroup, _ plan: VMPlan) {
        guard plan.prefetch > 0, let p = prefetcher, vms[i].inFlight.isEmpty,
              let high = vms[i].applied[.memoryHigh]?.bytes, high >= plan.memoryHigh else { return }
        p.request(vm: vms[i].config.name, group: g, bytes: plan.prefetch)
    }

    /// Takes in the outcome of a slow write that has finished since: confirmed values become
    /// `applied`; after a failure the group's files are read again, so the next plan is compared
    /// with what is really in force and rewritten.
    func settle(_ i: Int, _ g: Cgroup) {
        guard !vms[i].inFlight.isEmpty, let outcome = writer.takeFinished(g) else { return }
        let changes = vms[i].inFlight
        vms[i].inFlight = []
        switch outcome {
        case .written:
            for c in changes { vms[i].applied[c.knob] = c.value }
        case .failed(let error):
            logger.error("a slow write failed; reading the group's limits again",
                         metadata: ["vm": "\(vms[i].config.name)", "knobs": "\(changes.map(\.knob.rawValue).joined(separator: ", "))",
                                    "error": "\(error)"])
            vms[i].applied = readKnobs(g)
        case .slow, .skipped:
            break
        }
    }

    func needsWrite(_ knob: Knob, _ old: LimitValue?, _ new: LimitValue) -> Bool {
        guard knob.controller == "memory", let old, let o = old.bytes, let n = new.bytes else { return old != new }
        return (o > n ? o - n : n - o) >= max(writeThreshold, o / 100) || (o != n && (n == 0 || o == 0))
    }

    func show(_ knob: Knob, _ v: LimitValue?) -> String {
        guard let v else { return "?" }
        if knob == .ioWeight { return "\(v)" }
        return v.bytes.map { Format.bytes($0) } ?? "max"
    }

    func reason(_ knob: Knob, _ p: VMPlan) -> String {
        switch knob {
        case .memoryHigh:
            let lent = p.highTarget > p.entitled ? ", \(Format.bytes(p.highTarget - p.entitled)) lent" : ""
            let own = p.memoryHigh - min(p.reclaimShift, p.memoryHigh)
            let stepping = own > p.highTarget ? "; stepping down to \(Format.bytes(p.highTarget))"
                : own < p.highTarget ? "; \(Format.bytes(p.highTarget - own)) more once cuts elsewhere are made" : ""
            let shifted = p.reclaimShift > 0 ? "; raised \(Format.bytes(p.reclaimShift)) for what the balloon took (reclaim shifting)" : ""
            return "entitled \(Format.bytes(p.entitled)) of untaxed \(Format.bytes(p.untaxedShare)) "
                + "(active \(Format.percent(p.activeFraction))), demand \(Format.bytes(p.demand))\(lent); "
                + p.decision.summary + stepping + shifted
        case .memoryLow: return "reservation"
        case .memoryMax: return "limit"
        case .memorySwapMax: return "weighted share of the swap budget"
        case .ioWeight: return "configured io_weight"
        }
    }

    // MARK: status

    public func report(now: Double) -> StatusReport {
        let policy = planner.host
        let daemon = StatusReport.Daemon(
            version: SwapfairVersion.string, pid: currentPID(), config: configuration.source, backend: writer.backend.name,
            activity: activity == nil ? "lru" : "lru_gen",
            cgroupRoot: root.path, intervalSeconds: configuration.host.interval, ticks: ticks,
            uptimeSeconds: now - startTime, memoryBudget: policy.memoryBudget, swapBudget: policy.swapBudget,
            lastTickMilliseconds: lastTickMilliseconds, reloads: reloads, problems: health?.current ?? [])
        let devices = swapDevices?.report(now: now) ?? [:]
        let rows = vms.map { vm -> StatusReport.VM in
            let p = vm.plan, o = vm.observation
            return StatusReport.VM(
                name: vm.config.name, state: vm.absence ?? "running", cgroup: vm.group?.description,
                weight: vm.entitlement.weight, reservation: vm.entitlement.reservation, limit: vm.entitlement.limit,
                demand: p?.demand, entitled: p?.entitled, memoryHigh: vm.applied[.memoryHigh]?.bytes,
                memoryCurrent: o?.memoryCurrent, swapCurrent: o?.swapCurrent,
                swapMax: vm.applied[.memorySwapMax]?.bytes, stall: p?.stall, pressureAvg10: vm.pressureAvg10,
                activeFraction: p?.activeFraction, highEvents: vm.events?.high, oomKills: vm.events?.oomKill,
                lastDecision: p?.decision.summary, swapDevice: devices[vm.config.name],
                reclaimShift: vm.balloon.map { b in
                    let k = b.state
                    return StatusReport.ReclaimShift(qmp: b.path, guestMemory: k.guestMemory, balloonActual: k.actual,
                                                     shift: vm.shift?.shift ?? 0, raised: p?.reclaimShift ?? 0, error: k.error)
                },
                prefetched: prefetcher?.prefetched(vm.config.name))
        }
        return StatusReport(daemon: daemon, vms: rows, hostSwap: swapDevices?.hostReport())
    }
}

/// The latest status report, shared between the control loop and the socket server.
public final class StatusBoard: Sendable {
    private let latest = Mutex<StatusReport?>(nil)
    public init() {}
    public func publish(_ r: StatusReport) { latest.withLock { $0 = r } }
    public var current: StatusReport? { latest.withLock { $0 } }
}

public enum SwapfairVersion {
    public static let string = "0.1.0"
}
