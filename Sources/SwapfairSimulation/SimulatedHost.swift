import SwapfairPolicy

/// A deterministic model of VMs under a memory controller, for tests, the offline demo and the
/// tick benchmark. It is a model, not a measurement: a VM's usage grows towards its working set
/// as far as `memory.high` allows, and the share of time it stalls grows with the part of its
/// working set that does not fit.
public struct SimulatedVM: Sendable, Equatable {
    public var entitlement: VMEntitlement
    /// Working set in bytes as a function of the tick.
    public var workingSet: @Sendable (Int) -> UInt64
    /// Fraction of the working set touched each period (activity), as a function of the tick.
    public var activity: @Sendable (Int) -> Double
    public var usage: UInt64 = 0
    public var swap: UInt64 = 0
    public var pressureTotal: UInt64 = 0
    public var high: UInt64? = nil
    public var swapMax: UInt64? = nil

    public init(_ entitlement: VMEntitlement, workingSet: @escaping @Sendable (Int) -> UInt64,
                activity: @escaping @Sendable (Int) -> Double = { _ in 1 }) {
        self.entitlement = entitlement
        self.workingSet = workingSet
        self.activity = activity
    }

    public static func == (a: SimulatedVM, b: SimulatedVM) -> Bool {
        a.entitlement == b.entitlement && a.usage == b.usage && a.swap == b.swap && a.high == b.high
    }
}

public struct SimulatedHost: Sendable {
    public var planner: Planner
    public var vms: [SimulatedVM]
    public var states: [VMControlState?]
    public var tick = 0
    /// Seconds per tick.
    public var period: Double = 1
    /// Stall fraction when none of the working set fits (scaled linearly below that).
    public var stallAtFullMiss: Double = 0.8

    public init(planner: Planner, vms: [SimulatedVM]) {
        self.planner = planner
        self.vms = vms
        self.states = Array(repeating: nil, count: vms.count)
    }

    /// Advances one period: the VMs run under their current limits, then the planner sets new ones.
    @discardableResult
    public mutating func step() -> [VMPlan] {
        let t = Double(tick) * period
        var inputs: [VMInput] = []
        for i in vms.indices {
            var vm = vms[i]
            let ws = vm.workingSet(tick)
            let cap = vm.high ?? UInt64.max
            let resident = min(ws, cap)
            let missing = ws - resident
            vm.usage = resident
            vm.swap = min(vm.swapMax ?? UInt64.max, max(vm.swap, missing))
            let stall = ws == 0 ? 0 : stallAtFullMiss * Double(missing) / Double(ws) * vm.activity(tick)
            vm.pressureTotal += UInt64(stall * period * 1e6)
            vms[i] = vm
            let active = UInt64(Double(resident) * vm.activity(tick))
            inputs.append(VMInput(vm.entitlement, VMObservation(
                time: t, memoryCurrent: vm.usage, swapCurrent: vm.swap, memoryHigh: vm.high, swapMax: vm.swapMax,
                pressureSomeTotal: vm.pressureTotal, activeBytes: active, inactiveBytes: resident - active),
                state: states[i]))
        }
        let plans = planner.plan(inputs)
        for (i, p) in plans.enumerated() {
            vms[i].high = p.memoryHigh
            vms[i].swapMax = p.swapMax
            states[i] = p.state
        }
        tick += 1
        return plans
    }
}
