import Prometheus
import SwapfairSys
import Synchronization

/// The status report as Prometheus metrics (text exposition format), refreshed once a tick: what
/// `swapfairctl metrics` prints and `metrics_textfile` holds. Names follow Prometheus's
/// conventions: the `swapfair_` prefix, base units (bytes, seconds, ratios from 0 to 1), `_total`
/// for counters. Counters are fed the report's running totals (a total that went down, a device
/// added again, counts from zero again); a VM or device that leaves the configuration takes its
/// series with it.
public final class MetricsExporter: Sendable {
    let registry = PrometheusCollectorRegistry()
    private let state = Mutex(State())

    struct State {
        var gauges: [String: Gauge] = [:]
        var counters: [String: (counter: Counter, total: UInt64)] = [:]
        var tick: DurationHistogram?
    }

    public init() {}

    /// The metrics, as the last `update` left them.
    public func text() -> String { registry.emitToString() }

    /// Sets every metric from one status report.
    public func update(_ r: StatusReport) {
        state.withLock { s in
            var seen = Set<String>()
            func gauge(_ name: String, _ help: String, _ labels: [(String, String)], _ value: Double?) {
                guard let value else { return }
                let key = name + labels.map { "\($0.0)=\($0.1)" }.joined(separator: ",")
                seen.insert(key)
                let g = s.gauges[key] ?? registry.makeGauge(name: name, labels: labels, help: help)
                s.gauges[key] = g
                g.set(value)
            }
            func counter(_ name: String, _ help: String, _ labels: [(String, String)], _ total: UInt64?) {
                guard let total else { return }
                let key = name + labels.map { "\($0.0)=\($0.1)" }.joined(separator: ",")
                seen.insert(key)
                var entry = s.counters[key] ?? (registry.makeCounter(name: name, labels: labels, help: help), 0)
                if total >= entry.total { entry.counter.increment(by: Int64(clamping: total - entry.total)) } else {
                    entry.counter.reset()
                    entry.counter.increment(by: Int64(clamping: total))
                }
                entry.total = total
                s.counters[key] = entry
            }
            let d = r.daemon
            gauge("swapfair_build_info", "The daemon's version (always 1).", [("version", d.version)], 1)
            gauge("swapfair_memory_budget_bytes", "RAM divided between the VMs.", [], Double(d.memoryBudget))
            gauge("swapfair_swap_budget_bytes", "Swap divided between the VMs.", [], Double(d.swapBudget))
            gauge("swapfair_uptime_seconds", "Seconds since the daemon started.", [], d.uptimeSeconds)
            gauge("swapfair_problems", "Parts of the daemon that stopped for good (see swapfairctl status).", [],
                  Double(d.problems?.count ?? 0))
            counter("swapfair_reloads_total", "Reloads of the configuration asked for.", [], d.reloads.map { UInt64($0) })
            counter("swapfair_ticks_total", "Control ticks run.", [], d.ticks)
            let histogram = s.tick ?? registry.makeDurationHistogram(
                name: "swapfair_tick_duration_seconds",
                buckets: [.microseconds(100), .milliseconds(1), .milliseconds(5), .milliseconds(20), .milliseconds(100),
                          .milliseconds(250), .seconds(1)],
                help: "How long a control tick took (observe, plan, act).")
            s.tick = histogram
            histogram.recordNanoseconds(Int64(d.lastTickMilliseconds * 1e6))
            for vm in r.vms {
                let l = [("vm", vm.name)]
                gauge("swapfair_vm_running", "1 while the VM is managed, 0 while it is not running.", l,
                      vm.state == "running" ? 1 : 0)
                gauge("swapfair_vm_weight", "The VM's configured weight.", l, vm.weight)
                gauge("swapfair_vm_reservation_bytes", "RAM reserved for the VM (memory.low).", l, Double(vm.reservation))
                gauge("swapfair_vm_limit_bytes", "The VM's hard limit (memory.max), if any.", l, vm.limit.map { Double($0) })
                gauge("swapfair_vm_demand_bytes", "What the pressure feedback says the VM needs.", l, vm.demand.map { Double($0) })
                gauge("swapfair_vm_entitlement_bytes", "The VM's entitled share of RAM.", l, vm.entitled.map { Double($0) })
                gauge("swapfair_vm_memory_high_bytes", "memory.high in force.", l, vm.memoryHigh.map { Double($0) })
                gauge("swapfair_vm_memory_current_bytes", "memory.current.", l, vm.memoryCurrent.map { Double($0) })
                gauge("swapfair_vm_swap_bytes", "memory.swap.current.", l, vm.swapCurrent.map { Double($0) })
                gauge("swapfair_vm_swap_max_bytes", "memory.swap.max in force (the VM's swap cap).", l, vm.swapMax.map { Double($0) })
                gauge("swapfair_vm_stall_ratio", "Share of the last tick the VM stalled on memory (PSI some).", l, vm.stall)
                gauge("swapfair_vm_pressure_avg10_ratio", "memory.pressure some avg10, as a ratio.", l,
                      vm.pressureAvg10.map { $0 / 100 })
                gauge("swapfair_vm_active_ratio", "The VM's estimated active fraction of its memory.", l, vm.activeFraction)
                counter("swapfair_vm_high_events_total", "memory.events high.", l, vm.highEvents)
                counter("swapfair_vm_oom_kills_total", "memory.events oom_kill.", l, vm.oomKills)
                counter("swapfair_vm_prefetched_bytes_total", "Swapped memory read back ahead of the VM's faults.", l,
                        vm.prefetched)
                if let b = vm.reclaimShift {
                    gauge("swapfair_vm_balloon_shift_bytes", "What reclaim shifting asks the VM's balloon to take.", l,
                          Double(b.shift))
                    gauge("swapfair_vm_balloon_actual_bytes", "The guest's RAM as its balloon reports it.", l,
                          b.balloonActual.map { Double($0) })
                }
                guard let dev = vm.swapDevice else { continue }
                for (direction, requests, bytes) in [("read", dev.reads, dev.readBytes), ("write", dev.writes, dev.writeBytes)] {
                    let ld = l + [("direction", direction)]
                    counter("swapfair_swap_device_requests_total", "Requests served by the VM's swap device.", ld, requests)
                    counter("swapfair_swap_device_bytes_total", "Bytes moved by the VM's swap device.", ld, bytes)
                }
                counter("swapfair_swap_device_errors_total", "Requests of the VM's swap device that failed.", l, dev.errors)
                gauge("swapfair_swap_device_queued_requests", "Requests waiting for the scheduler.", l, Double(dev.queued))
                gauge("swapfair_swap_device_in_flight_requests", "Requests at the disk.", l, Double(dev.inFlight))
                gauge("swapfair_swap_device_clients", "Connected NBD clients.", l, Double(dev.connections))
                gauge("swapfair_swap_device_size_bytes", "The volume's size.", l, Double(dev.size))
                gauge("swapfair_swap_device_allocated_bytes", "The volume's allocated bytes.", l, Double(dev.allocated))
                gauge("swapfair_swap_device_reservation_met", "1 when the device's reservation was met (or it asked for less).",
                      l, dev.reservationMet.map { $0 ? 1 : 0 })
                counter("swapfair_vm_double_paging_events_total", "Guest swap-outs of pages the host had just swapped in.", l,
                        dev.doublePagingEvents)
                counter("swapfair_vm_redundant_read_bytes_total", "Host swap-in bytes double paging made redundant.", l,
                        dev.redundantReadBytes)
                counter("swapfair_vm_redundant_write_bytes_total", "Guest swap-out bytes double paging made redundant.", l,
                        dev.redundantWriteBytes)
                counter("swapfair_vm_elided_write_bytes_total", "Guest swap-out bytes recorded as references, not written.",
                        l, dev.elidedWriteBytes)
            }
            if let h = r.hostSwap {
                counter("swapfair_host_swap_in_bytes_total", "Bytes the host swapped in through swapfaird.", [], h.swapInBytes)
                counter("swapfair_host_swap_out_bytes_total", "Bytes the host swapped out through swapfaird.", [], h.swapOutBytes)
            }
            // Series of VMs and devices no longer reported go with them.
            for (key, g) in s.gauges where !seen.contains(key) {
                registry.unregisterGauge(g)
                s.gauges[key] = nil
            }
            for (key, c) in s.counters where !seen.contains(key) {
                registry.unregisterCounter(c.counter)
                s.counters[key] = nil
            }
        }
    }

    /// Writes the metrics to `path` whole (a temporary file renamed over it), for node_exporter's
    /// textfile collector, which must never read half a file.
    public func write(to path: String) throws(SysError) {
        try FileAccess.replace(path, with: text(), mode: 0o644)
    }
}
